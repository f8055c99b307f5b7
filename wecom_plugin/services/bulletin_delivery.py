"""Firing a bulletin occurrence: one run, one delivery per target, each sent at most once.

The clock materialises each occurrence once (unique on schedule key and time) and enqueues one
``bulletins.fire`` job. That job, at-most-once:

1. opens the run (unique on bulletin and scheduled time) and judges the day again with the workday
   calendar as it is now: not a day of the rule → ``skipped``; no official data and
   CALENDAR_FALLBACK=hold → ``held`` with an alert (never a silent guess);
2. creates one delivery per target. A target whose quiet window (the group's registry entry, and
   BULLETIN_QUIET_WINDOWS) holds the scheduled time is deferred to the window's end (a job of its own,
   with the misfire grace counted from then), sent anyway and logged (``urgent``), or skipped;
3. sends each due delivery through the runtime's at-most-once step (``sending`` committed before the
   call). A delivery not started within its grace becomes ``missed`` (alerted). A call whose outcome
   cannot be known (a timeout after WeCom may have applied it, a worker killed mid-call) ends
   ``unknown``, alerted, and is never repeated automatically: :func:`resend` is the operator's
   explicit decision.

Every send first takes its units from the shared budget (robot 20/min per key; app chats 200/min per
member and the corp's person-times; message/send 30/min and 1,000/h per member), so WeCom never drops
one silently. When the budget says "later", the job is rescheduled for then (no attempt spent) and the
deliveries' deadlines move with it: waiting for our own budget is not a misfire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from wecom_plugin.domain import bulletin_message as bm
from wecom_plugin.domain import bulletin_schedule
from wecom_plugin.errors import ConfigurationError, RateLimitedError, describe_error
from wecom_plugin.extensions import db
from wecom_plugin.jobs.context import StepOutcome
from wecom_plugin.models.base import insert_for
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.directory import Department, Person, Tag, TagMember
from wecom_plugin.models.groups import ChatMember, GovernedGroup
from wecom_plugin.models.jobs import Job, JobStep, Schedule
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import audit, bulletins
from wecom_plugin.services.alerts import raise_alert
from wecom_plugin.wecom.errors import WeComError

log = logging.getLogger("wecom_plugin.bulletins")

RUN = BulletinRun.__table__
JOB = Job.__table__
SCHEDULE = Schedule.__table__
DELIVERY = BulletinDelivery.__table__
STEP = JobStep.__table__
MESSAGE_USERS_PER_CALL = 1000
SCHEDULE_CHANGED = "发送时间已修改 / the schedule was changed"
UNKNOWN_REASON = (
    "发送结果未知，不会自动重发；核实后可用 bulletins resend 重发 / "
    "outcome unknown: not resent automatically; resend explicitly after checking"
)
OPEN_STATES = ("pending", "deferred")  # closed: sent failed unknown missed skipped cancelled


def fire(ctx) -> dict[str, Any]:
    """The ``bulletins.fire`` job: an occurrence from the clock, a deferred part of one, or a resend."""
    payload = ctx.payload
    if payload.get("resend_of") is not None or payload.get("deliveries"):
        return _send_listed(ctx, [int(i) for i in payload.get("deliveries", [])], resend=True)
    if payload.get("deferred_until"):
        due = datetime.fromisoformat(payload["deferred_until"])
        return _send_due(ctx, int(payload["run_id"]), due, deferred=True)
    if payload.get("prepared_for"):
        return _send_prepared(ctx, int(payload["run_id"]), datetime.fromisoformat(payload["prepared_for"]))
    scheduled = datetime.fromisoformat(payload["scheduled_at"])
    run_id = _open_run(ctx, int(payload["bulletin_id"]), scheduled)
    if run_id is None:
        return {"skipped": "bulletin deleted"}
    if payload.get("early") and _queue_for_later(ctx, run_id, scheduled):
        return {"prepared": run_id}
    return _send_due(ctx, run_id, scheduled, deferred=False)


# --- preparing ahead ------------------------------------------------------------------------------
def _queue_for_later(ctx, run_id: int, scheduled: datetime) -> bool:
    """An occurrence the clock materialised ahead (CLOCK_PREPARE_SECONDS): the run is open and its
    deliveries created; queue their sends for the scheduled time itself (``bulletins.send``, one per
    run). True when that is done (now or by an earlier holder of this job, which must then not send as
    well); False when it is time already or the run was closed (skipped, held): send now or not at all."""
    session = db.session
    try:
        key = f"bulletin-prepared:{run_id}"
        if session.execute(sa.select(JOB.c.id).where(JOB.c.dedupe_key == key)).first() is not None:
            session.rollback()
            return True
        state = session.execute(sa.select(RUN.c.state).where(RUN.c.id == run_id)).scalar_one_or_none()
        if state != "running" or db_now(session) >= scheduled:
            session.rollback()
            return False
        payload = {"run_id": run_id, "bulletin_id": ctx.payload["bulletin_id"], "prepared_for": scheduled.isoformat()}
        if "spec_version" in ctx.payload:
            payload["spec_version"] = ctx.payload["spec_version"]
        enqueue(bulletins.SEND_JOB_NAME, payload, run_after=scheduled, dedupe_key=key, session=session)
        session.commit()
        return True
    except BaseException:
        session.rollback()
        raise


def _send_prepared(ctx, run_id: int, scheduled: datetime) -> dict[str, Any]:
    """The scheduled time of a prepared run. Before its first send, judge again what may have changed
    since it was prepared: the bulletin paused or deleted, the day (a calendar import), the schedule
    (an edit that no longer has this time). Then send what is due."""
    session = db.session
    try:
        run = session.execute(sa.select(RUN).where(RUN.c.id == run_id)).first()
        if run is None:
            session.rollback()
            return {"skipped": "run gone"}
        if run.state == "running" and not _run_started(session, run_id):
            veto = _veto_prepared(session, ctx, run, scheduled)
            if veto is not None:
                closed_as, delivery_state, why = veto
                now = db_now(session)
                session.execute(
                    sa.update(DELIVERY)
                    .where(DELIVERY.c.run_id == run_id, DELIVERY.c.state.in_(OPEN_STATES))
                    .values(state=delivery_state, reason=why, updated_at=now)
                )
                _close_run(session, run_id, closed_as, why, now)
                session.commit()
                return {closed_as: why}
        ids = _due_ids(session, run_id, scheduled)
        session.commit()
    except BaseException as exc:
        session.rollback()
        if _gives_up(ctx, exc):
            _fail_open(_open_ids(run_id), f"多次重试仍失败 / failed on every attempt: {describe_error(exc, 300)}")
        raise
    return _send_listed(ctx, ids, resend=False)


def _run_started(session, run_id: int) -> bool:
    """Whether a send of the run began (a delivery claimed by a job, or past pending): from then on the
    run is sent to the end, never vetoed half-way."""
    return (
        session.execute(
            sa.select(DELIVERY.c.id).where(
                DELIVERY.c.run_id == run_id,
                sa.or_(DELIVERY.c.job_id.is_not(None), DELIVERY.c.state.in_(("sent", "failed", "unknown", "missed"))),
            )
        ).first()
        is not None
    )


def _veto_prepared(session, ctx, run, scheduled: datetime) -> tuple[str, str, str] | None:
    """(run state, delivery state, reason) when the prepared run must not be sent after all."""
    from wecom_plugin.services.workday_calendar import load_calendar

    row = session.get(Bulletin, run.bulletin_id)
    if row is None or row.state != "active":
        return "skipped", "cancelled", _inactive_reason(row)
    local = scheduled.astimezone(ZoneInfo((run.snapshot or {}).get("timezone", row.timezone)))
    calendar = load_calendar(session.connection(), ctx.settings.calendar_fallback)
    verdict = bulletin_schedule.day_verdict(row.schedule, local.date(), calendar)
    if verdict.state == bulletin_schedule.NO:
        return "skipped", "skipped", f"{verdict.zh} / {verdict.en}"
    if verdict.state == bulletin_schedule.HOLD:
        _alert_held(session, row, local, verdict)
        return "held", "skipped", f"{verdict.zh} / {verdict.en}"
    if _schedule_dropped(session, row.id, scheduled, calendar, ctx.payload):
        return "skipped", "skipped", SCHEDULE_CHANGED
    return None


def _inactive_reason(row: Bulletin | None) -> str:
    """Why nothing of a deleted (None) or paused bulletin is sent."""
    return "通报已删除 / the bulletin was deleted" if row is None else "通报已暂停 / the bulletin is paused"


def _due_ids(session, run_id: int, due: datetime) -> list[int]:
    return list(
        session.execute(
            sa.select(DELIVERY.c.id)
            .where(DELIVERY.c.run_id == run_id, DELIVERY.c.due_at == due)
            .order_by(DELIVERY.c.id)
        ).scalars()
    )


def _open_ids(run_id: int) -> list[int]:
    with _tx() as s:
        return list(
            s.execute(
                sa.select(DELIVERY.c.id).where(DELIVERY.c.run_id == run_id, DELIVERY.c.state == "pending")
            ).scalars()
        )


def _gives_up(ctx, exc: BaseException) -> bool:
    """True on the job's last attempt for a failure that will be retried otherwise."""
    from wecom_plugin.errors import LeaseLostError
    from wecom_plugin.runtime import registry

    if not isinstance(exc, Exception) or isinstance(exc, (RateLimitedError, LeaseLostError)):
        return False
    return ctx.attempt >= (registry.get(ctx.name).max_attempts or ctx.settings.job_max_attempts)


# --- opening the run ------------------------------------------------------------------------------
def _open_run(ctx, bulletin_id: int, scheduled: datetime) -> int | None:
    """Create the run and its deliveries once; later holders find them. Returns the run id."""
    from wecom_plugin.services.workday_calendar import load_calendar

    session = db.session
    try:
        row = session.get(Bulletin, bulletin_id)
        if row is None:
            return None
        existing = session.execute(
            sa.select(RUN.c.id).where(RUN.c.bulletin_id == bulletin_id, RUN.c.scheduled_at == scheduled)
        ).scalar_one_or_none()
        if existing is not None:
            return existing
        now = db_now(session)
        snapshot = {
            "message": row.message,
            "confidential": row.confidential,
            "timezone": row.timezone,
            "quiet_policy": row.quiet_policy,
            "grace": row.misfire_grace_seconds,
        }
        run_id = session.execute(
            insert_for(session, RUN)
            .values(
                bulletin_id=bulletin_id,
                scheduled_at=scheduled,
                state="running",
                reason="",
                version=row.version,
                snapshot=snapshot,
                created_at=now,
            )  # fmt: skip
            .on_conflict_do_nothing(index_elements=["bulletin_id", "scheduled_at"])
            .returning(RUN.c.id)
        ).scalar_one_or_none()
        if run_id is None:  # another holder opened it between our read and insert
            session.rollback()
            return session.execute(
                sa.select(RUN.c.id).where(RUN.c.bulletin_id == bulletin_id, RUN.c.scheduled_at == scheduled)
            ).scalar_one()
        tz = ZoneInfo(row.timezone)
        local = scheduled.astimezone(tz)
        calendar = load_calendar(session.connection(), ctx.settings.calendar_fallback)
        verdict = bulletin_schedule.day_verdict(row.schedule, local.date(), calendar)
        if row.state != "active":
            _close_run(session, run_id, "skipped", "通报已暂停 / the bulletin is paused", now)
        elif verdict.state == bulletin_schedule.NO:
            _close_run(session, run_id, "skipped", f"{verdict.zh} / {verdict.en}", now)
        elif verdict.state == bulletin_schedule.HOLD:
            _close_run(session, run_id, "held", f"{verdict.zh} / {verdict.en}", now)
            _alert_held(session, row, local, verdict)
        elif _schedule_dropped(session, row.id, scheduled, calendar, ctx.payload):
            # The schedule was edited after the clock materialised this occurrence: an edit takes
            # effect from the next occurrence of the new schedule, never at a time it no longer has.
            _close_run(session, run_id, "skipped", SCHEDULE_CHANGED, now)
        else:
            # Why this day is a day of the rule (a make-up Saturday, or the fallback's assumption).
            session.execute(sa.update(RUN).where(RUN.c.id == run_id).values(reason=f"{verdict.zh} / {verdict.en}"))
            _create_deliveries(session, ctx, row, run_id, scheduled, now)
        session.commit()
        return run_id
    except BaseException:
        session.rollback()
        raise


def _schedule_dropped(session, bulletin_id: int, scheduled: datetime, calendar, payload: dict[str, Any]) -> bool:
    """True when the schedule was edited after the clock materialised this occurrence (up to
    CLOCK_PREPARE_SECONDS before it; the clock copies the schedule row's payload, which counts spec
    changes, into the job) and the new schedule no longer has this time. An edit takes effect from the
    new schedule's next occurrence: a time it dropped is not sent; a time it kept still is (the clock
    cannot materialise that time again: its occurrence exists)."""
    from wecom_plugin.domain import schedules as specs

    if "spec_version" not in payload:
        return False
    row = session.execute(
        sa.select(SCHEDULE.c.spec, SCHEDULE.c.timezone, SCHEDULE.c.payload).where(
            SCHEDULE.c.key == bulletins.schedule_key(bulletin_id)
        )
    ).first()
    if row is None:
        return False
    if (row.payload or {}).get("spec_version") == payload["spec_version"]:
        return False
    after = scheduled - timedelta(microseconds=1)
    return specs.next_after(row.spec, ZoneInfo(row.timezone), after, calendar) != scheduled


def _close_run(session, run_id: int, state: str, reason: str, now: datetime) -> None:
    session.execute(sa.update(RUN).where(RUN.c.id == run_id).values(state=state, reason=reason, finished_at=now))


def _alert_held(session, row: Bulletin, local: datetime, verdict) -> None:
    day = local.strftime("%Y-%m-%d %H:%M")
    raise_alert(
        f"bulletin.held:{row.id}",
        severity="error",
        title_zh=f"通报「{row.name}」{day} 未发送：{verdict.zh}。请用 wecom-plugin calendar import 导入国务院放假安排",
        title_en=f"Bulletin {row.name!r} at {day} was held: {verdict.en}. Import the State Council's notice "
        "with `wecom-plugin calendar import`",
        detail={"bulletin_id": row.id, "scheduled_local": day},
        session=session,
    )


@dataclass(frozen=True)
class _Target:
    key: str  # chat:<id> | robot:<name> | message:<n>
    quiet: tuple[str, ...]


def targets_of(session, row: Bulletin, settings) -> list[_Target]:
    """The bulletin's delivery targets, each with the quiet windows that apply to it (the group's
    registry entry and BULLETIN_QUIET_WINDOWS, both in WECOM_TIMEZONE)."""
    global_quiet = tuple(settings.bulletin_quiet_windows)
    out: list[_Target] = []
    chat_ids = list(row.targets.get("chats", []))
    if chat_ids:
        quiet = {
            gid: windows
            for gid, windows in session.execute(
                sa.select(GovernedGroup.id, GovernedGroup.quiet_windows).where(GovernedGroup.id.in_(chat_ids))
            )
        }
        for gid in chat_ids:
            out.append(chat_target(gid, quiet.get(gid), settings))
    for robot in row.targets.get("robots", []):
        out.append(_Target(f"robot:{robot['name']}", global_quiet))
    users = row.targets.get("users", [])
    if users or row.targets.get("departments") or row.targets.get("tags"):
        chunks = max(1, -(-len(users) // MESSAGE_USERS_PER_CALL))
        for n in range(chunks):
            out.append(_Target(f"message:{n}", global_quiet))
    return out


def chat_target(group_id: int, group_windows, settings) -> _Target:
    """A governed chat as a target: BULLETIN_QUIET_WINDOWS, then its registry entry's own windows."""
    return _Target(f"chat:{group_id}", tuple(settings.bulletin_quiet_windows) + tuple(group_windows or ()))


def snapshot_message(run, row: Bulletin) -> tuple[bm.MessageSpec, bool, ZoneInfo]:
    """The message, confidentiality and zone a run sends with: its snapshot, taken when it opened (the
    bulletin's own for a run without one)."""
    snapshot = run.snapshot if run is not None and run.snapshot else {}
    spec = bm.MessageSpec.from_doc(snapshot.get("message", row.message))
    return spec, snapshot.get("confidential", row.confidential), ZoneInfo(snapshot.get("timezone", row.timezone))


@dataclass(frozen=True)
class _Quiet:
    """What a quiet window does to one send: ``state`` pending (none, or urgent), deferred or skipped."""

    state: str
    due: datetime | None = None
    reason: str = ""
    window: str = ""


def _quiet(target: _Target, policy: str, at: datetime, settings) -> _Quiet:
    hit = bulletins.defer_window(target.quiet, at.astimezone(settings.tz))
    if hit is None:
        return _Quiet("pending")
    window, end = hit
    if policy == "defer":
        reason = f"免打扰时段 {window}，顺延至 {end.strftime('%H:%M')} / quiet window {window}: deferred"
        return _Quiet("deferred", end.astimezone(UTC), reason, window)
    if policy == "skip":
        return _Quiet("skipped", None, f"免打扰时段 {window}，按设置跳过 / quiet window {window}: skipped", window)
    reason = f"免打扰时段 {window}，紧急通报照发 / quiet window {window}: sent anyway (urgent)"
    return _Quiet("pending", None, reason, window)


def _create_deliveries(session, ctx, row: Bulletin, run_id: int, scheduled: datetime, now: datetime) -> None:
    grace = timedelta(seconds=row.misfire_grace_seconds)
    for target in targets_of(session, row, ctx.settings):
        quiet = _quiet(target, row.quiet_policy, scheduled, ctx.settings)
        due = quiet.due or scheduled
        delivery_id = session.execute(
            sa.insert(DELIVERY)
            .values(
                delivery_id=uuid.uuid4().hex, run_id=run_id, bulletin_id=row.id, target=target.key, attempt=1,
                state=quiet.state, scheduled_at=scheduled, due_at=due, deadline_at=due + grace, reason=quiet.reason,
                updated_at=now,
            )
            .returning(DELIVERY.c.id)
        ).scalar_one()  # fmt: skip
        if quiet.window and quiet.state == "pending":
            _audit_urgent(session, row.id, run_id, target.key, quiet.window)
        if quiet.state == "deferred":
            _schedule_deferred(session, row.id, run_id, delivery_id, target.key, due)


def _audit_urgent(session, bulletin_id: int, run_id: int, target: str, window: str) -> None:
    detail = {"run_id": run_id, "target": target, "window": window}
    audit.record(
        "bulletins", "bulletins.urgent_in_quiet", target=f"bulletin:{bulletin_id}", detail=detail, session=session
    )


def _schedule_deferred(session, bulletin_id: int, run_id: int, delivery_id: int, target: str, due: datetime) -> None:
    """Queue the deferred part, and let it supersede older occurrences deferred to the same moment: an
    hourly bulletin in a night-long window sends once in the morning, not nine times."""
    superseded = (
        session.execute(
            sa.update(DELIVERY)
            .where(
                DELIVERY.c.bulletin_id == bulletin_id,
                DELIVERY.c.target == target,
                DELIVERY.c.state == "deferred",
                DELIVERY.c.due_at == due,
                DELIVERY.c.id != delivery_id,
            )
            .values(
                state="skipped",
                reason="被同一时刻顺延的较新一次通报取代 / superseded by a later occurrence deferred to the same time",
            )  # fmt: skip
            .returning(DELIVERY.c.run_id)
        )
        .scalars()
        .all()
    )
    enqueue(
        bulletins.JOB_NAME,
        {"run_id": run_id, "bulletin_id": bulletin_id, "deferred_until": due.isoformat()},
        run_after=due,
        dedupe_key=f"bulletin-deferred:{run_id}:{due.isoformat()}",
        session=session,
    )
    for other in set(superseded):
        session.flush()
        _settle_in(session, other)


# --- sending --------------------------------------------------------------------------------------
def _send_due(ctx, run_id: int, due: datetime, *, deferred: bool) -> dict[str, Any]:
    session = db.session
    try:
        if deferred:
            session.execute(
                sa.update(DELIVERY)
                .where(DELIVERY.c.run_id == run_id, DELIVERY.c.state == "deferred", DELIVERY.c.due_at == due)
                .values(state="pending")
            )
        ids = _due_ids(session, run_id, due)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return _send_listed(ctx, ids, resend=False)


def _send_listed(ctx, delivery_ids: list[int], *, resend: bool) -> dict[str, Any]:
    from wecom_plugin.errors import LeaseLostError

    outcomes: dict[str, int] = {}
    runs: set[int] = set()
    sender = _Sender(ctx)
    try:
        for delivery_id in delivery_ids:
            state, run_id = sender.deliver(delivery_id, resend=resend)
            runs.add(run_id)
            outcomes[state] = outcomes.get(state, 0) + 1
    except (RateLimitedError, LeaseLostError):
        raise
    except Exception as exc:
        # The job will be retried; on its last attempt, close what is still open so no delivery waits
        # forever and the run is settled (the alert of the dead job says why).
        if _gives_up(ctx, exc):
            _fail_open(delivery_ids, f"多次重试仍失败 / failed on every attempt: {describe_error(exc, 300)}")
        raise
    for run_id in runs:
        # After the deliveries' own commits, never in them: two jobs recording the last two open
        # deliveries of a run at once would each still see the other's open (READ COMMITTED).
        _settle_run(run_id)
    return {"deliveries": outcomes}


def _fail_open(delivery_ids: list[int], reason: str) -> None:
    with _tx() as s:
        rows = (
            s.execute(
                sa.update(DELIVERY)
                .where(DELIVERY.c.id.in_(delivery_ids), DELIVERY.c.state == "pending")
                .values(state="failed", reason=reason[:2000], updated_at=db_now(s))
                .returning(DELIVERY.c.run_id)
            )
            .scalars()
            .all()
        )
    for run_id in set(rows):
        _settle_run(run_id)


class _Sender:
    """Sends one delivery at a time within a job."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.settings = ctx.settings

    def deliver(self, delivery_id: int, *, resend: bool) -> tuple[str, int]:
        """Send delivery ``delivery_id`` if it is still pending; returns its state and run."""
        session = db.session
        step = f"d{delivery_id}"
        try:
            d = session.execute(sa.select(DELIVERY).where(DELIVERY.c.id == delivery_id)).first()
            if d is None:
                return "gone", 0
            if d.state != "pending":
                session.rollback()
                return d.state, d.run_id
            if _step_detail_row(session, self.ctx.job_id, step) is not None:
                # An earlier holder of this job got as far as the call: only the step knows what
                # happened (done, unknown, failed). Never judge it missed or failed from here.
                session.rollback()
                return self._record(d, self.ctx.run_step(step, _already_started)), d.run_id
            if not self._claim(session, d):
                # Another job sends it (step rows are per job, so only this claim keeps two jobs that
                # both see it pending, e.g. a prepared send and its occurrence job retaken after the
                # time, from both sending it).
                session.rollback()
                return "elsewhere", d.run_id
            run = session.execute(sa.select(RUN).where(RUN.c.id == d.run_id)).first()
            row = session.get(Bulletin, d.bulletin_id)
            closed = None if resend else self._closed(session, d, row, db_now(session))
            if closed is not None:
                session.commit()
                return closed, d.run_id
            try:
                plan = self._plan(session, row, run, d)
            except Exception as exc:  # noqa: BLE001 - one broken target must not block the others
                plan = f"无法准备发送 / cannot prepare the send: {type(exc).__name__}: {str(exc)[:300]}"
            session.commit()
        except BaseException:
            session.rollback()
            raise
        if isinstance(plan, str):  # a problem found before any call: nothing was sent
            with _tx() as s:
                self._finish(s, d, "failed", reason=plan)
            return "failed", d.run_id
        try:
            result = self.ctx.run_step(step, lambda: plan.send(self.ctx, self.settings))
        except RateLimitedError as exc:
            # Our budget (or WeCom's 45009) says later: the worker reschedules the job without
            # spending an attempt; move the deadlines of what is still open so the wait is no misfire.
            _push_deadlines(d.run_id, exc.retry_after or 60.0, (run.snapshot or {}).get("grace", 600))
            raise
        except ConfigurationError as exc:
            with _tx() as s:
                self._finish(s, d, "failed", errcode=_errcode(exc), reason=describe_error(exc, 500))
            return "failed", d.run_id
        return self._record(d, result), d.run_id

    def _claim(self, session, d) -> bool:
        """Make this job the delivery's only sender (committed with the plan, before any call)."""
        return bool(
            session.execute(
                sa.update(DELIVERY)
                .where(
                    DELIVERY.c.id == d.id,
                    DELIVERY.c.state == "pending",
                    sa.or_(DELIVERY.c.job_id.is_(None), DELIVERY.c.job_id == self.ctx.job_id),
                )
                .values(job_id=self.ctx.job_id)
            ).rowcount
        )

    def _closed(self, session, d, row: Bulletin | None, now: datetime) -> str | None:
        """Close ``d`` without sending when it must not go out now; None when it should be sent."""
        if row is None or row.state != "active":
            self._finish(session, d, "cancelled", reason=_inactive_reason(row))
            return "cancelled"
        target = next((t for t in targets_of(session, row, self.settings) if t.key == d.target), None)
        if target is None:
            self._finish(session, d, "cancelled", reason="已不在通报的发送对象中 / no longer a target of the bulletin")
            return "cancelled"
        if now > d.deadline_at:
            self._finish(session, d, "missed", reason=_missed_reason(d, now))
            self._alert_missed(session, d, now)
            return "missed"
        # A send that waited (a late pickup, our budget) may now fall in a quiet window.
        quiet = _quiet(target, row.quiet_policy, now, self.settings)
        if quiet.state == "deferred":
            grace = d.deadline_at - d.due_at
            session.execute(
                sa.update(DELIVERY)
                .where(DELIVERY.c.id == d.id)
                .values(
                    state="deferred", due_at=quiet.due, deadline_at=quiet.due + grace, reason=quiet.reason, job_id=None
                )
            )
            _schedule_deferred(session, d.bulletin_id, d.run_id, d.id, d.target, quiet.due)
            return "deferred"
        if quiet.state == "skipped":
            self._finish(session, d, "skipped", reason=quiet.reason)
            return "skipped"
        if quiet.window and d.due_at <= now and not d.reason:
            _audit_urgent(session, d.bulletin_id, d.run_id, d.target, quiet.window)
        return None

    def _plan(self, session, row: Bulletin, run, d) -> _Plan | str:
        """Everything the call needs, read before it (no transaction stays open across a WeCom call).
        The message is the one the occurrence opened with (its snapshot)."""
        spec, confidential, zone = snapshot_message(run, row)
        local = d.scheduled_at.astimezone(zone)
        kind, _, ref = d.target.partition(":")
        members: list[str] = []
        if kind == "chat":
            group = session.get(GovernedGroup, int(ref))
            if group is None or not group.chatid or group.status != "active":
                return f"群 {ref} 已不在使用中 / group {ref} is no longer active"
            name, path = group.name, bm.PATH_APPCHAT
            members = list(session.scalars(sa.select(ChatMember.userid).where(ChatMember.group_id == group.id)))
            address: Any = group.chatid
        elif kind == "robot":
            robot = next((r for r in row.targets.get("robots", []) if r["name"] == ref), None)
            if robot is None:
                return f"机器人 {ref} 已从通报中移除 / robot {ref} was removed from the bulletin"
            # {{ group_name }} is the robot's chat when the bulletin names it, else the robot's own name.
            name = robot.get("chat") or ref
            path, address = bm.PATH_ROBOT, bulletins.robot_key(self.settings, robot)
        else:
            name, path = "", bm.PATH_MESSAGE
            address, members = _message_address(session, row, int(ref or 0))
            accounts = session.scalar(sa.select(sa.func.count()).select_from(Person).where(Person.status != 5)) or 1
        context = bm.template_context(local, group_name=name, bulletin_name=row.name)
        try:
            rendered = bm.render(spec, path, context, confidential=confidential)
        except bm.BulletinMessageError as exc:
            return "消息无法发送 / the message cannot be sent: " + str(exc)
        return _Plan(path, address, rendered, members, accounts if path == bm.PATH_MESSAGE else 0)

    def _record(self, d, result) -> str:
        outcome = result.outcome
        with _tx() as s:
            if outcome in (StepOutcome.DONE, StepOutcome.ALREADY_DONE):
                detail = result.value if outcome == StepOutcome.DONE else _step_detail(s, self.ctx.job_id, f"d{d.id}")
                detail = detail or {}
                self._finish(s, d, "sent", errcode=0, msgid=detail.get("msgid"), reason=detail.get("note", ""),
                             sent_at=_parse(detail.get("sent_at")))  # fmt: skip
                return "sent"
            if outcome == StepOutcome.FAILED:
                why = _step_detail(s, self.ctx.job_id, f"d{d.id}") or {}
                self._finish(s, d, "failed", errcode=_errcode_text(why.get("error", "")), reason=why.get("error", ""))
                return "failed"
            self._finish(s, d, "unknown", reason=UNKNOWN_REASON)
            return "unknown"

    def _finish(self, s, d, state: str, *, errcode=None, msgid=None, reason: str = "", sent_at=None) -> None:
        now = db_now(s)
        values: dict[str, Any] = {"state": state, "updated_at": now, "job_id": self.ctx.job_id}
        if errcode is not None:
            values["errcode"] = errcode
        if msgid:
            values["msgid"] = str(msgid)[:128]
        if reason:
            values["reason"] = reason[:2000]
        if state == "sent":
            values["sent_at"] = sent_at or now
        s.execute(sa.update(DELIVERY).where(DELIVERY.c.id == d.id).values(**values))

    def _alert_missed(self, s, d, now: datetime) -> None:
        row = s.get(Bulletin, d.bulletin_id)
        name = row.name if row else str(d.bulletin_id)
        late = int((now - d.due_at).total_seconds() // 60)
        raise_alert(
            f"bulletin.missed:{d.bulletin_id}",
            severity="error",
            title_zh=f"通报「{name}」有发送对象错过了发送时间（晚了 {late} 分钟，超过宽限），未补发",
            title_en=f"Bulletin {name!r}: a delivery missed its time ({late} min late, past its grace); not sent",
            detail={
                "bulletin_id": d.bulletin_id,
                "run_id": d.run_id,
                "target": d.target,
                "due_at": d.due_at.isoformat(),
            },
            session=s,
        )


@dataclass
class _Plan:
    path: str
    address: Any  # chatid | robot key | (touser, toparty, totag)
    rendered: Any  # bm.Rendered
    members: list[str]  # for the budget: the chat's members, or message/send's expanded recipients
    accounts: int = 0  # message/send: the directory's accounts, for WeCom's per-app daily cap (× 200)

    def send(self, ctx, settings) -> dict[str, Any]:
        from wecom_plugin.services.wecom import budget_for, client_for
        from wecom_plugin.wecom.api import appchat, message, robot
        from wecom_plugin.wecom.budget import (
            CORP,
            MESSAGE_MEMBER_HOUR,
            MESSAGE_MEMBER_MINUTE,
            Ask,
            member_key,
            message_app_day,
        )

        options: dict[str, Any] = {}
        app_day = message_app_day(self.accounts)
        if self.path == bm.PATH_MESSAGE:
            # WeCom's cap is the licence's accounts × 200 person-times a day; the directory's accounts
            # are a lower bound of the licence, so the budget errs on the safe side.
            options["budget"] = budget_for(db.engine, settings, extra=[app_day])
        with client_for(ctx.app, guard=ctx.ensure_lease, **options) as client:
            sent_at = datetime.now(UTC)
            if self.path == bm.PATH_APPCHAT:
                # The budget needs the chat's members: a chat the member check has not read yet has no
                # chat_member rows, so ask WeCom (a read; nothing is sent if it fails).
                members = self.members or list(appchat.get(client, self.address).get("userlist") or [])
                appchat.send(client, self.address, self.rendered.message, safe=self.rendered.safe, members=members)
                return {"errcode": 0, "sent_at": sent_at.isoformat()}
            if self.path == bm.PATH_ROBOT:
                robot.send(client, self.address, self.rendered.message)
                return {"errcode": 0, "sent_at": sent_at.isoformat()}
            touser, toparty, totag = self.address
            named = {member_key(u) for u in touser if u != "@all"}
            # message/send counts named users itself; recipients reached through departments, tags or
            # @all are taken from the budget here (the mirror's view of who they are).
            extra = [u for u in self.members if member_key(u) not in named]
            client.spend(
                [
                    Ask(limit.name, member_key(u))
                    for u in extra
                    for limit in (MESSAGE_MEMBER_MINUTE, MESSAGE_MEMBER_HOUR)
                ]
                + [Ask(app_day.name, CORP, max(1, len(self.members)))]
            )
            result = message.send(
                client, self.rendered.message, touser=touser, toparty=toparty, totag=totag, safe=self.rendered.safe
            )
            note = ""
            rejected = [*result.invaliduser, *result.invalidparty, *result.invalidtag]
            if rejected:
                note = "部分接收人无效 / some recipients were rejected: " + ", ".join(map(str, rejected))[:500]
            return {"errcode": 0, "msgid": result.msgid, "note": note, "sent_at": sent_at.isoformat()}


def _message_address(session, row: Bulletin, chunk: int) -> tuple[tuple[list[str], list[int], list[int]], list[str]]:
    """The (touser, toparty, totag) of one message/send call, and the recipients it reaches per the
    mirror. Departments and tags ride with the first chunk of users."""
    users = list(row.targets.get("users", []))
    part = users[chunk * MESSAGE_USERS_PER_CALL : (chunk + 1) * MESSAGE_USERS_PER_CALL]
    departments = list(row.targets.get("departments", [])) if chunk == 0 else []
    tags = list(row.targets.get("tags", [])) if chunk == 0 else []
    if part == ["@all"]:
        members = list(session.scalars(sa.select(Person.userid).where(Person.status == 1)))
        return (["@all"], [], []), members
    reached = set(part)
    if departments:
        reached.update(department_members(session, departments))
    if tags:
        reached.update(
            session.scalars(
                sa.select(Person.userid).join(TagMember, TagMember.person_id == Person.id)
                .where(TagMember.tag_id.in_(tags), Person.status == 1)
            )
        )  # fmt: skip
        party_ids = [p for tag in session.scalars(sa.select(Tag).where(Tag.id.in_(tags))) for p in tag.party_ids or []]
        reached.update(department_members(session, party_ids))
    return (part, departments, tags), sorted(reached)


def department_members(session, department_ids: Iterable[int]) -> set[str]:
    rows = session.execute(sa.select(Department.id, Department.parent_id).where(Department.deleted_at.is_(None))).all()
    children: dict[int, list[int]] = {}
    for dep_id, parent in rows:
        children.setdefault(parent, []).append(dep_id)
    subtree, stack = set(), list(department_ids)
    while stack:
        current = stack.pop()
        if current not in subtree:
            subtree.add(current)
            stack.extend(children.get(current, []))
    people = session.execute(sa.select(Person.userid, Person.departments).where(Person.status == 1)).all()
    return {userid for userid, deps in people if subtree.intersection(deps or [])}


def _settle_run(run_id: int) -> None:
    with _tx() as s:
        _settle_in(s, run_id)


def _settle_in(s, run_id: int) -> None:
    """Close the run once no delivery is open (the latest attempt per target counts): done if every
    target was sent (or skipped by a quiet window), missed if every one was missed, partial otherwise."""
    states = s.execute(
        sa.select(DELIVERY.c.state, DELIVERY.c.target).where(DELIVERY.c.run_id == run_id).order_by(DELIVERY.c.attempt)
    ).all()
    latest: dict[str, str] = {}
    for state, target in states:
        latest[target] = state
    if not latest or any(state in OPEN_STATES for state in latest.values()):
        return
    if all(state in ("sent", "skipped") for state in latest.values()):
        final = "done"
    elif all(state == "missed" for state in latest.values()):
        final = "missed"
    else:
        final = "partial"
    s.execute(
        sa.update(RUN)
        .where(RUN.c.id == run_id, RUN.c.state.in_(("running", "done", "partial", "missed")))
        .values(state=final, finished_at=db_now(s))
    )


def _push_deadlines(run_id: int, seconds: float, grace_seconds: int) -> None:
    """Our budget makes the run's open deliveries wait ``seconds``: each deadline becomes the end of the
    wait plus the bulletin's grace (never the grace added again on every wait)."""
    with _tx() as s:
        wanted = db_now(s) + timedelta(seconds=seconds + grace_seconds)
        s.execute(
            sa.update(DELIVERY)
            .where(DELIVERY.c.run_id == run_id, DELIVERY.c.state == "pending", DELIVERY.c.deadline_at < wanted)
            .values(deadline_at=wanted)
        )


def _already_started() -> Any:
    raise AssertionError("a step that already started is never run again")  # run_step never calls it


def _step_detail_row(s, job_id: int, target: str):
    return s.execute(sa.select(STEP.c.state).where(STEP.c.job_id == job_id, STEP.c.target == target)).first()


def _missed_reason(d, now: datetime) -> str:
    late = int((now - d.due_at).total_seconds())
    return f"超过宽限未发出（晚 {late} 秒），未补发 / not started within grace ({late} s late); not sent"


def _step_detail(s, job_id: int, target: str) -> dict[str, Any] | None:
    return s.execute(sa.select(STEP.c.detail).where(STEP.c.job_id == job_id, STEP.c.target == target)).scalar()


def _errcode(exc: Exception) -> int | None:
    return getattr(exc, "errcode", None) if isinstance(exc, WeComError) else None


def _errcode_text(text: str) -> int | None:
    import re

    match = re.search(r"errcode[ =:]*(\d+)", text or "")
    return int(match.group(1)) if match else None


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


class _tx:
    """A short transaction on ``db.session``, committed on success."""

    def __enter__(self):
        return db.session

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            db.session.commit()
        else:
            db.session.rollback()
        return False


# --- operator actions -----------------------------------------------------------------------------
def resend(session, delivery_id: int, *, actor: str, reason: str) -> BulletinDelivery:
    """An operator's explicit resend of an ``unknown`` or ``failed`` delivery: a new attempt row and a
    job to send it now (quiet windows and grace do not apply: a person decided). Not committed."""
    d = session.get(BulletinDelivery, delivery_id) if 0 < delivery_id < 2**62 else None
    if d is None:
        raise bulletins.BulletinError(
            [("", f"发送记录 {delivery_id} 不存在", f"delivery {delivery_id} does not exist")], status=404
        )
    if d.state not in ("unknown", "failed", "missed"):
        raise bulletins.BulletinError(
            [("", f"只有结果未知、失败或错过的发送可以重发（当前：{d.state}）",
              f"only unknown, failed or missed deliveries can be resent (this one is {d.state})")],
            status=409,
        )  # fmt: skip
    later = session.execute(
        sa.select(DELIVERY.c.id).where(
            DELIVERY.c.run_id == d.run_id, DELIVERY.c.target == d.target, DELIVERY.c.attempt > d.attempt
        )
    ).first()
    if later is not None:
        raise bulletins.BulletinError([("", "该发送已重发过", "this delivery was already resent")], status=409)
    if not reason.strip():
        raise bulletins.BulletinError([("reason", "重发需要说明原因", "a resend needs a reason")])
    now = db_now(session)
    new = BulletinDelivery(
        delivery_id=uuid.uuid4().hex, run_id=d.run_id, bulletin_id=d.bulletin_id, target=d.target,
        attempt=d.attempt + 1, state="pending", scheduled_at=d.scheduled_at, due_at=now, deadline_at=now,
        reason=f"人工重发 / resent by {actor}: {reason}", resend_of=d.id, updated_at=now,
    )  # fmt: skip
    session.add(new)
    try:
        with session.begin_nested():
            session.flush()
    except sa.exc.IntegrityError:
        raise bulletins.BulletinError(
            [("", "该发送已重发过", "this delivery was already resent")], status=409
        ) from None
    enqueue(bulletins.JOB_NAME, {"deliveries": [new.id], "resend_of": d.id}, session=session)
    session.execute(sa.update(RUN).where(RUN.c.id == d.run_id).values(state="running", finished_at=None))
    detail = {"delivery": d.id, "new_delivery": new.id, "previous_state": d.state}
    audit.record(
        actor, "bulletins.resend", target=f"bulletin:{d.bulletin_id}", reason=reason, detail=detail, session=session
    )
    return new
