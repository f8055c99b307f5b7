"""Group governance jobs: the daily member check, the per-chat executor and the notices.

* ``groups.check`` (at-least-once: it reads, then plans idempotently): the daily run at
  ``MEMBER_CHECK_TIME`` (Asia/Shanghai by default), on demand, or after a confirmed brake. Steps
  aside when another check is running.
* ``groups.apply`` (at-most-once): one chat's pending changes in one ``appchat/update``
  (:func:`~wecom_plugin.services.chat_changes.apply_chat`); the update is a step, so a holder that
  dies after sending never sends again blindly; the next attempt re-reads the chat first. Without a
  ``group_id`` it drains every chat, the most urgent (offboarding) first. A spent budget reschedules
  the job (nothing dropped).
* ``groups.notify`` (at-most-once): removed members, real-name reminders and admin digests, one
  step per message.
"""

from __future__ import annotations

from typing import Any

from wecom_plugin.errors import PermanentError, RateLimitedError
from wecom_plugin.jobs.context import JobContext, StepOutcome
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, AT_MOST_ONCE, PeriodicDefinition, job_type, periodic_provider

CHECK_TIMEOUT_SECONDS = 3 * 3600


@periodic_provider
def member_check_schedule(settings: Any) -> list[PeriodicDefinition]:
    """The daily member check at MEMBER_CHECK_TIME in the configured time zone."""
    return [
        PeriodicDefinition(
            key="groups.check",
            job_name="groups.check",
            spec={"kind": "daily", "times": [settings.member_check_time]},
            payload={"trigger": "schedule"},
            misfire_grace_seconds=6 * 3600,
            alert_on_miss=True,
        )
    ]


@job_type("groups.check", delivery=AT_LEAST_ONCE, max_attempts=3, timeout_seconds=CHECK_TIMEOUT_SECONDS)
def groups_check(ctx: JobContext) -> dict[str, Any]:
    """Member check (每日检查): read every governed chat, compare with its rule, plan the changes."""
    from wecom_plugin.services.membership_check import CheckBusy, run_check

    payload = ctx.payload
    try:
        report = run_check(
            ctx.app,
            trigger=str(payload.get("trigger", "schedule"))[:32],
            group_id=payload.get("group_id"),
            dry_run=bool(payload.get("dry_run", False)),
            confirmed_check=payload.get("confirmed_check"),
            guard=ctx.ensure_lease,
        )
    except CheckBusy as exc:
        return {"skipped": str(exc)}
    return {"check_id": report.check_id, "state": report.state, "mode": report.mode, "stats": report.stats}


def _step(ctx: JobContext):
    """``apply_chat``'s step: the job's at-most-once ``run_step``, targets unique per holder (fence),
    so a takeover re-reads the chat and may send what the dead holder provably did not."""

    def step(target: str, action):
        result = ctx.run_step(f"f{ctx.fence}:{target}", action)
        if result.outcome is StepOutcome.DONE:
            return result.value
        if result.outcome is StepOutcome.FAILED:
            return {"ok": False, "errcode": 0, "error": "failed permanently"}
        return None  # unknown, or done by an earlier run of this holder: settle by re-reading

    return step


@job_type("groups.apply", delivery=AT_MOST_ONCE, max_attempts=10)
def groups_apply(ctx: JobContext) -> dict[str, Any]:
    """Apply one chat's pending membership changes (or every chat's, most urgent first)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.chat_changes import apply_chat, next_chats

    group_id = ctx.payload.get("group_id")
    if group_id is not None:
        outcome = apply_chat(ctx.app, int(group_id), ctx.ensure_lease, step=_step(ctx))
        if outcome.get("state") == "busy":
            # Another process holds the chat: come back in a second (attempt not spent) rather than
            # finish, or changes planned meanwhile would wait for the sweep (minutes).
            raise ChatBusy(f"chat of group {group_id} is being applied by another process", retry_after=1.0)
        return outcome
    chats = next_chats(db.session, 1000)
    db.session.rollback()
    results = []
    for gid in chats:  # one pass: a chat left pending (held for a person) is not retried in a loop
        outcome = apply_chat(ctx.app, gid, ctx.ensure_lease, step=_step(ctx))
        results.append(outcome)
        if outcome.get("state") == "held":
            return {"state": "held", "chats": results[-50:]}
    return {"state": "done", "chats": results[-50:]}


class ChatBusy(RateLimitedError):
    """Another process is applying this chat; nothing was sent."""


@job_type("groups.notify", delivery=AT_MOST_ONCE, max_attempts=5)
def groups_notify(ctx: JobContext) -> dict[str, Any]:
    """Tell removed members, real-name reminders and admins (one digest per admin per run)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import membership_notices as notices
    from wecom_plugin.services.wecom import client_for

    try:
        with db.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            messages = notices.build(conn, ctx.payload, ctx.settings)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc
    db.session.rollback()
    client = client_for(ctx.app, guard=ctx.ensure_lease)
    outcomes: dict[str, int] = {}
    try:
        for notice in messages:
            result = ctx.run_step(notice.key, lambda n=notice: notices.send(client, n))
            outcomes[result.outcome.value] = outcomes.get(result.outcome.value, 0) + 1
    finally:
        client.close()
    return {"kind": ctx.payload.get("kind"), "messages": len(messages), "outcomes": outcomes}
