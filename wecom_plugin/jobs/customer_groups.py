"""Customer-group (客户群) handover jobs (see :mod:`wecom_plugin.services.customer_groups`).

* ``customer_groups.handover`` (at-most-once): list one offboarding's customer groups, record them and,
  in enforce mode, hand them to the successor. Each transfer call is a step marked ``sending`` before
  it leaves, so a holder that dies after sending never sends it again blindly: the next attempt lists
  the groups again and counts the ones the successor already owns as done. Queued by
  ``offboarding.plan`` (every trigger) and by the sweep. A spent budget reschedules it (nothing
  dropped); another worker on the same offboarding makes it come back in two seconds.
* ``customer_groups.sweep`` (every minute): offboardings whose leaver the directory now shows deleted
  while their groups wait, listings not done, pending groups with nothing queued.
"""

from __future__ import annotations

from typing import Any

from wecom_plugin.jobs.context import JobContext, StepOutcome
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, AT_MOST_ONCE, PeriodicDefinition, job_type, periodic_provider


@periodic_provider
def customer_group_schedule(settings: Any) -> list[PeriodicDefinition]:
    """The customer-group sweep, every minute (none when CUSTOMER_GROUP_HANDOVER=off)."""
    if getattr(settings, "customer_group_handover", "wait") == "off":
        return []
    return [
        PeriodicDefinition(
            key="customer_groups.sweep",
            job_name="customer_groups.sweep",
            spec={"kind": "interval", "seconds": 60},
            misfire_grace_seconds=120,
        )
    ]


def _step(ctx: JobContext):
    """Each transfer call as the job's at-most-once step; targets unique per holder (fence). Anything but
    a fresh success answers None: the outcome is unknown and the next attempt lists again."""

    def step(target: str, action):
        result = ctx.run_step(f"f{ctx.fence}:{target}", action)
        return result.value if result.outcome is StepOutcome.DONE else None

    return step


@job_type("customer_groups.handover", delivery=AT_MOST_ONCE, max_attempts=10)
def handover(ctx: JobContext) -> dict[str, Any]:
    """Hand a leaver's customer groups to their successor (groupchat/transfer or onjob_transfer)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.customer_groups import handover as run_handover

    db.session.rollback()
    return run_handover(ctx.app, int(ctx.payload["offboarding_id"]), ctx.ensure_lease, step=_step(ctx))


@job_type("customer_groups.sweep", delivery=AT_LEAST_ONCE, max_attempts=3)
def sweep(ctx: JobContext) -> dict[str, Any]:
    """Queue customer-group handovers a deletion, a stalled listing or a lifted hold is waiting for."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.customer_groups import sweep as run_sweep

    db.session.rollback()
    return run_sweep(ctx.app)
