"""Directory jobs: the full sync (manual, scheduled reconciliation, after a confirmed brake, or
asked for by a callback that could not be settled alone) and the PIPL minimisation of departed
members. Importing this module also registers the change_contact callback handlers."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from wecom_plugin.extensions import db
from wecom_plugin.jobs.context import JobContext
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, job_type
from wecom_plugin.services import directory_events  # noqa: F401 - registers the callback handlers
from wecom_plugin.services.directory_mirror import minimise_departed
from wecom_plugin.services.directory_sync import SyncBusy, run_sync

SYNC_TIMEOUT_SECONDS = 3 * 3600


@job_type("directory.sync", delivery=AT_LEAST_ONCE, max_attempts=3, timeout_seconds=SYNC_TIMEOUT_SECONDS)
def directory_sync(ctx: JobContext) -> dict[str, Any]:
    """Full directory sync: walk WeCom's directory and make the mirror match (reads are idempotent)."""
    try:
        report = run_sync(
            ctx.app,
            trigger=str(ctx.payload.get("trigger", "schedule"))[:32],
            confirmed_sync=ctx.payload.get("confirmed_sync"),
            guard=ctx.ensure_lease,
        )
    except SyncBusy as exc:
        return {"skipped": str(exc)}
    return report.as_dict()


@job_type("directory.minimise", delivery=AT_LEAST_ONCE)
def directory_minimise(ctx: JobContext) -> dict[str, Any]:
    """Minimise the personal data of members who left more than DIRECTORY_DEPARTED_RETENTION_DAYS ago (PIPL)."""
    days = ctx.settings.directory_departed_retention_days
    from wecom_plugin.models.dbtime import db_now

    session = db.session
    cutoff = db_now(session) - timedelta(days=days)
    total = 0
    while True:
        done = minimise_departed(session.connection(), cutoff)
        session.commit()
        total += done
        if done == 0:
            return {"minimised": total, "older_than_days": days}
