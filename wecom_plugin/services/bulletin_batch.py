"""The prepared sends of one claimed batch, together: the fast path of ``bulletins.send``.

At a busy minute (every team's 09:00 report) a worker claims many ``bulletins.send`` jobs at once. Run one
job at a time, each send costs about eight transactions and thirty statements (lease, delivery claim, step
mark, budget, step result, delivery, run, job): at a thousand sends the plugin, not WeCom, made bulletins
late. This handler does the same work for the whole batch in three short transactions around the calls:

1. a read (no write lock on SQLite): the runs, deliveries, bulletins, schedules, groups and members; each
   run judged again as :func:`~wecom_plugin.services.bulletin_delivery._send_prepared` judges it, and each
   message rendered;
2. one write: every lease renewed, every delivery claimed for its job (only if still pending and
   unclaimed), every step marked ``sending``, and the budget of every send taken. Anything refused (a
   lease lost, a delivery taken meanwhile, the budget) rolls it all back and leaves every job to the
   per-job handler;
3. the calls, one after another on one connection used by this batch only. Each call is made only while
   the leases renewed in 2 cannot have expired (a local deadline; past it they are renewed again, and a
   job whose lease is lost makes no further call);
4. one write: the steps' and deliveries' outcomes, the runs settled, the jobs done.

It takes only the common case: a job that has made no step yet, whose run's deliveries are all pending app
chats (unclaimed, or claimed by this job before a budget wait), due at its time and within their grace,
outside quiet windows, with a known member list, and a message that renders. Anything else (a veto, a robot
or message/send target, a quiet window, a job an earlier holder left mid-send, a schedule edited since the
clock materialised the occurrence) is left to the per-job handler, which then finds the job untouched.
The at-most-once rules are the per-job ones: a step marked ``sending`` whose outcome was not recorded
ends ``unknown`` when its job is next run, never sent again; a call that proved nothing was applied (a
refused connection, WeCom's 45009) forgets its mark and goes to the per-job handler, which tries it again
with its own error handling (backoff, 45009 blocks in the budget).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain import bulletin_message as bm
from wecom_plugin.domain import bulletin_schedule
from wecom_plugin.errors import ConfigurationError, LeaseLostError, PermanentError, PluginError, describe_error
from wecom_plugin.extensions import db
from wecom_plugin.jobs.context import StepOutcome
from wecom_plugin.models.bulletins import Bulletin
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import ChatMember, GovernedGroup
from wecom_plugin.models.jobs import JobStep
from wecom_plugin.runtime import claim
from wecom_plugin.services import bulletin_delivery as bd
from wecom_plugin.services import bulletins

log = logging.getLogger("wecom_plugin.bulletins")

BULLETIN = Bulletin.__table__
GROUP = GovernedGroup.__table__
MEMBER = ChatMember.__table__
STEP = JobStep.__table__
# A call is made only this long before the lease renewed in the claim transaction could expire: the
# local deadline is taken before that transaction began, and two clocks may drift a little.
LEASE_MARGIN_SECONDS = 1.0
# Recipients per budget grant (and per claim transaction); WeCom's corp minute is 20,000 person-times.
PERSON_TIMES_PER_CHUNK = 5000
RECORD_ATTEMPTS = 3
SETTLEABLE = ("running", "done", "partial", "missed")  # run states a recorded outcome may settle (_settle_in)


class _Refused(Exception):
    """The claim transaction could not take everything (a lease, a delivery, the budget): roll back."""


@dataclass
class _Send:
    ctx: Any  # JobContext
    delivery_id: int
    run_id: int
    bulletin_id: int
    version: int  # the bulletin's, as read
    deadline: datetime  # the delivery's deadline_at: not called after it
    chatid: str
    rendered: Any  # bm.Rendered
    members: list[str]
    # filled by the call:
    outcome: StepOutcome | None = None  # None: not called, or nothing applied; the mark is forgotten
    detail: dict[str, Any] | None = None
    state: str = ""  # the delivery's new state; "" leaves it pending for the per-job handler
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> str:
        return f"d{self.delivery_id}"


def send_batch(ctxs: list[Any]) -> dict[int, bool]:
    """The batch handler of ``bulletins.send`` (see :class:`~wecom_plugin.runtime.registry.JobType`).

    Returns ``{job id: finished}`` for the jobs it completed (False: the lease was lost before the job
    row could be marked done; the outcomes are recorded all the same). Every other job is untouched."""
    if not ctxs:
        return {}
    plans = _read_plans(ctxs)
    lease_seconds = min(c.lease_seconds for c in ctxs)
    finished: dict[int, bool] = {}
    for chunk in _chunks(plans):
        try:
            finished.update(_send_chunk(chunk, lease_seconds))
        except Exception:  # noqa: BLE001 - the jobs of this and later chunks go to the per-job handler
            log.exception("bulletins.send batch: a chunk of %s jobs failed", len(chunk))
            break
    return finished


def _chunks(plans: dict[int, list[_Send]]) -> list[dict[int, list[_Send]]]:
    """The plans in chunks of at most PERSON_TIMES_PER_CHUNK recipients (at least one job each): one budget
    grant for a batch of big chats could otherwise exceed the corp's minute and never be granted."""
    chunks: list[dict[int, list[_Send]]] = []
    size = 0
    for job_id, sends in plans.items():
        weight = sum(len(s.members) for s in sends)
        if not chunks or size + weight > PERSON_TIMES_PER_CHUNK:
            chunks.append({})
            size = 0
        chunks[-1][job_id] = sends
        size += weight
    return chunks


def _send_chunk(plans: dict[int, list[_Send]], lease_seconds: float) -> dict[int, bool]:
    started = time.monotonic()  # before the claim renews the leases: the local deadline errs early
    try:
        with db.engine.begin() as conn:
            _claim(conn, plans, lease_seconds)
    except _Refused as why:
        log.info("bulletins.send batch left to the per-job handler: %s", why)
        return {}
    sends = [s for group in plans.values() for s in group]
    try:
        _call(sends, lease_seconds, started + lease_seconds - LEASE_MARGIN_SECONDS)
    finally:
        # Also when the calls were interrupted: what was called is recorded (the one in flight as
        # unknown), what was not loses its mark, and the worker hands the rest to the per-job handler.
        finished = _record_retrying(plans)
    return finished


# --- 1. read ----------------------------------------------------------------------------------------
def _read_plans(ctxs: list[Any]) -> dict[int, list[_Send]]:
    """{job id: its sends} for the jobs this batch can take (see the module docstring), read without a lock."""
    from wecom_plugin.services.workday_calendar import load_calendar

    candidates = [c for c in ctxs if c.payload.get("prepared_for") and c.payload.get("run_id")]
    if not candidates:
        return {}
    settings = candidates[0].settings
    run_ids = {int(c.payload["run_id"]) for c in candidates}
    with db.engine.connect() as conn:
        conn = conn.execution_options(sqlite_begin="DEFERRED")
        with conn.begin():
            now = db_now(conn)
            # A job with a step already (an earlier holder got as far as a call) is the per-job handler's: only
            # its steps know what happened.
            stepped = set(
                conn.execute(
                    sa.select(STEP.c.job_id).where(STEP.c.job_id.in_([c.job_id for c in candidates]))
                ).scalars()
            )
            candidates = [c for c in candidates if c.job_id not in stepped]
            runs = {r.id: r for r in conn.execute(sa.select(bd.RUN).where(bd.RUN.c.id.in_(run_ids)))}
            by_run: dict[int, list[Any]] = defaultdict(list)
            for d in conn.execute(sa.select(bd.DELIVERY).where(bd.DELIVERY.c.run_id.in_(run_ids))):
                by_run[d.run_id].append(d)
            bulletin_ids = {r.bulletin_id for r in runs.values()}
            rows = {b.id: b for b in conn.execute(sa.select(BULLETIN).where(BULLETIN.c.id.in_(bulletin_ids)))}
            versions = {
                key: (payload or {}).get("spec_version")
                for key, payload in conn.execute(
                    sa.select(bd.SCHEDULE.c.key, bd.SCHEDULE.c.payload).where(
                        bd.SCHEDULE.c.key.in_([bulletins.schedule_key(b) for b in bulletin_ids])
                    )
                )
            }
            calendar = load_calendar(conn, settings.calendar_fallback)
            group_ids = {_chat_id(d.target) for ds in by_run.values() for d in ds} - {None}
            groups = {
                g.id: g
                for g in conn.execute(
                    sa.select(GROUP.c.id, GROUP.c.name, GROUP.c.status, GROUP.c.chatid, GROUP.c.quiet_windows).where(
                        GROUP.c.id.in_(group_ids)
                    )
                )
            }
            members: dict[int, list[str]] = defaultdict(list)
            for group_id, userid in conn.execute(
                sa.select(MEMBER.c.group_id, MEMBER.c.userid).where(MEMBER.c.group_id.in_(group_ids))
            ):
                members[group_id].append(userid)
    plans: dict[int, list[_Send]] = {}
    for ctx in candidates:
        run = runs.get(int(ctx.payload["run_id"]))
        row = rows.get(run.bulletin_id) if run is not None else None
        sends = _sends_of(ctx, run, row, by_run.get(run.id, []) if run else [], versions, calendar, groups,
                          members, now)  # fmt: skip
        if sends:
            plans[ctx.job_id] = sends
    return plans


def _chat_id(target: str) -> int | None:
    kind, _, ref = target.partition(":")
    return int(ref) if kind == "chat" and ref.isdigit() else None


def _sends_of(ctx, run, row, deliveries, versions, calendar, groups, members, now: datetime) -> list[_Send]:
    """The sends of one job's run, or [] when anything about it is not the common case."""
    scheduled = datetime.fromisoformat(ctx.payload["prepared_for"])
    if run is None or run.state != "running" or row is None or row.state != "active" or not deliveries:
        return []
    spec, confidential, zone = bd.snapshot_message(run, row)
    local = scheduled.astimezone(zone)
    if bulletin_schedule.day_verdict(row.schedule, local.date(), calendar).state != bulletin_schedule.YES:
        return []
    if "spec_version" in ctx.payload and versions.get(bulletins.schedule_key(row.id)) != ctx.payload["spec_version"]:
        return []  # edited since materialised: the per-job handler judges whether the time was kept
    chats = set(row.targets.get("chats", []))
    sends = []
    for d in deliveries:
        group = groups.get(_chat_id(d.target))
        if (
            d.state != "pending" or d.job_id not in (None, ctx.job_id) or d.attempt != 1 or d.due_at != scheduled
            or now > d.deadline_at or group is None or group.id not in chats or group.status != "active"
            or not group.chatid or not members.get(group.id)
        ):  # fmt: skip
            return []
        target = bd.chat_target(group.id, group.quiet_windows, ctx.settings)
        if bd._quiet(target, row.quiet_policy, now, ctx.settings) != bd._Quiet("pending"):
            return []
        context = bm.template_context(local, group_name=group.name, bulletin_name=row.name)
        try:
            rendered = bm.render(spec, bm.PATH_APPCHAT, context, confidential=confidential)
        except bm.BulletinMessageError:
            return []
        sends.append(
            _Send(ctx, d.id, run.id, row.id, row.version, d.deadline_at, group.chatid, rendered, members[group.id])
        )
    return sends


# --- 2. claim ---------------------------------------------------------------------------------------
def _claim(conn: sa.Connection, plans: dict[int, list[_Send]], lease_seconds: float) -> None:
    """Leases, deliveries, step marks and the budget, all or nothing (raises :class:`_Refused`)."""
    from wecom_plugin.jobs.context import mark_sending_in
    from wecom_plugin.services.wecom import budget_for
    from wecom_plugin.wecom.api import appchat

    ctxs = {sends[0].ctx.job_id: sends[0].ctx for sends in plans.values()}
    held = claim.renew_all(conn, bd.JOB, [(c.job_id, c.fence) for c in ctxs.values()], lease_seconds)
    if held != set(ctxs):
        raise _Refused(f"lease lost: jobs {sorted(set(ctxs) - held)}")
    # A bulletin paused, deleted or edited since the read is judged by the per-job handler.
    versions = {s.bulletin_id: s.version for sends in plans.values() for s in sends}
    current = dict(
        conn.execute(
            sa.select(BULLETIN.c.id, BULLETIN.c.version).where(
                BULLETIN.c.id.in_(versions), BULLETIN.c.state == "active"
            )
        ).all()
    )
    if current != versions:
        raise _Refused("a bulletin changed since it was read")
    owner = {s.delivery_id: s.ctx.job_id for sends in plans.values() for s in sends}
    claimed = set(
        conn.execute(
            sa.update(bd.DELIVERY)
            .where(
                bd.DELIVERY.c.id.in_(owner),
                bd.DELIVERY.c.state == "pending",
                # unclaimed, or claimed by the same job before a budget wait
                sa.or_(bd.DELIVERY.c.job_id.is_(None), bd.DELIVERY.c.job_id == sa.case(owner, value=bd.DELIVERY.c.id)),
            )
            .values(job_id=sa.case(owner, value=bd.DELIVERY.c.id))
            .returning(bd.DELIVERY.c.id)
        ).scalars()
    )
    if claimed != set(owner):
        raise _Refused(f"deliveries taken meanwhile: {sorted(set(owner) - claimed)}")
    mark_sending_in(conn, [(s.ctx, s.step) for sends in plans.values() for s in sends])
    # Last, so the budget's counter rows (the corp's are shared by every sender) are locked briefly.
    settings = next(iter(ctxs.values())).settings
    asks = [ask for sends in plans.values() for s in sends for ask in appchat.send_asks(s.members)]
    try:
        grant = budget_for(conn.engine, settings).acquire_in(conn, asks)
    except ValueError as exc:  # more than a limit ever grants (a huge chat): one job at a time
        raise _Refused(str(exc)) from None
    if not grant.ok:
        raise _Refused(f"budget: {grant.limit_name} for {grant.wait:.0f} s")


# --- 3. call ----------------------------------------------------------------------------------------
def _call(sends: list[_Send], lease_seconds: float, valid_until: float) -> None:
    """Each send's call, behind the local lease deadline; fills in outcome, detail, state and values."""
    from wecom_plugin.services.wecom import client_for
    from wecom_plugin.wecom.api import appchat

    live = {s.ctx.job_id: s.ctx for s in sends}
    current: list[Any] = [None]
    deadline = [valid_until]

    def guard() -> None:
        if time.monotonic() < deadline[0]:
            return
        began = time.monotonic()
        try:
            with db.engine.begin() as conn:
                held = claim.renew_all(conn, bd.JOB, [(c.job_id, c.fence) for c in live.values()], lease_seconds)
        except sa.exc.SQLAlchemyError as exc:
            # Before the request: nothing is sent, and no later call is made without a renewed lease.
            live.clear()
            raise LeaseLostError(f"leases could not be renewed: {describe_error(exc, 200)}") from None
        for job_id in set(live) - held:
            live.pop(job_id)
        deadline[0] = began + lease_seconds - LEASE_MARGIN_SECONDS
        if current[0].job_id not in held:
            raise LeaseLostError(f"job {current[0].job_id} lease lost (fence {current[0].fence})")

    # The budget was taken in the claim transaction: the client takes none again.
    with client_for(sends[0].ctx.app, guard=guard, budget=None) as client:
        for s in sends:
            if s.ctx.job_id not in live:
                continue  # its lease is lost: no further call; the mark is forgotten
            if datetime.now(UTC) > s.deadline:
                continue  # past its grace after the calls before it: the per-job handler records it missed
            current[0] = s.ctx
            sent_at = datetime.now(UTC)
            # Until the call answers, its outcome is unknown (recorded so if the calls are interrupted).
            s.outcome, s.detail = StepOutcome.UNKNOWN, {"why": "interrupted during the call"}
            s.state, s.values = "unknown", {"reason": bd.UNKNOWN_REASON}
            try:
                appchat.send(client, s.chatid, s.rendered.message, safe=s.rendered.safe)
            except LeaseLostError:
                # Raised by the guard, before the request: nothing was sent.
                live.pop(s.ctx.job_id, None)
                s.outcome, s.detail, s.state, s.values = None, None, "", {}
            except ConfigurationError as exc:
                # Nothing was sent, and retrying cannot help until a person fixes a setting.
                s.outcome, s.detail = None, None
                s.state, s.values = "failed", {"errcode": bd._errcode(exc), "reason": describe_error(exc, 500)}
            except PluginError as exc:
                _failed_call(s, exc)
            except Exception as exc:  # noqa: BLE001 - a bug mid-call: it may have sent; never repeat it
                log.exception("bulletins.send batch: delivery %s", s.delivery_id)
                s.outcome, s.detail = StepOutcome.UNKNOWN, {"why": describe_error(exc, 1000)}
                s.state, s.values = "unknown", {"reason": bd.UNKNOWN_REASON}
            else:
                s.outcome, s.detail = StepOutcome.DONE, {"errcode": 0, "sent_at": sent_at.isoformat()}
                s.state, s.values = "sent", {"errcode": 0, "sent_at": sent_at}


def _failed_call(s: _Send, exc: PluginError) -> None:
    """A call that raised: sent or not, known or not, as :meth:`JobContext.run_step` and the per-job
    handler judge it."""
    if exc.side_effect_possible:
        s.outcome, s.detail = StepOutcome.UNKNOWN, {"why": describe_error(exc, 1000)}
        s.state, s.values = "unknown", {"reason": bd.UNKNOWN_REASON}
    elif isinstance(exc, PermanentError):
        why = describe_error(exc, 1000)
        s.outcome, s.detail = StepOutcome.FAILED, {"error": why}
        s.state, s.values = "failed", {"errcode": bd._errcode_text(why), "reason": why}
    else:
        # Nothing was applied (a refused connection, 45009): the mark is forgotten, the delivery stays
        # pending for the per-job handler.
        s.outcome, s.detail, s.state, s.values = None, None, "", {}


def _bound(values: dict[str, Any]) -> dict[str, Any]:
    return {f"_{key}": value for key, value in values.items()}


def _record_retrying(plans: dict[int, list[_Send]]) -> dict[int, bool]:
    """:func:`_record`, tried again on a database error (a lock timeout, a deadlock victim): if it never
    commits, the per-job handler turns every mark of the batch ``unknown``, the sent and the unsent alike.
    As a last resort the marks of the sends that were not made are forgotten on their own."""
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return _record(plans)
        except sa.exc.SQLAlchemyError as exc:
            if attempt == RECORD_ATTEMPTS:
                _forget_unmade(plans)
                raise
            log.warning("bulletins.send batch: recording failed (%s), trying again", describe_error(exc, 200))
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _forget_unmade(plans: dict[int, list[_Send]]) -> None:
    from wecom_plugin.jobs.context import close_steps_in

    unmade = [(s.ctx, s.step, None, None) for sends in plans.values() for s in sends if s.outcome is None]
    try:
        with db.engine.begin() as conn:
            close_steps_in(conn, unmade)
    except sa.exc.SQLAlchemyError:
        log.exception("bulletins.send batch: could not forget %s marks of sends not made", len(unmade))


# --- 4. record --------------------------------------------------------------------------------------
def _record(plans: dict[int, list[_Send]]) -> dict[int, bool]:
    """One transaction: steps, deliveries, runs and jobs. Outcomes are recorded even for a job whose
    lease was lost meanwhile (the calls did happen); the job row only by its own holder."""
    from wecom_plugin.jobs.context import close_steps_in, finish_all_in

    sends = [s for group in plans.values() for s in group]
    with db.engine.begin() as conn:
        now = db_now(conn)
        close_steps_in(conn, [(s.ctx, s.step, s.outcome, s.detail) for s in sends])
        updates = [
            {"_id": s.delivery_id, "_state": s.state, "_now": now}
            | _bound({"errcode": None, "msgid": None, "sent_at": None, "reason": "", **s.values})
            for s in sends
            if s.state
        ]
        if updates:
            d = bd.DELIVERY
            conn.execute(
                sa.update(d)
                .where(d.c.id == sa.bindparam("_id"))
                .values(
                    # A field the outcome does not give keeps its value, as the per-job _finish leaves it.
                    state=sa.bindparam("_state"),
                    updated_at=sa.bindparam("_now"),
                    errcode=sa.func.coalesce(sa.bindparam("_errcode", type_=d.c.errcode.type), d.c.errcode),
                    msgid=sa.func.coalesce(sa.bindparam("_msgid", type_=d.c.msgid.type), d.c.msgid),
                    sent_at=sa.func.coalesce(sa.bindparam("_sent_at", type_=d.c.sent_at.type), d.c.sent_at),
                    reason=sa.case(
                        (sa.bindparam("_reason", type_=d.c.reason.type) == "", d.c.reason),
                        else_=sa.bindparam("_reason", type_=d.c.reason.type),
                    ),
                ),
                updates,
            )
        settled, done = [], []
        for group in plans.values():
            if any(not s.state for s in group):
                continue  # a send left for the per-job handler: the job is not done
            counts: dict[str, int] = {}
            for s in group:
                counts[s.state] = counts.get(s.state, 0) + 1
            # Every delivery of the run was in this job (see _sends_of), so the run is settled here.
            settled.append({"_id": group[0].run_id, "_state": "done" if set(counts) == {"sent"} else "partial"})
            # "batch": how many jobs were sent together (the per-job handler's result has no such key).
            done.append((group[0].ctx, {"deliveries": counts, "batch": len(plans)}))
        if settled:
            conn.execute(
                sa.update(bd.RUN)
                # As _settle_in: a takeover may have settled the run from an outcome this batch now records.
                .where(
                    bd.RUN.c.id == sa.bindparam("_id"),
                    sa.or_(*(bd.RUN.c.state == sa.literal_column(f"'{state}'") for state in SETTLEABLE)),
                )
                .values(state=sa.bindparam("_state"), finished_at=now),
                settled,
            )
        return finish_all_in(conn, done)
