"""The executor of planned membership changes: :func:`apply_chat` carries out one chat's pending
``chat_change`` rows in one ``appchat/update``. Member checks use it now, offboarding later.

For one chat, in order:

1. **Re-read the chat** (``appchat/get``): the rows are plans, the chat is the truth. A removal of
   someone no longer there and an addition of someone already there are ``skipped``; a removal for
   departed/disabled/not-in-directory of someone the mirror now shows active (rehired) is
   ``cancelled``; an addition of someone the mirror shows gone is ``cancelled``.
2. **Read the switches** right before calling WeCom: the kill switch, or any mode but enforce,
   leaves everything pending.
3. **One ``appchat/update``** with ``add_user_list``, ``del_user_list`` and ``owner`` (required when
   the current owner is removed: the planned owner change, else one picked by
   :func:`~wecom_plugin.domain.membership.pick_owner`). It costs one ``appchat.update`` from the
   budget service (1,000/h per corp, with headroom): when that is spent
   :class:`~wecom_plugin.wecom.budget.BudgetExhausted` leaves the rows pending and the job is
   rescheduled. :func:`next_chats` orders chats by their most urgent row (offboarding first).
4. **An unknown member id** (60111/86216/86007) fails the whole call. The added ids the mirror does
   not show active are dropped (``failed`` with the errcode) and the call retried; when the mirror
   finds nothing, the additions are split in halves until the bad ids are found. One bad id never
   blocks the rest. 86008 (not this app's chat) makes the rows ``manual`` with a
   :class:`ManualAction`.
5. **Record**: rows ``applied`` (``applied_at``), ``chat_member`` updated, one audit row per change,
   and each removed member still in the company told why and how to get back (``groups.notify``).

The ``appchat/update`` is a side effect: a job passes ``step`` (its ``run_step``, at-most-once) so a
crash after sending never sends again blindly; the re-read at the start of the next attempt settles
what happened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import ACTIVE, DISABLED, LEFT, NOT_ACTIVATED, fold
from wecom_plugin.domain.membership import RuleError, evaluate, pick_owner
from wecom_plugin.errors import RetryableError
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import ChatApplyLease
from wecom_plugin.services import audit
from wecom_plugin.services.directory_view import current_view, mirror_problem, people_status
from wecom_plugin.services.governance_switches import effective
from wecom_plugin.services.membership_check import (
    ACTOR,
    CHANGE,
    CHECK,
    GONE_CODES,
    GROUP,
    MANUAL,
    OFFBOARDED_DAYS,
    OWNER_REASON,
    _exemptions,
    _open_warns,
    chat_gone_alert,
    group_facts,
    not_created_by_app,
    offboarded,
    policy_for,
    refresh_chat_members,
)
from wecom_plugin.wecom import errors as codes
from wecom_plugin.wecom.budget import read_asks
from wecom_plugin.wecom.errors import WeComApiError

log = logging.getLogger("wecom_plugin.groups")

BAD_MEMBER_CODES = frozenset({codes.USERID_NOT_FOUND, codes.APPCHAT_INVALID_MEMBER_ID, codes.APPCHAT_INVALID_MEMBER})
REHIRE_REASONS = frozenset({"departed", "disabled", "not_in_directory", "offboarding_cancelled"})
#: Removals for these reasons are confirmed with WeCom (``user/get``) right before they are made.
CONFIRM_REASONS = frozenset({"departed", "disabled", "not_in_directory"})
Step = Callable[[str, Callable[[], Any]], Any]
LEASE = ChatApplyLease.__table__
LEASE_SECONDS = 300  # an apply's claim on a chat; renewed before every call
MAX_CALLS = 10  # appchat/update calls per apply (each costs one of the 1,000/h); the rest waits
MAX_MEMBERS = 2000  # contract §3.1: a chat holds at most 2,000 (we count the userlist)
MIN_MEMBERS = 1  # creation needs 2; an update only ≤2000 (contract §3.2): never empty a chat


class UpdateOutcomeUnknown(RetryableError):
    """An ``appchat/update`` may or may not have reached WeCom; the next attempt re-reads the chat."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=60.0)


def _engine(app: Any) -> sa.Engine:
    from wecom_plugin.extensions import db

    with app.app_context():
        return db.engine


def _held(switches: Any) -> str:
    return "kill_switch" if switches.kill_switch else f"mode {switches.mode}"


def next_chats(session: Session | sa.Connection, limit: int = 100) -> list[int]:
    """Groups with pending changes, the most urgent first: lowest priority value (0 = offboarding),
    then the oldest pending change."""
    first = sa.func.min(CHANGE.c.priority)
    oldest = sa.func.min(CHANGE.c.created_at)
    rows = session.execute(
        sa.select(CHANGE.c.group_id)
        .where(CHANGE.c.state == "pending")
        .group_by(CHANGE.c.group_id)
        .order_by(first, oldest, CHANGE.c.group_id)
        .limit(limit)
    )
    return [r[0] for r in rows]


@dataclass
class _Outcome:
    state: str
    errcode: int | None = None
    error: str | None = None


@dataclass
class _Apply:
    """One chat's application in progress."""

    group: Any
    rows: list[Any]
    current: dict[str, str] = field(default_factory=dict)  # folded -> spelled, as re-read
    chat_owner: str = ""
    outcomes: dict[int, _Outcome] = field(default_factory=dict)  # row id -> outcome
    chosen_owner: str | None = None  # picked here (no owner change was planned)
    calls: int = 0
    notes: list[str] = field(default_factory=list)
    fence: str = ""  # the claim's fence (a random value, not a secret)
    held: set[int] = field(default_factory=set)  # row ids left pending on purpose (untrusted mirror)
    # A leaving owner WeCom already took out of the chat (§14.8): the chat still needs its owner re-homed.
    owner_gone: str = ""


def apply_chat(
    app: Any,
    group_id: int,
    guard: Callable[[], None] | None = None,
    *,
    step: Step | None = None,
) -> dict[str, Any]:
    """Apply the pending changes of one chat (see the module docstring). Returns what happened.

    ``step(target, action)``: runs the ``appchat/update`` side effect (a job's at-most-once
    ``run_step``); it answers ``action()``'s value, or raises. Without it the call is made directly.

    Raises:
        BudgetExhausted / WeComRateLimited: no update allowance now; everything stays pending.
        UpdateOutcomeUnknown: a call's outcome is unknown; the next attempt re-reads the chat.
    """

    with app.app_context():  # the registry service reads its settings from the current app
        return _apply_chat(app, group_id, guard, step)


def _apply_chat(app: Any, group_id: int, guard: Callable[[], None] | None, step: Step | None) -> dict[str, Any]:

    settings = app.extensions["wecom_settings"]
    engine = _engine(app)
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        group = conn.execute(sa.select(GROUP).where(GROUP.c.id == group_id)).first()
        rows = _pending(conn, group_id)
        switches = effective(conn, settings.governance_mode)
    result: dict[str, Any] = {"group_id": group_id, "pending": len(rows)}
    if group is None or not rows:
        return {**result, "state": "nothing"}
    if group.status != "active":
        fence = _claim(engine, group_id)
        if fence is None:
            return {**result, "state": "busy", "reason": "another process is applying this chat"}
        try:
            n = _cancel_all(engine, group, f"the group is {group.status}: no longer governed")
        finally:
            _release(engine, group_id, fence)
        return {**result, "state": "cancelled", "reason": f"group {group.status}", "cancelled": n}
    if not switches.may_change_chats:
        return {**result, "state": "held", "reason": _held(switches)}
    if not group.chatid:
        return {**result, "state": "held", "reason": "the group has no chat"}
    fence = _claim(engine, group_id)
    if fence is None:
        return {**result, "state": "busy", "reason": "another process is applying this chat"}
    try:
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            group = conn.execute(sa.select(GROUP).where(GROUP.c.id == group_id)).first()
            rows = _pending(conn, group_id)  # re-read under the claim: another applier may have finished
            braked = _braked(conn, group_id)
        if braked:  # the latest check is braked for this chat: its rows wait for a confirmation
            rows = [r for r in rows if r.source != "check"]
            if not rows:
                return {**result, "state": "held", "reason": "brake: waiting for a confirmation"}
        if group is None or group.status != "active" or not rows:
            return {**result, "state": "nothing"}
        work = _Apply(group, rows, fence=fence)
        return _apply_claimed(app, engine, settings, work, guard, step, result)
    finally:
        _release(engine, group_id, fence)


class _Held(Exception):
    """The kill switch or the mode changed right before a call: stop, the rest stays pending."""


class _CapReached(Exception):
    """This apply made its share of calls: the rest stays pending for the next attempt."""


def _apply_claimed(
    app: Any,
    engine: sa.Engine,
    settings: Any,
    work: _Apply,
    guard: Callable[[], None] | None,
    step: Step | None,
    result: dict[str, Any],
) -> dict[str, Any]:
    from wecom_plugin.services.wecom import client_for

    client = client_for(app, guard=guard)
    try:
        if not _reread(engine, client, work):
            return {**result, **_summary(work), "state": work.notes[-1] if work.notes else "failed"}
        _settle(engine, work)
        _reevaluate(engine, settings, work)
        _confirm_gone(engine, client, work)
        live = [r for r in work.rows if r.id not in work.outcomes and r.id not in work.held]
        if not live and not work.owner_gone:
            _record(app, engine, work)
            return {**result, **_summary(work), "state": "settled"}
        plan = _Call.build(engine, settings, work, live)
        try:
            plan.run(client, step)
        except _Held as held:
            _record(app, engine, work)
            return {**result, **_summary(work), "state": "held", "reason": str(held)}
        except BaseException:
            # What the calls that went through did must not be lost (budget, rate limit, network...).
            try:
                _record(app, engine, work)
            except Exception:  # noqa: BLE001 - the original error matters more
                log.exception("group %s: recording the outcomes after a failure failed", work.group.id)
            raise
    finally:
        client.close()
    _record(app, engine, work)
    return {**result, **_summary(work), "state": "applied" if work.calls else "settled"}


# --- the claim (one applier per chat) -------------------------------------------------------------
def _claim(engine: sa.Engine, group_id: int) -> str | None:
    """Claim the chat for this apply: a fence value, or None when another live claim holds it."""
    fence = secrets.token_hex(16)
    now = utcnow()
    until = now + timedelta(seconds=LEASE_SECONDS)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(LEASE).values(group_id=group_id, fence=fence, holder=_holder(), expires_at=until))
        return fence
    except sa.exc.IntegrityError:
        pass
    with engine.begin() as conn:  # an expired claim (a crashed process) is taken over
        taken = conn.execute(
            sa.update(LEASE)
            .where(LEASE.c.group_id == group_id, LEASE.c.expires_at < now)
            .values(fence=fence, holder=_holder(), expires_at=until)
        ).rowcount
    return fence if taken == 1 else None


def _renew(engine: sa.Engine, work: _Apply) -> None:
    """Right before a call: still ours? (compare-and-set on the fence), and extend it."""
    with engine.begin() as conn:
        ours = conn.execute(
            sa.update(LEASE)
            .where(LEASE.c.group_id == work.group.id, LEASE.c.fence == work.fence)
            .values(expires_at=utcnow() + timedelta(seconds=LEASE_SECONDS))
        ).rowcount
    if ours != 1:
        raise _Held("the claim on this chat was lost")


def _release(engine: sa.Engine, group_id: int, fence: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(sa.delete(LEASE).where(LEASE.c.group_id == group_id, LEASE.c.fence == fence))
    except Exception:  # noqa: BLE001 - it expires anyway
        log.exception("group %s: releasing the apply claim failed", group_id)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:128]


def claimed_groups(conn: Any) -> set[int]:
    """Groups an apply holds right now (a check planning leaves their pending rows alone)."""
    return set(conn.execute(sa.select(LEASE.c.group_id).where(LEASE.c.expires_at >= utcnow())).scalars())


def _braked(conn: Any, group_id: int) -> bool:
    """Is this chat held by the brake of the latest finished check (not yet confirmed)?"""
    latest = conn.execute(
        sa.select(CHECK.c.state, CHECK.c.report)
        .where(CHECK.c.state.not_in(("running", "failed", "abandoned")))
        .order_by(CHECK.c.id.desc())
        .limit(1)
    ).first()
    if latest is None or latest.state != "braked":
        return False
    for entry in (latest.report or {}).get("groups", []):
        if entry.get("group_id") == group_id and entry.get("planned") == "braked":
            return True
    return False


def _cancel_all(engine: sa.Engine, group: Any, why: str) -> int:
    with Session(engine) as session, session.begin():
        return cancel_pending(session, group.id, why, sources=None)


def cancel_pending(
    session: Session,
    group_id: int,
    why: str,
    *,
    sources: tuple[str, ...] | None = ("check",),
    userid: str | None = None,
) -> int:
    """Cancel a group's pending rows (of ``sources``; None: all), audited; the caller commits.

    Used when the group is archived, a rule changes or a member is exempted: what a check planned
    before is no longer wanted (the next check plans again from the current rule).
    """
    query = sa.select(CHANGE.c.id, CHANGE.c.userid, CHANGE.c.action, CHANGE.c.source, CHANGE.c.reason).where(
        CHANGE.c.group_id == group_id, CHANGE.c.state == "pending"
    )
    if sources is not None:
        query = query.where(CHANGE.c.source.in_(sources))
    if userid is not None:
        query = query.where(CHANGE.c.userid_folded == fold(userid))
    count = 0
    for row in session.execute(query).all():
        done = session.execute(
            sa.update(CHANGE)
            .where(CHANGE.c.id == row.id, CHANGE.c.state == "pending")
            .values(state="cancelled", error=why[:500])
        ).rowcount
        if done:
            count += 1
            actor = ACTOR if row.source == "check" else f"system:{row.source}"
            audit.record(actor, "groups.change.cancelled", target=f"chat_change:{row.id}", reason=why[:500],
                         outcome="noop", detail={"group_id": group_id, "userid": row.userid, "action": row.action,
                                                 "row_reason": row.reason}, session=session)  # fmt: skip
    return count


def apply_pending(
    app: Any, *, group_id: int | None = None, guard: Callable[[], None] | None = None, limit: int = 1000
) -> dict[str, Any]:
    """Apply pending changes chat by chat, the most urgent first, until done, held or out of budget."""
    from wecom_plugin.wecom.budget import BudgetExhausted
    from wecom_plugin.wecom.errors import WeComRateLimited

    engine = _engine(app)
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        groups = [group_id] if group_id is not None else next_chats(conn, limit)
    results = []
    for gid in groups:
        try:
            outcome = apply_chat(app, gid, guard)
        except (BudgetExhausted, WeComRateLimited) as exc:
            results.append({"group_id": gid, "state": "deferred", "reason": str(exc)})
            return {"state": "deferred", "chats": results, "retry_after": exc.retry_after}
        results.append(outcome)
        if outcome.get("state") == "held":
            return {"state": "held", "chats": results, "reason": outcome.get("reason")}
    return {"state": "done", "chats": results}


# --- steps ----------------------------------------------------------------------------------------
def _pending(conn: Any, group_id: int) -> list[Any]:
    return list(
        conn.execute(
            sa.select(CHANGE)
            .where(CHANGE.c.group_id == group_id, CHANGE.c.state == "pending")
            .order_by(CHANGE.c.priority, CHANGE.c.created_at, CHANGE.c.id)
        )
    )


def _reread(engine: sa.Engine, client: Any, work: _Apply) -> bool:
    from wecom_plugin.wecom.api import appchat

    group = work.group
    client.spend(read_asks("appchat/get"))
    try:
        chat = appchat.get(client, group.chatid)
    except WeComApiError as exc:
        if exc.errcode == codes.APPCHAT_NOT_CREATOR:
            with Session(engine) as session, session.begin():
                action_id = not_created_by_app(session, group, source="apply")
            for row in work.rows:
                work.outcomes[row.id] = _Outcome("manual", exc.errcode, f"manual action #{action_id}")
            _write_outcomes(engine, work)
            work.notes.append("manual")
            return False
        if exc.errcode in GONE_CODES:
            with engine.begin() as conn:
                chat_gone_alert(conn, group, exc.errcode)
            for row in work.rows:
                work.outcomes[row.id] = _Outcome("failed", exc.errcode, "the chat no longer exists")
            _write_outcomes(engine, work)
            work.notes.append("chat_gone")
            return False
        raise
    for u in chat.get("userlist") or ():
        if isinstance(u, str) and u:
            work.current.setdefault(fold(u), u)
    work.chat_owner = str(chat.get("owner") or "")
    refresh_chat_members(engine, group.id, list(work.current.values()))
    return True


def _settle(engine: sa.Engine, work: _Apply) -> None:
    """Skip what is already so; cancel what is no longer wanted (rehired, gone)."""
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        people = people_status(conn, [r.userid for r in work.rows])
    owner_rows = [r for r in work.rows if r.action == "owner"]
    latest_owner = owner_rows[-1].id if owner_rows else None
    for row in work.rows:
        folded = row.userid_folded or fold(row.userid)
        person = people.get(folded)
        status = person[2] if person else None
        if row.action == "remove":
            if folded not in work.current:
                work.outcomes[row.id] = _Outcome("skipped", None, "not in the chat any more")
                if folded in (fold(work.chat_owner or ""), fold(work.group.owner or "")):
                    # WeCom removed a deleted owner itself and kept them as owner, or handed the chat to
                    # whoever it chose (§14.8): ours to re-home (admin first), as for a removal.
                    work.owner_gone = folded
            elif (
                row.reason in REHIRE_REASONS
                and status == ACTIVE
                and (row.source != "offboarding" or row.reason in ("departed", "disabled"))
            ):
                # A removal because the directory said they left (a check's, or a directory-triggered
                # offboarding's) is void once the directory says they are back, however far the
                # offboarding got. An HR offboarding (reason "offboarding") is cancelled only by HR.
                work.outcomes[row.id] = _Outcome("cancelled", None, "active in the directory again (rehired)")
        elif row.action == "add":
            if folded in work.current:
                work.outcomes[row.id] = _Outcome("skipped", None, "already in the chat")
            elif status in (LEFT, DISABLED):
                work.outcomes[row.id] = _Outcome("cancelled", None, "no longer active in the directory")
        elif row.action == "owner":
            if row.id != latest_owner:
                work.outcomes[row.id] = _Outcome("cancelled", None, "replaced by a later owner change")
            elif work.chat_owner and fold(work.chat_owner) == folded:
                work.outcomes[row.id] = _Outcome("skipped", None, "already the owner")
            elif status != ACTIVE:
                work.outcomes[row.id] = _Outcome("cancelled", None, "the new owner is not active")
        else:
            work.outcomes[row.id] = _Outcome("failed", None, f"unknown action {row.action!r}")


def _confirm_gone(engine: sa.Engine, client: Any, work: _Apply) -> None:
    """Ask WeCom before removing someone for having left (reliability 4.2): the mirror may be behind
    a rehire, an enabling or a hire whose callback came late or never. One ``user/get`` per person
    removed for ``departed``, ``disabled`` or ``not_in_directory``: active (or not yet activated) in
    WeCom cancels the removal and asks for a reconciliation soon; 60111, disabled or left confirms it.
    An answer that says nothing (no privilege to read the member) leaves the mirror's word standing;
    a transport failure propagates (the apply is retried). HR offboardings are not asked about: HR
    decides, and only HR cancels them."""
    from wecom_plugin.wecom.api import user as user_api

    rows = [
        r for r in work.rows
        if r.id not in work.outcomes and r.id not in work.held and r.action == "remove"
        and r.reason in CONFIRM_REASONS
    ]  # fmt: skip
    back: list[str] = []
    for userid in sorted({r.userid for r in rows}, key=fold):
        try:
            status = user_api.get(client, userid).get("status")
        except WeComApiError as exc:
            if exc.errcode != codes.USERID_NOT_FOUND:
                log.info(
                    "group %s: user/get %s answered %s; the mirror's word stands", work.group.id, userid, exc.errcode
                )
            continue
        if status in (ACTIVE, NOT_ACTIVATED):
            back.append(fold(userid))
    if not back:
        return
    for row in rows:
        if fold(row.userid) in back:
            work.outcomes[row.id] = _Outcome("cancelled", None, "active in WeCom (the directory mirror was behind)")
    from wecom_plugin.services.directory_events import reconcile_soon

    with Session(engine) as session, session.begin():
        reconcile_soon(session, f"chat {work.group.id}: {len(back)} member(s) active in WeCom, not in the mirror")


def _reevaluate(engine: sa.Engine, settings: Any, work: _Apply) -> None:
    """Ask the rule again, with the exemptions and mirror of now: a check's removal or addition no
    longer wanted (exempted since, the rule edited, the person's status changed) is ``cancelled``.
    Offboarding rows are not the rule's: only the rehire check in :func:`_settle` cancels them. A
    not-in-directory removal waits while the mirror cannot be trusted (:func:`mirror_problem`)."""
    gid = work.group.id
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        now = db_now(conn)
        exemptions = _exemptions(conn, [gid], now).get(gid, [])
        flagged = {f: r.created_at for f, r in _open_warns(conn, [gid]).get(gid, {}).items()}
        untrusted = mirror_problem(conn, settings.directory_sync_minutes, now)
    live = [r for r in work.rows if r.id not in work.outcomes]
    checks = [r for r in live if r.source == "check" and r.action in ("add", "remove")]
    if checks:
        try:
            facts = group_facts(work.group, exemptions, flagged)
        except RuleError as exc:
            for row in checks:
                work.outcomes[row.id] = _Outcome("cancelled", None, f"the rule is invalid now: {exc}"[:500])
            return
        view = current_view(engine)
        evaluation = evaluate(facts, list(work.current.values()), view.directory, policy_for(settings), now)
        removals = {fold(f.userid) for f in evaluation.removals}
        additions = {fold(f.userid) for f in evaluation.additions}
        for row in checks:
            folded = row.userid_folded or fold(row.userid)
            if row.action == "remove" and folded not in removals:
                work.outcomes[row.id] = _Outcome("cancelled", None, "no longer wanted by the rule (re-checked)")
            elif row.action == "add" and folded not in additions:
                work.outcomes[row.id] = _Outcome("cancelled", None, "no longer wanted by the rule (re-checked)")
    if untrusted:
        for row in live:
            if row.id not in work.outcomes and row.action == "remove" and row.reason == "not_in_directory":
                work.held.add(row.id)
        if work.held:
            work.notes.append(f"held: mirror not trustworthy ({untrusted})")


@dataclass
class _Call:
    """The ``appchat/update`` of one chat, with the retry around unknown member ids."""

    engine: sa.Engine
    work: _Apply
    adds: list[Any]  # add rows
    dels: list[Any]  # remove rows
    owner: str | None
    owner_row: Any | None
    owner_add: bool  # the new owner is not in the chat: added by the same call
    people: dict[str, tuple[str, str, int]]
    settings: Any = None

    @classmethod
    def build(cls, engine: sa.Engine, settings: Any, work: _Apply, live: list[Any]) -> _Call:
        adds = [r for r in live if r.action == "add"]
        dels = [r for r in live if r.action == "remove"]
        owner_rows = [r for r in live if r.action == "owner"]
        owner_row = owner_rows[-1] if owner_rows else None
        owner = owner_row.userid if owner_row is not None else None
        removing = {r.userid_folded for r in dels}
        chat_owner = fold(work.chat_owner) if work.chat_owner else ""
        if owner is None and work.owner_gone:
            # The owner to re-home though the leaver is out already. Nobody may take over: a manual
            # action; WeCom's own pick is the one ours would make: no owner change, the registry follows.
            owner = _choose_owner(engine, settings, work, dels, adds)
            if owner is None:
                _owner_needed(engine, work)
                work.notes.append("owner_needed: the leaving owner is out; nobody can take over")
            elif fold(owner) == chat_owner:
                work.chosen_owner, owner = owner, None
            else:
                work.chosen_owner = owner
        elif owner is None and chat_owner and chat_owner in removing:
            owner = _choose_owner(engine, settings, work, dels, adds)
            if owner is None:
                # No one can take over: the owner stays, the rest goes ahead.
                kept = [r for r in dels if r.userid_folded == chat_owner]
                dels = [r for r in dels if r.userid_folded != chat_owner]
                _owner_needed(engine, work)
                work.notes.append(f"owner_needed: {len(kept)} removal(s) of the owner left pending")
            else:
                work.chosen_owner = owner
        if owner is not None:
            # A removal of the new owner cannot go together with making them owner.
            dels = [r for r in dels if r.userid_folded != fold(owner)]
        owner_add = bool(owner) and fold(owner) not in work.current
        if owner_add:
            adds = [r for r in adds if r.userid_folded != fold(owner)]  # the owner change adds them
        with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            people = people_status(conn, [r.userid for r in adds] + ([owner] if owner else []))
        return cls(engine, work, adds, dels, owner, owner_row, owner_add, people, settings)

    def run(self, client: Any, step: Step | None) -> None:
        self._fit()
        try:
            self._run(client, step)
        except _CapReached:
            self.work.notes.append(f"call cap ({MAX_CALLS}) reached: the rest stays pending")

    def _fit(self) -> None:
        """Members after the change must stay within 2..2000: additions are trimmed to fit (never
        removals); removals that would leave fewer than 2 fail without a call."""
        current = set(self.work.current)
        after = len(current - {r.userid_folded for r in self.dels})
        after += len({r.userid_folded for r in self.adds} - current) + int(self.owner_add)
        if after > MAX_MEMBERS:
            room = max(0, len(self.adds) - (after - MAX_MEMBERS))
            for r in self.adds[room:]:
                self.work.outcomes[r.id] = _Outcome(
                    "failed", codes.APPCHAT_MEMBER_COUNT, f"the chat would exceed {MAX_MEMBERS} members"
                )
            self.adds = self.adds[:room]
        elif after < MIN_MEMBERS and self.dels:
            for r in self.dels:
                self.work.outcomes[r.id] = _Outcome(
                    "failed", codes.APPCHAT_MEMBER_COUNT, f"a chat keeps at least {MIN_MEMBERS} members"
                )
            self.dels = []

    def _run(self, client: Any, step: Step | None) -> None:
        carry = bool(self.dels or self.owner)
        if not (self.adds or carry):
            return
        adds = list(self.adds)
        result = self._send(client, step, adds, carry)
        if result is None or result == codes.APPCHAT_NOT_CREATOR:
            return
        if carry and adds:
            # Whatever failed, the removals and the owner go alone first: additions never block them,
            # and a bad id is then found on its side.
            if self._send(client, step, [], True) == codes.APPCHAT_NOT_CREATOR:
                return
            result = self._send(client, step, adds, False)
            if result is None or result == codes.APPCHAT_NOT_CREATOR:
                return
        if result not in BAD_MEMBER_CODES or not adds:
            return
        suspects = [r for r in adds if not self._known_active(r.userid)]
        if suspects:
            for r in suspects:
                self.work.outcomes[r.id] = _Outcome("failed", result, "unknown or inactive member id")
            adds = [r for r in adds if r not in suspects]
            if not adds:
                return
            result = self._send(client, step, adds, False)
            if result is None or result not in BAD_MEMBER_CODES:
                return
        self._bisect(client, step, adds, False, result)

    def _bisect(self, client: Any, step: Step | None, adds: list[Any], carry: bool, errcode: int) -> bool:
        """The call with ``adds`` failed on a bad id: find it by halves. Returns True once the carried
        removals and owner went through."""
        if len(adds) == 1:
            self.work.outcomes[adds[0].id] = _Outcome("failed", errcode, "WeCom refused this member id")
            if carry:
                return self._send(client, step, [], True) is None
            return False
        half = len(adds) // 2
        done = False
        for part in (adds[:half], adds[half:]):
            result = self._send(client, step, part, carry and not done)
            if result is None:
                done = done or carry
            elif result in BAD_MEMBER_CODES:
                done = self._bisect(client, step, part, carry and not done, result) or done
        return done

    def _before_call(self) -> None:
        """Right before every ``appchat/update`` (retries included): the claim is still ours, and the
        kill switch and the mode, read again, still allow changing chats."""
        _renew(self.engine, self.work)
        if self.settings is None:
            return
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            switches = effective(conn, self.settings.governance_mode)
        if not switches.may_change_chats:
            raise _Held(_held(switches))

    def _known_active(self, userid: str) -> bool:
        person = self.people.get(fold(userid))
        return person is not None and person[2] == ACTIVE

    def _send(self, client: Any, step: Step | None, adds: list[Any], carry: bool) -> int | None:
        """One ``appchat/update``; None on success (rows recorded), else the errcode (rows not yet failed,
        unless the errcode is not about member ids)."""
        from wecom_plugin.wecom.api import appchat

        add_ids = [r.userid for r in adds]
        dels = self.dels if carry else []
        owner = self.owner if carry else None
        if carry and self.owner_add and self.owner:
            add_ids.append(self.owner)
        if not (add_ids or dels or owner):
            return None
        chatid = self.work.group.chatid
        if self.work.calls >= MAX_CALLS:
            raise _CapReached()
        self._before_call()
        self.work.calls += 1
        # Offboarding first (one change budget): a call carrying no offboarding change is routine
        # and may not spend the share kept for leavers.
        carried = [*dels, *adds, *([self.owner_row] if self.owner_row is not None else [])]
        routine = not any(r.source == "offboarding" for r in carried)

        def action() -> dict[str, Any]:
            try:
                appchat.update(
                    client, chatid, owner=owner, add_user_list=add_ids, del_user_list=[r.userid for r in dels],
                    routine=routine,
                )  # fmt: skip
            except WeComApiError as exc:  # WeCom refused: nothing was applied
                return {"ok": False, "errcode": exc.errcode, "error": str(exc)[:500]}
            return {"ok": True, "add": add_ids, "del": [r.userid for r in dels], "owner": owner}

        if step is None:
            answer = action()
        else:
            digest = hashlib.sha256(repr((sorted(add_ids), sorted(r.id for r in dels), owner)).encode()).hexdigest()[
                :12
            ]
            answer = step(f"appchat/update:{self.work.group.id}:{digest}", action)
        if answer is None:  # the step's outcome is unknown (a crash, a timeout after sending)
            raise UpdateOutcomeUnknown(f"appchat/update of chat {chatid}: outcome unknown; re-read at the next attempt")
        touched = list(adds) + (list(dels) + ([self.owner_row] if self.owner_row is not None else []) if carry else [])
        if answer.get("ok"):
            for r in touched:
                self.work.outcomes[r.id] = _Outcome("applied")
            for u in add_ids:
                self.work.current.setdefault(fold(u), u)
            for r in dels:
                self.work.current.pop(r.userid_folded, None)
            if owner:
                self.work.chat_owner = owner
            return None
        errcode = int(answer.get("errcode") or 0)
        error = str(answer.get("error") or "")
        if errcode == codes.APPCHAT_NOT_CREATOR:
            with Session(self.engine) as session, session.begin():
                action_id = not_created_by_app(session, self.work.group, source="apply")
            for r in self.work.rows:
                if r.id not in self.work.outcomes or self.work.outcomes[r.id].state not in ("applied", "skipped"):
                    self.work.outcomes[r.id] = _Outcome("manual", errcode, f"manual action #{action_id}")
            return errcode
        if (errcode in BAD_MEMBER_CODES and adds) or (adds and carry):
            return errcode  # the caller splits the call and retries: nothing is failed yet
        for r in touched:
            self.work.outcomes[r.id] = _Outcome("failed", errcode, error)
        return errcode


def _choose_owner(engine: sa.Engine, settings: Any, work: _Apply, dels: list[Any], adds: list[Any]) -> str | None:
    view = current_view(engine)
    try:
        facts = group_facts(work.group, [], {})
    except RuleError:
        return None
    staying = set(work.current) - {r.userid_folded for r in dels} | {r.userid_folded for r in adds}
    leaders = view.department_leaders(work.group.department_id)
    # Never someone leaving: removed by this call, or with an open offboarding (HR leavers are
    # still active in the directory, and a leader among them would otherwise be picked), nor anyone
    # offboarded within OFFBOARDED_DAYS and not rehired.
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        exclude = {r.userid_folded or fold(r.userid) for r in work.rows if r.action == "remove"}
        exclude |= offboarded(conn, recent_days=OFFBOARDED_DAYS)
    return pick_owner(facts, staying, view.directory, leaders, policy_for(settings), exclude=exclude)


def _owner_needed(engine: sa.Engine, work: _Apply) -> None:
    group = work.group
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(MANUAL.c.id).where(
                MANUAL.c.kind == "owner_needed", MANUAL.c.group_id == group.id, MANUAL.c.state == "open"
            )
        ).scalar()
        if exists is None:
            action_id = conn.execute(
                sa.insert(MANUAL).values(
                    kind="owner_needed", group_id=group.id, chat_ref=group.chatid, userid=work.chat_owner,
                    assignee=(list(group.admins or ()) or [None])[0], state="open", created_at=utcnow(),
                    detail={"zh": f"群「{group.name}」的群主需移出，但没有合适的新群主，请指定",
                            "en": f"Chat {group.name!r}: its owner must leave but nobody can take over; choose one"},
                ).returning(MANUAL.c.id)
            ).scalar_one()  # fmt: skip
            from wecom_plugin.services.membership_notices import queue_manual_notice

            queue_manual_notice(conn, action_id)


def _write_outcomes(engine: sa.Engine, work: _Apply) -> None:
    if not work.outcomes:
        return
    by_id = {r.id: r for r in work.rows}
    now = utcnow()
    overtaken: dict[int, list[int]] = {}
    with Session(engine) as session, session.begin():
        for row_id, outcome in work.outcomes.items():
            row = by_id.get(row_id)
            if row is None:
                continue
            values: dict[str, Any] = {"state": outcome.state, "errcode": outcome.errcode, "error": outcome.error}
            if outcome.state == "applied":
                values["applied_at"] = now
            if outcome.state in ("applied", "failed", "manual"):
                values["attempts"] = (row.attempts or 0) + 1
            changed = session.execute(
                sa.update(CHANGE).where(CHANGE.c.id == row_id, CHANGE.c.state == "pending").values(**values)
            ).rowcount
            if not changed and outcome.state == "applied":
                # Cancelled while this apply held it (read before the cancel): WeCom did it, so the
                # row says so (applied wins) and its offboarding is settled again.
                changed = session.execute(
                    sa.update(CHANGE).where(CHANGE.c.id == row_id, CHANGE.c.state == "cancelled").values(**values)
                ).rowcount
                if changed and row.offboarding_id is not None:
                    overtaken.setdefault(row.offboarding_id, []).append(row_id)
            if not changed:
                continue
            actor = ACTOR if row.source == "check" else f"system:{row.source}"
            audit.record(
                actor, f"groups.change.{outcome.state}", target=f"chat_change:{row_id}",
                reason=row.reason,
                outcome={"applied": "success", "skipped": "noop", "cancelled": "noop"}.get(outcome.state, "failure"),
                detail={"group_id": row.group_id, "chatid": work.group.chatid, "userid": row.userid,
                        "action": row.action, "errcode": outcome.errcode, "error": outcome.error},
                session=session,
            )  # fmt: skip
        if overtaken:
            from wecom_plugin.services.offboarding import cancel_overtaken

            for off_id, ids in overtaken.items():
                cancel_overtaken(session, off_id, ids)


def _record(app: Any, engine: sa.Engine, work: _Apply) -> None:
    """Write every outcome, the members as now known, a chosen owner, and queue the notices."""
    _write_outcomes(engine, work)
    refresh_chat_members(engine, work.group.id, list(work.current.values()))
    by_id = {r.id: r for r in work.rows}
    removed = [by_id[i] for i, o in work.outcomes.items() if o.state == "applied" and by_id[i].action == "remove"]
    with Session(engine) as session, session.begin():
        if work.chosen_owner and work.calls and fold(work.chat_owner or "") == fold(work.chosen_owner):
            source = next((r.source for r in work.rows if r.action == "remove"), "check")
            session.execute(
                sa.insert(CHANGE).values(
                    group_id=work.group.id, userid=work.chosen_owner, userid_folded=fold(work.chosen_owner),
                    action="owner", reason=OWNER_REASON, detail=f"previous owner: {work.group.owner or '-'}",
                    source=source, priority=0 if source == "offboarding" else 1, state="applied",
                    attempts=1, created_at=utcnow(), applied_at=utcnow(),
                )
            )  # fmt: skip
            audit.record(ACTOR, "groups.change.applied", target=f"group:{work.group.id}", reason=OWNER_REASON,
                         detail={"action": "owner", "userid": work.chosen_owner}, session=session)  # fmt: skip
            if fold(work.group.owner or "") != fold(work.chosen_owner):
                _registry_owner(session, work.group.id, work.chosen_owner, work.group.owner or "")
        elif work.owner_gone and work.chosen_owner and fold(work.group.owner or "") != fold(work.chosen_owner):
            # WeCom had already made our pick the owner: only the registry was behind.
            _registry_owner(session, work.group.id, work.chosen_owner, work.group.owner or "")
        leavers = {r.userid_folded for r in removed if r.source == "offboarding"}
        if leavers & {fold(a) for a in (work.group.admins or ())}:
            _registry_admins(session, work.group, leavers, app.extensions["wecom_settings"])
        if removed:
            from wecom_plugin.runtime.queue import enqueue

            ids = sorted(r.id for r in removed)
            key = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
            enqueue("groups.notify", {"kind": "removed", "change_ids": ids},
                    dedupe_key=f"groups.notify:removed:{work.group.id}:{key}", session=session)  # fmt: skip


def _registry_owner(session: Session, group_id: int, new_owner: str, old_owner: str) -> None:
    try:
        from wecom_plugin.services import group_registry
    except ModuleNotFoundError as exc:
        if exc.name != "wecom_plugin.services.group_registry":
            raise
        log.warning("group %s: owner re-homed in the chat only (no registry service)", group_id)
        return
    reason = (
        f"群主 {old_owner or '-'} 被移出，改由 {new_owner} 担任 / "
        f"owner {old_owner or '-'} removed; {new_owner} takes over"
    )
    try:
        with session.begin_nested():
            group_registry.update_group(
                session, group_id, {"owner": new_owner}, actor=ACTOR, action="owner_rehomed", reason=reason
            )
    except ValueError as exc:  # RegistryError: the chat has its new owner; the registry refused to record it
        log.warning("group %s: the registry refused the new owner %s: %s", group_id, new_owner, exc)


def _registry_admins(session: Session, group: Any, leavers: set[str], settings: Any) -> None:
    """A leaver removed from the chat is no longer one of its admins (a role of ours). When none is
    left, the general office, which designates admins (群管理员由综合办公室指定), gets a manual action."""
    from wecom_plugin.services import group_registry
    from wecom_plugin.services.membership_notices import queue_manual_notice

    kept = [a for a in (group.admins or ()) if fold(a) not in leavers]
    gone = [a for a in (group.admins or ()) if fold(a) in leavers]
    reason = f"群管理员 {'、'.join(gone)} 已离职 / admin(s) {', '.join(gone)} left the company"
    try:
        with session.begin_nested():
            group_registry.update_group(
                session, group.id, {"admins": kept}, actor=ACTOR, action="admin_removed", reason=reason
            )
    except ValueError as exc:  # RegistryError: keep the chat's removal; the registry edit waits for a person
        log.warning("group %s: the registry refused to drop leaving admins %s: %s", group.id, gone, exc)
        return
    if kept:
        return
    office = next(iter(settings.general_office_userids), None)
    action_id = session.execute(
        sa.insert(MANUAL).values(
            kind="admin_needed", group_id=group.id, chat_ref=group.chatid, userid=gone[0],
            assignee=office or group.owner, state="open", created_at=utcnow(),
            detail={"zh": f"群「{group.name}」的管理员 {'、'.join(gone)} 已离职，请指定新的群管理员",
                    "en": f"Chat {group.name!r}: its admin(s) {', '.join(gone)} left; designate a new admin"},
        ).returning(MANUAL.c.id)
    ).scalar_one()  # fmt: skip
    queue_manual_notice(session, action_id)


def _summary(work: _Apply) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for outcome in work.outcomes.values():
        counts[outcome.state] = counts.get(outcome.state, 0) + 1
    out: dict[str, Any] = {"outcomes": counts, "calls": work.calls}
    if work.chosen_owner:
        out["owner"] = work.chosen_owner
    failed = {
        r.userid: work.outcomes[r.id].errcode
        for r in work.rows
        if r.id in work.outcomes and work.outcomes[r.id].state == "failed"
    }
    if failed:
        out["failed"] = failed
    if work.notes:
        out["notes"] = list(work.notes)
    return out
