"""Job types the runtime itself needs."""

from __future__ import annotations

import logging
from typing import Any

from wecom_plugin.extensions import db
from wecom_plugin.jobs.context import JobContext
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, job_type

log = logging.getLogger("wecom_plugin.jobs")


@job_type("noop", delivery=AT_LEAST_ONCE)
def noop(ctx: JobContext) -> dict[str, Any]:
    """Does nothing: probes that workers are alive, and the unit of the runtime benchmark."""
    return {"ok": True}


@job_type("runtime.prune", delivery=AT_LEAST_ONCE)
def prune(ctx: JobContext) -> dict[str, Any]:
    """Delete finished jobs and old occurrences past RETENTION_DAYS (dead jobs and audit kept)."""
    from wecom_plugin.services.retention import prune_old_rows

    removed = prune_old_rows(db.session, ctx.settings.retention_days, guard=ctx.ensure_lease)
    db.session.commit()
    return removed


@job_type("alerts.deliver", delivery=AT_LEAST_ONCE, max_attempts=8)
def deliver_alert(ctx: JobContext) -> dict[str, Any]:
    """Send a new alert through every configured channel (one step per channel)."""
    from wecom_plugin.services.alert_delivery import deliver

    return deliver(ctx, int(ctx.payload["alert_id"]))


@job_type("callbacks.dispatch", delivery=AT_LEAST_ONCE)
def dispatch_callback(ctx: JobContext) -> dict[str, Any]:
    """Hand a stored WeCom callback to its handler (kept as unhandled when there is none yet)."""
    from wecom_plugin.services.callbacks import dispatch

    return dispatch(db.session, int(ctx.payload["inbox_id"]))
