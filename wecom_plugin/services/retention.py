"""Retention: prune rows that only served coordination once they are old.

Pruned after ``RETENTION_DAYS``: finished (done/cancelled) jobs and their steps, occurrences,
processed callbacks (handled, or kept without a handler),
stopped process heartbeats, and rate-limit windows older than a day. Never pruned here: dead
jobs (a person must look at them), open alerts, and the audit log (append-only by design).
Deletes run in batches so no transaction holds locks for long.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.models.api_clients import RateCounter
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.models.jobs import Job, Occurrence, ProcessHeartbeat

BATCH = 1000
# Rate-limit windows matter for a minute; a day is kept for investigations.
RATE_WINDOW_KEPT = timedelta(days=1)


def prune_old_rows(session: Session, retention_days: int, guard: Callable[[], None] | None = None) -> dict[str, int]:
    """Delete expired rows; returns counts per table. ``guard`` runs before each batch."""
    now = db_now(session)
    cutoff = now - timedelta(days=retention_days)
    session.rollback()  # end the read before the guard renews the lease on its own connection
    removed = {
        "job": _delete_in_batches(
            session,
            Job.__table__,
            sa.and_(Job.state.in_((ClaimState.DONE, ClaimState.CANCELLED)), Job.finished_at < cutoff),
            guard,
        ),
        "occurrence": _delete_in_batches(session, Occurrence.__table__, Occurrence.created_at < cutoff, guard),
        "callback_inbox": _delete_in_batches(
            session,
            CallbackInbox.__table__,
            sa.and_(CallbackInbox.state.in_(("handled", "unhandled")), CallbackInbox.received_at < cutoff),
            guard,
        ),
        "process_heartbeat": _delete_in_batches(
            session,
            ProcessHeartbeat.__table__,
            ProcessHeartbeat.last_seen_at < cutoff,
            guard,
            key="id",
        ),
        "rate_counter": _delete_rate_windows(session, int((now - RATE_WINDOW_KEPT).timestamp())),
    }
    return removed


def _delete_in_batches(
    session: Session,
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    guard: Callable[[], None] | None,
    key: str = "id",
) -> int:
    total = 0
    column = table.c[key]
    while True:
        if guard is not None:
            guard()  # runs with no transaction open: the previous batch committed
        ids = session.execute(sa.select(column).where(condition).limit(BATCH)).scalars().all()
        if not ids:
            session.rollback()
            return total
        session.execute(sa.delete(table).where(column.in_(ids)))
        session.commit()
        total += len(ids)


def _delete_rate_windows(session: Session, cutoff: int) -> int:
    result = session.execute(sa.delete(RateCounter.__table__).where(RateCounter.window_start < cutoff))
    session.commit()
    return result.rowcount
