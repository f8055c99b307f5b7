"""Offboarding jobs (see :mod:`wecom_plugin.services.offboarding`).

* ``offboarding.consume_outbox`` (at-least-once; compare-and-set per record): act on the directory
  mirror's departure, disablement and reactivation records. Enqueued by the mirror in the same
  transaction as each record (dedupe key per record); the minute sweep is the backstop.
* ``offboarding.run`` (at-least-once): an offboarding whose ``effective_at`` has come is planned.
* ``offboarding.settle`` (at-least-once): after the coalescing window, look whether the
  offboarding's changes are all final (done / partial); if not, look again later (backing off to a
  minute, 20 times; the sweep takes over after).
* ``offboarding.sweep`` (every minute): left-over records, due scheduled offboardings, chats whose
  offboarding changes wait with no executor queued, and settling.

The removals themselves are ``groups.apply`` jobs (:mod:`wecom_plugin.jobs.groups_check`).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from wecom_plugin.jobs.context import JobContext
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, PeriodicDefinition, job_type, periodic_provider

SETTLE_ROUNDS = 20


@periodic_provider
def offboarding_schedule(settings: Any) -> list[PeriodicDefinition]:
    """The offboarding sweep, every minute."""
    return [
        PeriodicDefinition(
            key="offboarding.sweep",
            job_name="offboarding.sweep",
            spec={"kind": "interval", "seconds": 60},
            misfire_grace_seconds=120,
        )
    ]


def _engine(ctx: JobContext):
    from wecom_plugin.extensions import db

    db.session.rollback()
    return db.engine


@job_type("offboarding.consume_outbox", delivery=AT_LEAST_ONCE, max_attempts=10)
def consume_outbox(ctx: JobContext) -> dict[str, Any]:
    """Act on the directory mirror's departure / disablement / reactivation records."""
    from wecom_plugin.services.offboarding import consume_outbox as consume

    return consume(_engine(ctx), f"job:{ctx.job_id}")


@job_type("offboarding.run", delivery=AT_LEAST_ONCE, max_attempts=10)
def run_offboarding(ctx: JobContext) -> dict[str, Any]:
    """Plan a scheduled offboarding whose effective time has come."""
    from sqlalchemy.orm import Session

    from wecom_plugin.services.offboarding import run_scheduled

    with Session(_engine(ctx)) as session, session.begin():
        return run_scheduled(session, int(ctx.payload["offboarding_id"]))


@job_type("offboarding.settle", delivery=AT_LEAST_ONCE, max_attempts=5)
def settle_offboarding(ctx: JobContext) -> dict[str, Any]:
    """Mark an offboarding done or partial once all its changes are final; else look again later."""
    from sqlalchemy.orm import Session

    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services.offboarding import OPEN_STATES, settle

    off_id = int(ctx.payload["offboarding_id"])
    n = int(ctx.payload.get("n", 0))
    with Session(_engine(ctx)) as session, session.begin():
        state = settle(session, off_id)
        if state in OPEN_STATES and n < SETTLE_ROUNDS:
            enqueue("offboarding.settle", {"offboarding_id": off_id, "n": n + 1},
                    run_after=timedelta(seconds=min(60, 2 ** (n + 1))),
                    dedupe_key=f"offboarding.settle:{off_id}:{secrets.token_hex(4)}", session=session)  # fmt: skip
    return {"offboarding_id": off_id, "state": state}


@job_type("offboarding.sweep", delivery=AT_LEAST_ONCE, max_attempts=3)
def sweep(ctx: JobContext) -> dict[str, Any]:
    """The minute backstop of offboarding (records, schedules, stranded chats, settling)."""
    from wecom_plugin.services.offboarding import sweep as run_sweep

    _engine(ctx)
    return run_sweep(ctx.app)
