"""Enqueueing and managing jobs.

:func:`enqueue` runs in the caller's transaction (``db.session`` by default) and does not commit,
so "store the callback and enqueue its job" or "record the occurrence and enqueue its job" are
one atomic change.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.models.base import insert_for
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import sql_now
from wecom_plugin.models.jobs import Job
from wecom_plugin.runtime import registry

JOB = Job.__table__
MAX_PAYLOAD_BYTES = 256 * 1024


def enqueue(
    name: str,
    payload: Mapping[str, Any] | None = None,
    *,
    run_after: datetime | timedelta | None = None,
    dedupe_key: str | None = None,
    session: Session | sa.Connection | None = None,
    max_attempts: int | None = None,
) -> int:
    """Add a job and return its id.

    Args:
        name: a registered job type.
        payload: JSON-serialisable arguments.
        run_after: an aware datetime, or a delay from the database's now. Default: due now.
        dedupe_key: if a job with this key already exists (in any state, until retention prunes
            it), nothing is added and the existing job's id is returned.
        session: the session or connection whose transaction the insert joins.
        max_attempts: overrides the job type's budget.

    Raises:
        KeyError: ``name`` is not a registered job type.
        ValueError: the payload is not a JSON object or is too large.
    """
    job_type = registry.get(name)
    payload = dict(payload or {})
    _check_payload(payload)
    if session is None:
        from wecom_plugin.extensions import db

        session = db.session
    if isinstance(run_after, timedelta):
        due_at: Any = sql_now(run_after.total_seconds())
    elif isinstance(run_after, datetime):
        if run_after.tzinfo is None:
            raise ValueError("run_after must be timezone-aware")
        due_at = run_after
    else:
        due_at = sql_now()

    values = {
        "name": name,
        "payload": payload,
        "dedupe_key": dedupe_key,
        "delivery": job_type.delivery,
        "state": ClaimState.READY,
        "due_at": due_at,
        "attempts": 0,
        "max_attempts": max_attempts or job_type.max_attempts or _default_max_attempts(),
        "fence": 0,
        "created_at": sql_now(),
    }
    insert = insert_for(session, JOB).values(**values)
    if dedupe_key is None:
        return session.execute(insert.returning(JOB.c.id)).scalar_one()
    inserted = session.execute(
        insert.on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(JOB.c.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return inserted
    return session.execute(sa.select(JOB.c.id).where(JOB.c.dedupe_key == dedupe_key)).scalar_one()


def retry_dead(session: Session, job_id: int) -> bool:
    """Put a dead job back in the queue with a fresh attempt budget. False if it is not dead."""
    result = session.execute(
        sa.update(JOB)
        .where(JOB.c.id == job_id, JOB.c.state == ClaimState.DEAD)
        .values(state=ClaimState.READY, due_at=sql_now(), attempts=0, finished_at=None)
    )
    return result.rowcount == 1


def cancel(session: Session, job_id: int) -> bool:
    """Cancel a job that is not running. False if it is running or already final."""
    result = session.execute(
        sa.update(JOB)
        .where(JOB.c.id == job_id, JOB.c.state.in_((ClaimState.READY, ClaimState.DEAD)))
        .values(state=ClaimState.CANCELLED, finished_at=sql_now())
    )
    return result.rowcount == 1


def counts_by_state(session: Session | sa.Connection) -> dict[str, int]:
    """Jobs per state, with ``ready`` split: ``ready`` is due now (by the database clock), ``waiting`` is
    ready for later (a backoff, a deferred or prepared bulletin send): the queue a worker has to work off
    is ``ready`` and ``running``, not the jobs that wait for their time."""
    state = sa.case(
        (sa.and_(JOB.c.state == ClaimState.READY, JOB.c.due_at > sql_now()), sa.literal("waiting")),
        else_=JOB.c.state,
    ).label("state")
    rows = session.execute(sa.select(state, sa.func.count()).group_by(state)).all()
    return {name: count for name, count in rows}


def _check_payload(payload: dict[str, Any]) -> None:
    import json

    try:
        encoded = json.dumps(payload, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job payload is not JSON-serialisable: {exc}") from None
    if len(encoded.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"job payload exceeds {MAX_PAYLOAD_BYTES} bytes; store large data in a table")


def _default_max_attempts() -> int:
    from flask import current_app, has_app_context

    if has_app_context():
        return current_app.extensions["wecom_settings"].job_max_attempts
    return 5
