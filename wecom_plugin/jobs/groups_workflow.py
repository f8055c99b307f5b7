"""Group registry jobs: the approvers' card (send, update after a click, reply to a non-approver),
create an approved group's chat, post an archived group's notice, and the daily review reminders
(09:00 local time)."""

from __future__ import annotations

from typing import Any

from wecom_plugin.extensions import db
from wecom_plugin.jobs.context import JobContext
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, AT_MOST_ONCE, PeriodicDefinition, job_type, periodic_provider
from wecom_plugin.services import approval_card  # importing it registers the card-click callback handler

REVIEW_TIME = "09:00"


@job_type("groups.approval_card", delivery=AT_MOST_ONCE, max_attempts=8)
def send_approval_card(ctx: JobContext) -> dict[str, Any]:
    """Send a request's approvers the interactive card (同意 / 驳回); once per version of the request."""
    return approval_card.send_card(ctx.app, int(ctx.payload["group_id"]), guard=ctx.ensure_lease, step=ctx.run_step)


@job_type("groups.approval_card_update", delivery=AT_LEAST_ONCE, max_attempts=5)
def update_approval_card(ctx: JobContext) -> dict[str, Any]:
    """Show the outcome on the card after a click (the click's single-use response_code; 42022 = done)."""
    p = ctx.payload
    return approval_card.update_card(
        ctx.app, int(p["group_id"]), str(p["task_id"]), str(p["response_code"]), list(p.get("userids") or []),
        str(p.get("kind") or "outcome"), guard=ctx.ensure_lease, step=ctx.run_step,
    )  # fmt: skip


@job_type("groups.approval_card_reply", delivery=AT_MOST_ONCE)
def reply_approval_card(ctx: JobContext) -> dict[str, Any]:
    """Tell someone who clicked an approval card without being an approver that nothing happened."""
    p = ctx.payload
    return approval_card.reply_not_approver(
        ctx.app, int(p["group_id"]), str(p["userid"]), guard=ctx.ensure_lease, step=ctx.run_step
    )


@job_type("groups.create_chat", delivery=AT_LEAST_ONCE, max_attempts=8)
def create_chat(ctx: JobContext) -> dict[str, Any]:
    """Create an approved group's chat (idempotent: our chatid, re-read first), welcome, tell the general office."""
    from wecom_plugin.services.group_workflow import create_chat as run

    return run(
        ctx.app,
        int(ctx.payload["group_id"]),
        chatid=ctx.payload.get("chatid"),
        guard=ctx.ensure_lease,
        step=ctx.run_step,
    )


@job_type("groups.archive_notice", delivery=AT_MOST_ONCE)
def archive_notice(ctx: JobContext) -> dict[str, Any]:
    """Post into an archived group's chat that it is no longer governed (people read it: at most once)."""
    from wecom_plugin.services.group_workflow import post_archive_notice

    return post_archive_notice(
        ctx.app, int(ctx.payload["group_id"]), chatid=ctx.payload.get("chatid"), guard=ctx.ensure_lease,
        step=ctx.run_step,
    )  # fmt: skip


@job_type("groups.review_reminders", delivery=AT_LEAST_ONCE)
def review_reminders(ctx: JobContext) -> dict[str, Any]:
    """Daily: one reminder job per group whose review date has come (once per group per review date)."""
    from wecom_plugin.models.dbtime import db_now
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services.group_registry import due_reviews

    session = db.session
    today = db_now(session).astimezone(ctx.settings.tz).date()
    queued = []
    for group in due_reviews(session, today):
        key = f"groups.review:{group.id}:{group.review_date.isoformat()}"
        enqueue("groups.review_reminder", {"group_id": group.id}, dedupe_key=key, session=session)
        queued.append(group.id)
    session.commit()
    return {"today": today.isoformat(), "due": queued}


@job_type("groups.review_reminder", delivery=AT_MOST_ONCE)
def review_reminder(ctx: JobContext) -> dict[str, Any]:
    """Ask the general office and a group's admins to confirm the group is still needed."""
    from wecom_plugin.services.group_workflow import send_review_reminder

    return send_review_reminder(ctx.app, int(ctx.payload["group_id"]), guard=ctx.ensure_lease, step=ctx.run_step)


@periodic_provider
def schedules(settings: Any) -> list[PeriodicDefinition]:
    return [
        PeriodicDefinition(
            key="groups.review_reminders",
            job_name="groups.review_reminders",
            spec={"kind": "daily", "times": [REVIEW_TIME]},
            misfire_grace_seconds=12 * 3600,
        )
    ]
