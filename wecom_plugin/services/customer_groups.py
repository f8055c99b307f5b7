"""Customer groups (客户群) of a leaver handed over to a successor, as part of their offboarding.

Customer groups are the external groups members run with customers (contract §6); they are not app
chats and the app cannot change their members. What WeCom allows, and what this module does with it:

* **Listing**: ``groupchat/list`` with ``owner_filter`` = the leaver (cursor pages). Groups of an owner
  deleted from the directory are listed only with that filter (§6.1); one report says WeCom answers 40003
  to it (§14.8), so on 40003 for a deleted owner the groups of all resigned owners (``status_filter=1``)
  are read one by one (``groupchat/get``) and the leaver's kept. Listed status 2/3 (离职继承中/完成) is
  the group's last inheritance, not a sign that it left this owner (a group the leaver inherited earlier
  shows 3 under them): such a group is checked with ``groupchat/get`` like an unlisted one. A listing
  WeCom refuses (48002, 81017...) fails the scan with one alert; rows an earlier run recorded and still
  open become one manual action for the general office (the offboarding settles ``partial``), and the
  sweep retries such an offboarding at most hourly.
* **Successor**: the leaver's direct leader (``direct_leaders`` of the directory mirror, the first one
  active), else the leader of their main department or the nearest parent department (active, not the
  leaver, not leaving: no scheduled/pending/running offboarding, none finished within OFFBOARDED_DAYS
  without a rehire, as for new chat owners). Nobody: the groups become a manual action for the general
  office (GENERAL_OFFICE_USERIDS, else GROUP_APPROVERS, else ALERT_WECOM_USERIDS). Re-resolved on every
  run, so a successor who left meanwhile is replaced.
* **Method**: once the leaver is deleted from the directory (mirror status 5: a ``departed`` record),
  ``groupchat/transfer``. Before that, per ``CUSTOMER_GROUP_HANDOVER``:

  - ``wait`` (the default): rows wait; nothing moves until the deletion, then ``groupchat/transfer``.
    The safe default because an on-the-job transfer is irreversible for us (a rehire, a disablement
    lifted, an HR offboarding withdrawn cannot give the groups back without spending another of the
    group's two on-the-job transfers per 90 days), moves the leaver's customers while the leaver may
    still be serving them, and ``groupchat/transfer`` is the path WeCom designed for leavers (no 90-day
    limit). The price: the groups stay with a disabled or leaving account until the deletion. After
    CUSTOMER_GROUP_WAIT_DAYS (default 7) waiting, ONE manual action for the successor (else the general
    office) says so; the offboarding stays open (it is waiting) but a person is told, and the action is
    resolved when the groups are handed over (or the offboarding is cancelled).
  - ``onjob``: ``groupchat/onjob_transfer`` at once. Per chat: 40058 (WeCom says the owner resigned:
    the mirror has not seen the deletion yet) waits for the deletion; 45009 (the group was moved twice
    in 90 days, or the 300-a-day limit) fails with a manual action and is retried with
    ``groupchat/transfer`` when the deletion arrives.
  - ``off``: nothing is listed or moved (an app not set up in 客户联系 → 可调用接口的应用 gets 48002).

* **Deletion arriving later**: the minute ``customer_groups.sweep`` finds offboardings whose leaver the
  mirror now shows deleted and that still have waiting rows (or on-the-job failures ``transfer`` may
  do) and queues their handover. (A finished offboarding is also re-planned by the departure record,
  which queues it at once.)
* **Transfers**: up to 100 chats per call, grouped by method and successor; each call takes
  ``groupchat.transfer_day`` (300 a day from one person to one new owner, §6.3) from the shared budget
  first (spent: the job waits, nothing dropped). WeCom answers errcode 0 with ``failed_chat_list``; every
  chat's outcome is recorded and audited. A per-chat failure becomes ``failed`` with one manual action
  per run for the successor (what to ask the admin, in the admin console); a refused successor (top-level
  40003/60011: no 客户联系 rights, not activated, outside the app's scope) makes the chats ``manual`` for
  the general office. A per-chat 45009 of ``transfer`` (the daily limit) leaves the chat pending and the
  job retries after midnight (Asia/Shanghai).
* **Idempotent**: one row per (offboarding, chat), written before any transfer; every run lists again
  first. A group no longer listed under the leaver is checked with ``groupchat/get``: owned by the
  successor (or anyone else) it counts as done and is not transferred again, so a repeated trigger, a
  retried job or a crash after the call never moves a group twice. A group WeCom will not show (60011:
  its owner is outside the app's scope) becomes a manual action for the general office; the rest
  proceed. The call runs as an at-most-once step of the ``customer_groups.handover`` job; an unknown
  outcome (also a ``failed_chat_list`` entry that names no chat or no errcode) is settled by the next
  attempt's listing. One worker at a time per leaver (a compare-and-set claim on the leaver's first
  ``customer_group_scan`` row, so two offboardings of one person never move the same group twice),
  renewed during long reads and checked, with the offboarding's state, right before each transfer and
  each manual action. ``offboarding.cancel`` is refused (409 ``executing``) while the claim is held and
  (409 ``executed``) once a group was transferred by us, failed or handed to a person; otherwise it
  takes the claim for its transaction, and a run that claims later stops at its first check.
  A manual action with nobody to assign it to (no general office, approvers or alert recipients)
  raises an alert.
* **Switches**: listing is a read and happens in every mode; a transfer (and the manual actions that
  follow from execution) only in ``enforce`` with the kill switch off, read right before each call.
  In observe and dry run the rows stay pending and the offboarding open.
* **Membership as an ordinary member** cannot be found without reading every customer group of the
  company (WeCom lists groups by owner only), and no API removes anyone from a customer group. So it is
  opt-in (``CUSTOMER_GROUP_MEMBER_SCAN=true``): once per offboarding, ``groupchat/list`` over every owner
  of the mirror (100 a call, so the 81017 scope limit does not apply) and one ``groupchat/get`` per group;
  each group holding the leaver becomes a manual action for its owner (method ``member``). Off by
  default: its cost grows with the company's groups, per leaver. (WeCom may remove a deleted member
  itself, §14.8 [unconfirmed].)

An offboarding is not ``done`` while its listing is pending or any row is pending or waiting, and is
``partial`` when any row failed or became manual, or the listing failed (:func:`progress`, read by
``offboarding.settle``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import ACTIVE, LEFT, fold
from wecom_plugin.errors import RateLimitedError, RetryableError
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.customer_groups import CustomerGroupHandover, CustomerGroupScan
from wecom_plugin.models.directory import Department, Person
from wecom_plugin.models.groups import ManualAction, Offboarding
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import audit
from wecom_plugin.wecom import errors as codes
from wecom_plugin.wecom.api import externalcontact
from wecom_plugin.wecom.budget import GROUPCHAT_TRANSFER_DAY, Ask, handover_key, read_asks
from wecom_plugin.wecom.errors import WeComApiError, WeComConfigError, WeComError

log = logging.getLogger("wecom_plugin.customer_groups")

HAND = CustomerGroupHandover.__table__
SCAN = CustomerGroupScan.__table__
OFF = Offboarding.__table__
PERSON = Person.__table__
DEPT = Department.__table__
MANUAL = ManualAction.__table__
JOB = Job.__table__

ACTOR = "system:customer_groups"
JOB_NAME = "customer_groups.handover"
LIST = "externalcontact/groupchat/list"
GET = "externalcontact/groupchat/get"
OPEN_ROW_STATES = ("pending", "waiting")
PROBLEM_ROW_STATES = ("failed", "manual")
#: Per-chat errcodes of ``onjob_transfer`` that ``groupchat/transfer`` may do once the owner is deleted:
#: 40058 (WeCom: the owner resigned) and 45009 (moved twice in 90 days; transfer has no such limit).
RETRY_ON_DELETION = (codes.INVALID_PARAMETER, codes.API_FREQ_OUT_OF_LIMIT)
#: Top-level errcodes that mean WeCom will not give groups to this successor.
SUCCESSOR_REFUSED = (codes.INVALID_USERID, codes.NO_PRIVILEGE)
LEASE_SECONDS = 300
#: Renew the claim during long reads (listing, checks, the member scan) at most this often.
RENEW_EVERY = LEASE_SECONDS / 5
REQUEUE_AFTER = timedelta(minutes=2)
#: Open rows under a failed listing are retried this rarely (the sweep; normally they became manual).
FAILED_LISTING_RETRY = timedelta(hours=1)
MANUAL_KIND = "customer_group_transfer"
MEMBER_KIND = "customer_group_member"
Step = Callable[[str, Callable[[], Any]], Any]


class HandoverBusy(RateLimitedError):
    """Another worker is handing over this offboarding's groups; nothing was sent."""


class _Cancelled(Exception):
    """The offboarding was cancelled during the run: nothing more is sent."""


class HandoverOutcomeUnknown(RetryableError):
    """A transfer may or may not have reached WeCom; the next attempt lists the groups again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=30.0)


# --- planning (called by offboarding.plan) ------------------------------------------------------------
def schedule(session: Session, off: Any) -> bool:
    """Queue the handover of the customer groups of offboarding ``off`` (a row). Idempotent; joins the
    caller's transaction. Returns False when the handover is off or the offboarding is not live."""
    settings = _current_settings()
    if settings is not None and settings.customer_group_handover == "off":
        return False
    if off is None or off.state in ("cancelled", "duplicate"):
        return False
    now = utcnow()
    stmt = insert_for(session, SCAN).values(
        offboarding_id=off.id, userid=off.userid, state="pending", created_at=now, updated_at=now
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=["offboarding_id"]))
    session.execute(  # re-planned (a new trigger): list again
        sa.update(SCAN)
        .where(SCAN.c.offboarding_id == off.id, SCAN.c.state.in_(("listed", "failed", "off")))
        .values(state="pending", error=None, updated_at=now)
    )
    _enqueue(session, off.id)
    return True


def _current_settings() -> Any | None:
    from flask import current_app, has_app_context

    if not has_app_context():
        return None
    return current_app.extensions.get("wecom_settings")


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _enqueue(session: Session, offboarding_id: int, *, unless_running: bool = False) -> bool:
    """Queue ``customer_groups.handover`` unless one is waiting (or, with ``unless_running``, running)."""
    from wecom_plugin.runtime.queue import enqueue

    states = (ClaimState.READY, ClaimState.RUNNING) if unless_running else (ClaimState.READY,)
    query = (
        sa.select(JOB.c.id)
        .where(
            JOB.c.name == JOB_NAME,
            JOB.c.state.in_(states),
            JOB.c.dedupe_key.like(f"{JOB_NAME}:{offboarding_id}:%"),
        )
        .limit(1)
    )
    if _pg(session):
        query = query.with_for_update()
    if session.execute(query).first() is not None:
        return False
    enqueue(JOB_NAME, {"offboarding_id": offboarding_id},
            dedupe_key=f"{JOB_NAME}:{offboarding_id}:{secrets.token_hex(6)}", session=session)  # fmt: skip
    return True


# --- progress and views (called by offboarding.settle / view) -------------------------------------------
def progress(session: Session | sa.Connection, offboarding_id: int) -> str | None:
    """Where the handover stands: None (none for this offboarding), ``pending`` (not listed yet, or
    nothing moved yet), ``running`` (some rows final, some pending or waiting), ``partial`` (all final,
    some failed or manual, or the listing failed), ``done``."""
    scan = session.execute(sa.select(SCAN.c.state).where(SCAN.c.offboarding_id == offboarding_id)).first()
    if scan is None or scan.state in ("off", "cancelled"):
        return None
    counts = _counts(session, offboarding_id)
    if scan.state == "pending":
        return "running" if any(counts.get(s) for s in ("done", *PROBLEM_ROW_STATES)) else "pending"
    open_rows = sum(counts.get(s, 0) for s in OPEN_ROW_STATES)
    if open_rows:
        return "running" if sum(counts.values()) > open_rows else "pending"
    if scan.state == "failed" or any(counts.get(s) for s in PROBLEM_ROW_STATES):
        return "partial"
    return "done"


def _counts(session: Session | sa.Connection, offboarding_id: int) -> dict[str, int]:
    return dict(
        session.execute(
            sa.select(HAND.c.state, sa.func.count())
            .where(HAND.c.offboarding_id == offboarding_id)
            .group_by(HAND.c.state)
        ).all()
    )


def view(session: Session | sa.Connection, offboarding_id: int) -> dict[str, Any] | None:
    """The handover for status views: the listing, counts and one entry per customer group."""
    scan = session.execute(sa.select(SCAN).where(SCAN.c.offboarding_id == offboarding_id)).first()
    if scan is None:
        return None
    rows = session.execute(sa.select(HAND).where(HAND.c.offboarding_id == offboarding_id).order_by(HAND.c.id)).all()

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return {
        "state": progress(session, offboarding_id), "listing": scan.state, "error": scan.error,
        "listed_at": iso(scan.listed_at), "counts": counts,
        "chats": [
            {"chat_id": r.chat_id, "name": r.name, "method": r.method, "state": r.state, "successor": r.successor,
             "errcode": r.errcode, "errmsg": r.errmsg, "attempts": r.attempts, "manual_action_id": r.manual_action_id,
             "done_at": iso(r.done_at)}
            for r in rows
        ],
    }  # fmt: skip


# --- the successor ------------------------------------------------------------------------------------
def successor_for(conn: Session | sa.Connection, person: Any, leaver_folded: str) -> tuple[str | None, str]:
    """Who receives the leaver's groups, and why: the first active direct leader, else the leader of
    the main department or the nearest parent department (active, not the leaver, not leaving: no
    scheduled, pending or running offboarding, none finished within OFFBOARDED_DAYS without a rehire)."""
    if person is None:
        return None, "not in the directory mirror"
    leaving = _leaving(conn)
    for userid in person.direct_leaders or ():
        found = _active(conn, userid, leaver_folded, leaving)
        if found:
            return found, "direct_leader"
    dept = person.main_department or next(iter(person.departments or ()), None)
    seen: set[int] = set()
    while dept and dept not in seen and len(seen) < 32:
        seen.add(dept)
        row = conn.execute(sa.select(DEPT.c.leaders, DEPT.c.parent_id).where(DEPT.c.id == dept)).first()
        if row is None:
            break
        for userid in row.leaders or ():
            found = _active(conn, userid, leaver_folded, leaving)
            if found:
                return found, "department_leader"
        dept = row.parent_id
    return None, "no active leader in the directory"


def _leaving(conn: Session | sa.Connection) -> set[str]:
    """Folded userids who are leaving or just left (as ``chat_changes`` excludes new chat owners), plus
    any with a scheduled offboarding (an HR leaver still active in WeCom)."""
    from wecom_plugin.services.membership_check import OFFBOARDED_DAYS, offboarded

    out = offboarded(conn, recent_days=OFFBOARDED_DAYS)
    out.update(conn.execute(sa.select(OFF.c.userid_folded).where(OFF.c.state == "scheduled")).scalars())
    return out


def _active(conn: Session | sa.Connection, userid: str, leaver_folded: str, leaving: set[str]) -> str | None:
    folded = fold(userid or "")
    if not folded or folded == leaver_folded or folded in leaving:
        return None
    row = conn.execute(sa.select(PERSON.c.userid, PERSON.c.status).where(PERSON.c.userid_folded == folded)).first()
    return row.userid if row is not None and row.status == ACTIVE else None


def _office(settings: Any) -> str | None:
    for ids in (settings.general_office_userids, settings.group_approvers, settings.alert_wecom_userids):
        if ids:
            return ids[0]
    return None


# --- the handover -------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One handover run of one offboarding."""

    off: Any
    settings: Any
    engine: sa.Engine
    fence: str
    lock_id: int  # the leaver's claim row (see _claim)
    renewed: float = field(default_factory=time.monotonic)
    deleted: bool = False
    successor: str | None = None
    successor_how: str = ""
    transferred: int = 0
    failed: int = 0
    manual: int = 0
    unknown: bool = False
    rate_limited: Exception | None = None
    notes: list[str] = field(default_factory=list)
    unreadable: list[tuple[Any, WeComError]] = field(default_factory=list)


def handover(app: Any, offboarding_id: int, guard: Callable[[], None] | None = None, *, step: Step | None = None):
    """List the leaver's customer groups, record them, and (in enforce mode) hand them over.

    ``step(target, action)``: runs each transfer call (a job's at-most-once ``run_step``); it answers
    ``action()``'s value, or None when the outcome is unknown. Without it the call is made directly.

    Raises:
        HandoverBusy: another worker holds this offboarding (nothing sent).
        BudgetExhausted / WeComRateLimited: no transfer allowance now; the rest stays pending.
        HandoverOutcomeUnknown: a call's outcome is unknown; the next attempt lists again first.
    """
    settings = app.extensions["wecom_settings"]
    engine = _engine(app)
    with Session(engine) as session, session.begin():
        off = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).first()
        scan = session.execute(sa.select(SCAN).where(SCAN.c.offboarding_id == offboarding_id)).first()
        if off is None or scan is None:
            return {"offboarding_id": offboarding_id, "state": "nothing"}
        if settings.customer_group_handover == "off":
            _set_scan(session, offboarding_id, state="off")
            _settle(session, offboarding_id)
            return {"offboarding_id": offboarding_id, "state": "off"}
        if off.state == "cancelled":
            n = _cancel_rows(session, off)
            _set_scan(session, offboarding_id, state="cancelled")
            return {"offboarding_id": offboarding_id, "state": "cancelled", "cancelled": n}
    claimed = _claim(engine, off)
    if claimed is None:
        raise HandoverBusy(f"offboarding #{offboarding_id}: another worker is handing over {off.userid}'s groups", 2.0)
    fence, lock_id = claimed
    try:
        run = _Run(off, settings, engine, fence, lock_id)
        return _handover(app, run, guard, step)
    except _Cancelled:
        with Session(engine) as session, session.begin():
            n = _cancel_rows(session, off)
            _set_scan(session, offboarding_id, state="cancelled")
        return {"offboarding_id": offboarding_id, "state": "cancelled", "cancelled": n}
    finally:
        _release(engine, lock_id, fence)


def _engine(app: Any) -> sa.Engine:
    from wecom_plugin.extensions import db

    with app.app_context():
        return db.engine


def _handover(app: Any, run: _Run, guard: Callable[[], None] | None, step: Step | None) -> dict[str, Any]:
    from wecom_plugin.services.wecom import client_for

    off = run.off
    result: dict[str, Any] = {"offboarding_id": off.id, "userid": off.userid}
    with run.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        person = conn.execute(sa.select(PERSON).where(PERSON.c.userid_folded == off.userid_folded)).first()
        run.deleted = person is not None and person.status == LEFT
        run.successor, run.successor_how = successor_for(conn, person, off.userid_folded)
    client = client_for(app, guard=guard)
    try:
        try:
            listed = _list_owned(client, run)
        except (WeComApiError, WeComConfigError) as exc:
            manual = _listing_failed(client, run, exc)
            return {**result, "state": "listing_failed", "errcode": exc.errcode, "manual": manual}
        members: dict[str, tuple[str, str]] | None = None
        scanned = _scan_state(run.engine, off.id)
        if run.settings.customer_group_member_scan and scanned is not None and scanned.members_scanned_at is None:
            members = _scan_members(client, run, set(listed))
        verify = _record_listing(run, listed, members)
        _verify_moved(client, run, verify)
        result.update(listed=len(listed), successor=run.successor, successor_how=run.successor_how,
                      method="transfer" if run.deleted else run.settings.customer_group_handover)  # fmt: skip
        switches = _switches(run)
        if not switches.may_change_chats:
            with Session(run.engine) as session, session.begin():
                _settle(session, off.id)
            held = "kill_switch" if switches.kill_switch else f"mode {switches.mode}"
            return {**result, "state": "held", "reason": held}
        _execute(client, run, step)
    finally:
        client.close()
    with Session(run.engine) as session, session.begin():
        _resolve_manual_actions(session, off.id)
        state = _settle(session, off.id)
    result.update(transferred=run.transferred, failed=run.failed, manual=run.manual, offboarding_state=state)
    if run.notes:
        result["notes"] = run.notes[-20:]
    if run.rate_limited is not None:
        raise run.rate_limited
    if run.unknown:
        raise HandoverOutcomeUnknown(f"offboarding #{off.id}: a transfer's outcome is unknown; listing again")
    return {**result, "state": "done"}


def _switches(run: _Run) -> Any:
    from wecom_plugin.services.governance_switches import effective

    with run.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        return effective(conn, run.settings.governance_mode)


# --- listing ------------------------------------------------------------------------------------------
def _pages(client: Any, run: _Run, **options: Any) -> dict[str, int]:
    """Every ``{chat_id: status}`` of ``groupchat/list`` with ``options``, one read budget per page."""
    out: dict[str, int] = {}
    client.spend(read_asks(LIST))
    for page in externalcontact.groupchat_list_pages(client, **options):
        for row in page.rows:
            if row.get("chat_id"):
                out[str(row["chat_id"])] = _int(row.get("status"))
        if page.next_cursor:
            _renew(run, force=False)
            client.spend(read_asks(LIST))
    return out


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _list_owned(client: Any, run: _Run) -> dict[str, int]:
    """The leaver's groups, ``{chat_id: status}`` (status 0 active owner, 1 resigned, 2/3 inheriting/done:
    a status of the group's last inheritance, not of this owner, so 2/3 are checked like unlisted ones)."""
    userid = run.off.userid
    try:
        return _pages(client, run, status_filter=0, owner_userids=[userid])
    except WeComApiError as exc:
        if not (run.deleted and exc.errcode == codes.INVALID_USERID):
            raise
    # §14.8 (observed): 40003 for a resigned owner in the filter, while status_filter=1 lists their groups.
    out = {}
    for chat_id, status in _pages(client, run, status_filter=1).items():
        _renew(run, force=False)
        try:
            chat = _get(client, chat_id)
        except (WeComApiError, WeComConfigError) as exc:  # another resigned owner's group we may not read
            log.info("customer group %s: %s", chat_id, exc)
            continue
        if chat is not None and fold(str(chat.get("owner") or "")) == fold(userid):
            out[chat_id] = status
    return out


def _get(client: Any, chat_id: str, *, need_name: bool = False) -> dict[str, Any] | None:
    """``groupchat/get``; None when the group no longer exists (40050)."""
    client.spend(read_asks(GET))
    try:
        return externalcontact.groupchat_get(client, chat_id, need_name=need_name)
    except WeComApiError as exc:
        if exc.errcode == codes.CHATID_NOT_FOUND:
            return None
        raise


def _scan_members(client: Any, run: _Run, owned: set[str]) -> dict[str, tuple[str, str]]:
    """Groups (not the leaver's own) holding the leaver as a member: ``{chat_id: (owner, name)}``. A batch
    of owners WeCom refuses (or one unreadable group) is skipped and logged; the rest is scanned."""
    leaver_folded = run.off.userid_folded
    with run.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        owners = [
            u for (u,) in conn.execute(
                sa.select(PERSON.c.userid).where(PERSON.c.status != LEFT, PERSON.c.userid_folded != leaver_folded)
                .order_by(PERSON.c.id)
            )
        ]  # fmt: skip
    chats: dict[str, int] = {}
    for i in range(0, len(owners), externalcontact.OWNER_FILTER_MAX):
        _renew(run, force=False)
        batch = owners[i : i + externalcontact.OWNER_FILTER_MAX]
        try:
            chats.update(_pages(client, run, status_filter=0, owner_userids=batch))
        except (WeComApiError, WeComConfigError) as exc:  # one refused batch does not stop the scan
            log.warning("customer groups of %d owners (%s...): %s", len(batch), batch[0], exc)
            run.notes.append(f"member scan: owners {batch[0]}.. skipped ({exc.errcode})")
    found: dict[str, tuple[str, str]] = {}
    for chat_id in chats:
        if chat_id in owned:
            continue
        _renew(run, force=False)
        try:
            chat = _get(client, chat_id)
        except (WeComApiError, WeComConfigError) as exc:  # one unreadable group does not stop the scan
            log.warning("customer group %s: %s", chat_id, exc)
            continue
        if chat is None:
            continue
        for m in chat.get("member_list") or ():
            if int(m.get("type") or 0) == 1 and fold(str(m.get("userid") or "")) == leaver_folded:
                found[chat_id] = (str(chat.get("owner") or ""), str(chat.get("name") or ""))
                break
    return found


def _listing_failed(client: Any, run: _Run, exc: WeComError) -> int:
    """The listing was refused: the scan ``failed`` with one alert; groups recorded by an earlier run and
    still open cannot be checked or moved, so (when changes are allowed) they become one manual action
    for the general office and the offboarding can settle (``partial``). Returns how many became manual."""
    from wecom_plugin.services.alerts import raise_alert

    off = run.off
    with Session(run.engine) as session, session.begin():
        _set_scan(session, off.id, state="failed", error=f"{exc.errcode}: {exc.errmsg}"[:500])
        audit.record(ACTOR, "customer_group.list_failed", target=f"offboarding:{off.id}", outcome="failure",
                     reason=f"groupchat/list: {exc.errcode}", detail={"userid": off.userid, "errcode": exc.errcode},
                     session=session)  # fmt: skip
        forbidden = exc.errcode == codes.API_FORBIDDEN
        raise_alert(
            f"customer_groups.list_failed:{exc.errcode}",
            severity="error",
            title_zh=f"无法读取离职人员的客户群（{exc.errcode}）"
            + ("：请确认本应用已加入「客户联系 → 可调用接口的应用」" if forbidden else "：离职客户群需人工处理"),
            title_en=f"Cannot list a leaver's customer groups ({exc.errcode})"
            + (
                ": add this app to 客户联系 → 可调用接口的应用 in the admin console"
                if forbidden
                else ": handle them by hand"
            ),
            detail={"offboarding_id": off.id, "userid": off.userid, "errcode": exc.errcode, "errmsg": exc.errmsg[:300]},
            session=session,
        )
        open_rows = session.execute(
            sa.select(HAND)
            .where(HAND.c.offboarding_id == off.id, HAND.c.state.in_(OPEN_ROW_STATES), HAND.c.method != "member")
            .order_by(HAND.c.id)
        ).all()
    manual = 0
    if open_rows and _switches(run).may_change_chats:
        _no_successor(
            client, run, open_rows, f"无法读取其客户群列表（{exc.errcode}：{exc.errmsg[:100]}）",
            f"their customer groups cannot be listed ({exc.errcode}: {exc.errmsg[:100]})",
            errcode=exc.errcode, errmsg=exc.errmsg,
        )  # fmt: skip
        manual = len(open_rows)
    with Session(run.engine) as session, session.begin():
        _settle(session, off.id)
    return manual


def _record_listing(run: _Run, listed: dict[str, int], members: dict[str, tuple[str, str]] | None) -> list[Any]:
    """Write one row per listed group (new ones pending or waiting), bring open rows up to date (method,
    successor), and return the open rows to check with ``groupchat/get`` (moved?): those no longer listed
    under the leaver, and those listed with status 2/3 (the group's last inheritance, which may have
    made the leaver its owner: not a sign that it left them)."""
    off, now = run.off, utcnow()
    wait = not run.deleted and run.settings.customer_group_handover != "onjob"
    method = "transfer" if run.deleted or wait else "onjob_transfer"
    with Session(run.engine) as session, session.begin():
        for chat_id in listed:
            values = dict(
                offboarding_id=off.id, chat_id=chat_id, name="", from_userid=off.userid, successor=run.successor,
                method=method, state="waiting" if wait else "pending", attempts=0, created_at=now, updated_at=now,
            )  # fmt: skip
            session.execute(
                insert_for(session, HAND)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["offboarding_id", "chat_id"])
            )
        rows = session.execute(sa.select(HAND).where(HAND.c.offboarding_id == off.id)).all()
        verify = []
        for r in rows:
            if r.method == "member":
                continue
            status = listed.get(r.chat_id)
            retry = (
                run.deleted and r.state == "failed" and r.method == "onjob_transfer"
                and r.errcode in RETRY_ON_DELETION
            )  # fmt: skip
            if r.state not in OPEN_ROW_STATES and not retry:
                continue
            if status is None:
                verify.append(r)
                continue
            if status in (2, 3):
                verify.append(r)  # and brought up to date below: still the leaver's unless get says otherwise
            if run.deleted:
                new = {"method": "transfer", "state": "pending"}
            elif r.state == "waiting" and r.errcode == codes.INVALID_PARAMETER:
                new = {}  # WeCom said the owner resigned: wait for the deletion whatever the setting
            elif wait:
                new = {"method": "transfer", "state": "waiting"}
            else:
                new = {"method": "onjob_transfer", "state": "pending"}
            if run.successor and r.successor != run.successor:
                new["successor"] = run.successor
            if any(getattr(r, k) != v for k, v in new.items()):
                session.execute(sa.update(HAND).where(HAND.c.id == r.id).values(**new, updated_at=now))
        if members:
            for chat_id, (owner, name) in members.items():
                session.execute(
                    insert_for(session, HAND).values(
                        offboarding_id=off.id, chat_id=chat_id, name=name[:255], from_userid=off.userid,
                        successor=owner or None, method="member", state="pending", attempts=0,
                        created_at=now, updated_at=now,
                    ).on_conflict_do_nothing(index_elements=["offboarding_id", "chat_id"])
                )  # fmt: skip
        _reopen_if_work(session, off)
        scan_values: dict[str, Any] = {"state": "listed", "error": None, "listed_at": now}
        if members is not None:
            scan_values["members_scanned_at"] = now
        _set_scan(session, off.id, **scan_values)
    return verify


def _reopen_if_work(session: Session, off: Any) -> None:
    """A finished offboarding (done, partial) with groups to hand over again (a deletion after an
    on-the-job failure, a new trigger) is open again until they are final, so settling sees them."""
    open_rows = session.execute(
        sa.select(sa.func.count()).where(HAND.c.offboarding_id == off.id, HAND.c.state.in_(OPEN_ROW_STATES))
    ).scalar_one()
    if not open_rows:
        return
    reopened = session.execute(
        sa.update(OFF)
        .where(OFF.c.id == off.id, OFF.c.state.in_(("done", "partial", "failed")))
        .values(state="running", finished_at=None)
    ).rowcount
    if reopened:
        audit.record(ACTOR, "offboarding.reopened", target=f"offboarding:{off.id}", outcome="success",
                     reason="customer groups to hand over", detail={"userid": off.userid, "open": open_rows},
                     session=session)  # fmt: skip


def _verify_moved(client: Any, run: _Run, rows: list[Any]) -> None:
    """Open rows not (or not plainly) listed under the leaver: read who owns the group now. A group WeCom
    will not show (60011: its owner is outside the app's scope, 40003...) is kept out of this run's
    transfers and, when changes are allowed, becomes a manual action (``run.unreadable``)."""
    for r in rows:
        _renew(run, force=False)
        try:
            chat = _get(client, r.chat_id)
        except (WeComApiError, WeComConfigError) as exc:
            log.warning("customer group %s of offboarding %s: %s", r.chat_id, run.off.id, exc)
            run.unreadable.append((r, exc))
            continue
        with Session(run.engine) as session, session.begin():
            if chat is None:
                _finish(session, r, "done", None, "the group no longer exists (dismissed)")
                continue
            owner = str(chat.get("owner") or "")
            if fold(owner) == run.off.userid_folded:
                continue  # still theirs (a listing WeCom had not caught up with): handled next run
            if r.successor and fold(owner) == fold(r.successor):
                note = "already owned by the successor"
            else:
                note = f"now owned by {owner} (handed over outside this offboarding)"
            _finish(session, r, "done", None, note)
            audit.record(ACTOR, "customer_group.already_moved", target=f"customer_group:{r.chat_id}", outcome="noop",
                         reason=note, detail={"offboarding_id": run.off.id, "from": run.off.userid, "owner": owner},
                         session=session)  # fmt: skip


# --- execution ----------------------------------------------------------------------------------------
def _execute(client: Any, run: _Run, step: Step | None) -> None:
    off = run.off
    with run.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        rows = conn.execute(
            sa.select(HAND).where(HAND.c.offboarding_id == off.id, HAND.c.state == "pending").order_by(HAND.c.id)
        ).all()
    unreadable = {r.id for r, _ in run.unreadable}
    members = [r for r in rows if r.method == "member"]
    transfers = [r for r in rows if r.method != "member" and r.id not in unreadable]
    if members:
        _member_actions(client, run, members)
    if run.unreadable:
        _unreadable_actions(client, run)
    _wait_overdue(client, run)
    if not transfers:
        return
    if run.successor is None:
        _no_successor(client, run, transfers, f"没有可接收的负责人（{run.successor_how}）",
                      f"no one to receive them ({run.successor_how})")  # fmt: skip
        return
    by_method: dict[str, list[Any]] = {}
    for r in transfers:
        by_method.setdefault(r.method, []).append(r)
    for method, group in sorted(by_method.items()):
        for i in range(0, len(group), externalcontact.TRANSFER_MAX_CHATS):
            chunk = group[i : i + externalcontact.TRANSFER_MAX_CHATS]
            if not _switches(run).may_change_chats:  # a kill switch thrown mid-run stops the rest
                run.notes.append("held: the switches changed during the run")
                return
            _renew(run)  # the claim is still ours and the offboarding not cancelled, right before the call
            _transfer_chunk(client, run, method, chunk, step)
            if run.rate_limited is not None:
                return


def _unreadable_actions(client: Any, run: _Run) -> None:
    """Groups no longer listed under the leaver that WeCom will not show: a person checks who owns them."""
    rows = [r for r, _ in run.unreadable]
    exc = run.unreadable[0][1]
    codes_seen = "/".join(sorted({str(e.errcode) for _, e in run.unreadable}))
    _no_successor(
        client, run, rows, f"无法读取这些客户群现在的群主（{codes_seen}：群主可能不在本应用的可见范围内）",
        f"their current owner cannot be read ({codes_seen}: the owner may be outside the app's scope)",
        errcode=exc.errcode, errmsg=exc.errmsg,
    )  # fmt: skip
    run.unreadable = []


def _wait_overdue(client: Any, run: _Run) -> None:
    """Groups waiting for the leaver's deletion longer than CUSTOMER_GROUP_WAIT_DAYS: ONE manual action
    (for the successor, else the general office) says they still wait; the rows keep waiting and the
    action is resolved once they are all handed over."""
    days = int(getattr(run.settings, "customer_group_wait_days", 7) or 7)
    with run.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        rows = conn.execute(
            sa.select(HAND).where(
                HAND.c.offboarding_id == run.off.id, HAND.c.state == "waiting", HAND.c.method != "member",
                HAND.c.manual_action_id.is_(None), HAND.c.created_at < utcnow() - timedelta(days=days),
            ).order_by(HAND.c.id)
        ).all()  # fmt: skip
    if not rows:
        return
    off = run.off
    names = _names(client, rows)
    more_zh, more_en = (" 等", " and more") if len(rows) > 10 else ("", "")
    listing = "、".join(f"「{names.get(r.chat_id) or r.chat_id}」" for r in rows[:10]) + more_zh
    listing_en = ", ".join(repr(names.get(r.chat_id) or r.chat_id) for r in rows[:10]) + more_en
    assignee = run.successor or _office(run.settings)
    with Session(run.engine) as session, session.begin():
        action_id = _open_action(
            session, run, kind=MANUAL_KIND, assignee=assignee, chat_ref=rows[0].chat_id,
            zh=f"离职人员 {off.userid} 的 {len(rows)} 个客户群已等待 {days} 天仍未转交：系统在该成员从通讯录删除后才以"
            f"离职继承转给 {run.successor or '接收人'}。请确认是否应删除该成员，或在管理后台「客户联系 → 在职继承」中"
            f"手动分配：{listing}",
            en=f"{len(rows)} customer group(s) of the leaver {off.userid} have waited {days} days: they are handed "
            f"over to {run.successor or 'a successor'} once the member is deleted from the directory. Check whether "
            f"the member should be deleted, or assign them in the admin console (客户联系 → 在职继承): {listing_en}",
            detail={"chat_ids": [r.chat_id for r in rows], "waiting_days": days},
        )  # fmt: skip
        session.execute(sa.update(HAND).where(HAND.c.id.in_([r.id for r in rows])).values(manual_action_id=action_id))
        audit.record(ACTOR, "customer_group.wait_overdue", target=f"offboarding:{off.id}", outcome="failure",
                     reason=f"waiting for the deletion for more than {days} days",
                     detail={"userid": off.userid, "chat_ids": [r.chat_id for r in rows],
                             "manual_action_id": action_id, "assignee": assignee}, session=session)  # fmt: skip


def _transfer_chunk(client: Any, run: _Run, method: str, chunk: list[Any], step: Step | None) -> None:
    off, successor = run.off, run.successor
    assert successor is not None  # noqa: S101 - checked by the caller
    ids = [r.chat_id for r in chunk]
    client.spend([Ask(GROUPCHAT_TRANSFER_DAY.name, handover_key(off.userid, successor), len(ids))])

    def call() -> dict[str, Any]:
        fn = externalcontact.transfer if method == "transfer" else externalcontact.onjob_transfer
        try:
            answer = fn(client, ids, successor)
        except WeComError as exc:
            if isinstance(exc, WeComApiError) or exc.errcode in SUCCESSOR_REFUSED:
                return {"ok": False, "errcode": exc.errcode, "errmsg": exc.errmsg[:300]}
            raise
        return {
            "ok": True,
            "transferred": list(answer.transferred),
            "failed": [{"chat_id": f.chat_id, "errcode": f.errcode, "errmsg": f.errmsg[:300]} for f in answer.failed],
            "unknown": list(answer.unknown),
        }

    target = f"f{run.fence}:{method}:{fold(successor)}:{_digest(ids)}"
    value = step(target, call) if step is not None else call()
    now = utcnow()
    chunk_ids = [r.id for r in chunk]
    if not isinstance(value, dict):  # unknown: the next attempt lists again and settles it
        run.unknown = True
        with Session(run.engine) as session, session.begin():
            session.execute(
                sa.update(HAND).where(HAND.c.id.in_(chunk_ids)).values(
                    attempts=HAND.c.attempts + 1, errmsg="outcome unknown: checked again on the next attempt",
                    updated_at=now,
                )
            )  # fmt: skip
        return
    if not value.get("ok"):
        errcode, errmsg = _int(value.get("errcode")), str(value.get("errmsg") or "")
        with Session(run.engine) as session, session.begin():
            session.execute(sa.update(HAND).where(HAND.c.id.in_(chunk_ids)).values(attempts=HAND.c.attempts + 1))
            audit.record(ACTOR, f"customer_group.{method}_refused", target=f"offboarding:{off.id}", outcome="failure",
                         reason=f"{errcode}: {errmsg}"[:500], detail={"from": off.userid, "to": successor,
                         "chat_ids": ids, "errcode": errcode}, session=session)  # fmt: skip
        if errcode in SUCCESSOR_REFUSED:  # a person must pick someone (or give them 客户联系 rights)
            _no_successor(
                client, run, chunk,
                f"接收人 {successor} 无法接收客户群（{errcode}：需开通客户联系、已激活并在应用可见范围内）",
                f"{successor} cannot receive customer groups ({errcode}: needs 客户联系 rights, an activated "
                "account, and to be in the app's scope)",
                errcode=errcode, errmsg=errmsg,
            )  # fmt: skip
        else:
            _fail_chats(client, run, method, [(r, errcode, errmsg) for r in chunk])
        return
    by_id = {r.chat_id: r for r in chunk}
    with Session(run.engine) as session, session.begin():
        session.execute(sa.update(HAND).where(HAND.c.id.in_(chunk_ids)).values(attempts=HAND.c.attempts + 1))
        for chat_id in value.get("transferred") or ():
            r = by_id.get(chat_id)
            if r is None:
                continue
            _finish(session, r, "done", None, None, successor=successor, method=method)
            run.transferred += 1
            audit.record(ACTOR, f"customer_group.{method}", target=f"customer_group:{chat_id}",
                         reason=f"offboarding #{off.id}", detail={"offboarding_id": off.id, "from": off.userid,
                         "to": successor, "how": run.successor_how}, session=session)  # fmt: skip
        unknown = [by_id[c] for c in value.get("unknown") or () if c in by_id]
        if unknown:  # WeCom's answer does not say: the next attempt reads them again (groupchat/get)
            run.unknown = True
            session.execute(
                sa.update(HAND).where(HAND.c.id.in_([r.id for r in unknown]))
                .values(errmsg="outcome unknown: checked again on the next attempt", updated_at=now)
            )  # fmt: skip
    failures = []
    for item in value.get("failed") or ():
        r = by_id.get(str(item.get("chat_id")))
        if r is not None:
            failures.append((r, _int(item.get("errcode")), str(item.get("errmsg") or "")))
    if failures:
        _fail_chats(client, run, method, failures)


def _digest(ids: Iterable[str]) -> str:
    import hashlib

    return hashlib.sha256(",".join(sorted(ids)).encode()).hexdigest()[:16]


def _fail_chats(client: Any, run: _Run, method: str, failures: list[tuple[Any, int, str]]) -> None:
    """Per-chat refusals: 40058 of onjob_transfer waits for the deletion; 45009 of transfer (the daily
    limit) stays pending for tomorrow; the rest fail with one manual action for the successor."""
    off = run.off
    manual = [
        (r, code, msg) for r, code, msg in failures
        if not (method == "onjob_transfer" and code == codes.INVALID_PARAMETER)
        and not (method == "transfer" and code == codes.API_FREQ_OUT_OF_LIMIT)
    ]  # fmt: skip
    names = _names(client, [r for r, _, _ in manual]) if manual else {}  # read before the transaction
    now = utcnow()
    with Session(run.engine) as session, session.begin():
        for r, errcode, errmsg in failures:
            audit.record(ACTOR, f"customer_group.{method}_failed", target=f"customer_group:{r.chat_id}",
                         outcome="failure", reason=f"{errcode}: {errmsg}"[:500],
                         detail={"offboarding_id": off.id, "from": off.userid, "to": run.successor,
                                 "errcode": errcode}, session=session)  # fmt: skip
            if method == "onjob_transfer" and errcode == codes.INVALID_PARAMETER:
                session.execute(
                    sa.update(HAND).where(HAND.c.id == r.id)
                    .values(state="waiting", method="transfer", errcode=errcode, errmsg=errmsg[:500], updated_at=now)
                )  # fmt: skip
                run.notes.append(f"{r.chat_id}: WeCom says the owner resigned; transferred once the deletion arrives")
            elif method == "transfer" and errcode == codes.API_FREQ_OUT_OF_LIMIT:
                session.execute(
                    sa.update(HAND).where(HAND.c.id == r.id).values(errcode=errcode, errmsg=errmsg[:500],
                                                                     updated_at=now)
                )  # fmt: skip
                if run.rate_limited is None:
                    failed = externalcontact.FailedChat(r.chat_id, errcode, errmsg)
                    run.rate_limited = failed.error("externalcontact/groupchat/transfer")
        if not manual:
            return
        run.failed += len(manual)
        lines_zh = [f"「{names.get(r.chat_id) or r.chat_id}」（{code}：{msg}）" for r, code, msg in manual]
        lines_en = [f"{names.get(r.chat_id) or r.chat_id!r} ({code}: {msg})" for r, code, msg in manual]
        later = method == "onjob_transfer" and any(code in RETRY_ON_DELETION for _, code, _ in manual)
        hint_zh = "；该成员从通讯录删除后，系统会以离职继承再试一次" if later else ""
        hint_en = (
            "; retried as a resigned-owner transfer once the member is deleted from the directory" if later else ""
        )
        more_zh, more_en = (" 等", " and more") if len(manual) > 10 else ("", "")
        action_id = _open_action(
            session, run, kind=MANUAL_KIND, assignee=run.successor or _office(run.settings),
            chat_ref=manual[0][0].chat_id,
            zh=f"离职人员 {off.userid} 的 {len(manual)} 个客户群未能转给 {run.successor}：{'、'.join(lines_zh[:10])}"
            f"{more_zh}。请联系管理员在管理后台「客户联系 → 离职继承/在职继承」中手动分配{hint_zh}",
            en=f"{len(manual)} customer group(s) of the leaver {off.userid} could not be given to {run.successor}: "
            f"{', '.join(lines_en[:10])}{more_en}. Ask an administrator to assign them in the admin console "
            f"(客户联系 → 离职继承/在职继承){hint_en}",
            detail={"chat_ids": [r.chat_id for r, _, _ in manual], "errcodes": sorted({c for _, c, _ in manual})},
        )  # fmt: skip
        for r, errcode, errmsg in manual:
            session.execute(
                sa.update(HAND).where(HAND.c.id == r.id).values(
                    state="failed", errcode=errcode, errmsg=errmsg[:500], manual_action_id=action_id,
                    name=(names.get(r.chat_id) or r.name or "")[:255], updated_at=now,
                )
            )  # fmt: skip


def _no_successor(
    client: Any, run: _Run, rows: list[Any], why_zh: str, why_en: str, *, errcode: int | None = None,
    errmsg: str | None = None,
) -> None:  # fmt: skip
    """Nobody can receive the groups: one manual action for the general office; the rows ``manual``."""
    off = run.off
    names = _names(client, rows)
    more = " 等" if len(rows) > 10 else ""
    listing = "、".join(f"「{names.get(r.chat_id) or r.chat_id}」" for r in rows[:10]) + more
    listing_en = ", ".join(repr(names.get(r.chat_id) or r.chat_id) for r in rows[:10])
    with Session(run.engine) as session, session.begin():
        action_id = _open_action(
            session, run, kind=MANUAL_KIND, assignee=_office(run.settings), chat_ref=rows[0].chat_id,
            zh=f"离职人员 {off.userid} 的 {len(rows)} 个客户群无法自动转交：{why_zh}。请指定接收人，并在管理后台"
            f"「客户联系 → 离职继承/在职继承」中分配：{listing}",
            en=f"{len(rows)} customer group(s) of the leaver {off.userid} cannot be handed over automatically: "
            f"{why_en}. Choose who receives them and assign them in the admin console (客户联系 → 离职继承/在职继承): "
            f"{listing_en}",
            detail={"chat_ids": [r.chat_id for r in rows], "errcode": errcode},
        )  # fmt: skip
        now = utcnow()
        for r in rows:
            session.execute(
                sa.update(HAND).where(HAND.c.id == r.id).values(
                    state="manual", manual_action_id=action_id, errcode=errcode, errmsg=(errmsg or why_en)[:500],
                    name=(names.get(r.chat_id) or r.name or "")[:255], updated_at=now,
                )
            )  # fmt: skip
        audit.record(ACTOR, "customer_group.manual", target=f"offboarding:{off.id}", outcome="failure",
                     reason=why_en[:500], detail={"userid": off.userid, "chat_ids": [r.chat_id for r in rows],
                     "manual_action_id": action_id}, session=session)  # fmt: skip
    run.manual += len(rows)


def _member_actions(client: Any, run: _Run, rows: list[Any]) -> None:
    """The leaver is an ordinary member: no API removes them; the group's owner is asked to."""
    off = run.off
    with Session(run.engine) as session, session.begin():
        for r in rows:
            name = r.name or r.chat_id
            action_id = _open_action(
                session, run, kind=MEMBER_KIND, assignee=r.successor or _office(run.settings), chat_ref=r.chat_id,
                zh=f"请将离职人员 {off.userid} 移出您的客户群「{name}」（接口无法移除客户群成员）",
                en=f"Remove the leaver {off.userid} from your customer group {name!r} (no API can remove "
                "members of a customer group)",
                detail={"chat_id": r.chat_id},
            )  # fmt: skip
            session.execute(
                sa.update(HAND).where(HAND.c.id == r.id)
                .values(state="manual", manual_action_id=action_id, updated_at=utcnow())
            )  # fmt: skip
            audit.record(ACTOR, "customer_group.member_manual", target=f"customer_group:{r.chat_id}",
                         outcome="failure", reason="the leaver is a member; no API removes members",
                         detail={"offboarding_id": off.id, "userid": off.userid, "owner": r.successor},
                         session=session)  # fmt: skip
            run.manual += 1


def _open_action(
    session: Session, run: _Run, *, kind: str, assignee: str | None, chat_ref: str, zh: str, en: str,
    detail: dict[str, Any],
) -> int:  # fmt: skip
    from wecom_plugin.services.membership_notices import queue_manual_notice

    _check_ours(session, run)  # no action from a worker that lost its claim, nor for a cancelled offboarding
    action_id = session.execute(
        sa.insert(MANUAL).values(
            kind=kind, group_id=None, chat_ref=chat_ref[:64], userid=run.off.userid, assignee=assignee,
            offboarding_id=run.off.id, state="open", created_at=utcnow(),
            detail={"zh": zh[:1500], "en": en[:1500], **detail},
        ).returning(MANUAL.c.id)
    ).scalar_one()  # fmt: skip
    if assignee:
        queue_manual_notice(session, action_id)
    else:  # nobody configured to receive it: an alert, so someone is told
        from wecom_plugin.services.alerts import raise_alert

        raise_alert(
            f"customer_groups.no_assignee:{run.off.id}",
            severity="error",
            title_zh=f"客户群待办 #{action_id} 无人接收：请配置 GENERAL_OFFICE_USERIDS"
            "（或 GROUP_APPROVERS、ALERT_WECOM_USERIDS）",
            title_en=f"Customer-group manual action #{action_id} has no assignee: set GENERAL_OFFICE_USERIDS "
            "(or GROUP_APPROVERS, ALERT_WECOM_USERIDS)",
            detail={"manual_action_id": action_id, "offboarding_id": run.off.id, "userid": run.off.userid,
                    "kind": kind},
            session=session,
        )  # fmt: skip
    return action_id


def _names(client: Any, rows: list[Any]) -> dict[str, str]:
    """Group names for the people who must act (best effort: one ``groupchat/get`` each, at most 20)."""
    out: dict[str, str] = {}
    for r in rows[:20]:
        if r.name:
            out[r.chat_id] = r.name
            continue
        try:
            chat = _get(client, r.chat_id)
        except Exception as exc:  # noqa: BLE001 - a name is a courtesy
            log.info("customer group %s: name unavailable: %s", r.chat_id, exc)
            continue
        if chat and chat.get("name"):
            out[r.chat_id] = str(chat["name"])
    return out


def _resolve_manual_actions(session: Session, offboarding_id: int) -> None:
    """A manual action whose groups were all handed over after all (retried after the deletion) or
    cancelled (a rehire while they waited) is done."""
    rows = session.execute(
        sa.select(HAND.c.manual_action_id, HAND.c.state).where(
            HAND.c.offboarding_id == offboarding_id, HAND.c.manual_action_id.is_not(None)
        )
    ).all()
    by_action: dict[int, set[str]] = {}
    for action_id, state in rows:
        by_action.setdefault(int(action_id), set()).add(state)
    for action_id, states in by_action.items():
        if states <= {"done", "cancelled"}:
            done = session.execute(
                sa.update(MANUAL)
                .where(MANUAL.c.id == action_id, MANUAL.c.state == "open")
                .values(state="done", resolved_at=utcnow(), resolved_by=ACTOR)
            ).rowcount
            if done:
                audit.record(ACTOR, "manual_action.resolved", target=f"manual_action:{action_id}",
                             reason="every customer group of it was handed over or cancelled",
                             session=session)  # fmt: skip


def _finish(session: Session, r: Any, state: str, errcode: int | None, errmsg: str | None, **values: Any) -> None:
    now = utcnow()
    session.execute(
        sa.update(HAND).where(HAND.c.id == r.id).values(
            state=state, errcode=errcode, errmsg=errmsg, updated_at=now, done_at=now if state == "done" else None,
            **values,
        )
    )  # fmt: skip


def _cancel_rows(session: Session, off: Any) -> int:
    n = session.execute(
        sa.update(HAND)
        .where(HAND.c.offboarding_id == off.id, HAND.c.state.in_(OPEN_ROW_STATES))
        .values(state="cancelled", errmsg=f"offboarding #{off.id} cancelled", updated_at=utcnow())
    ).rowcount
    if n:
        _resolve_manual_actions(session, off.id)
        audit.record(ACTOR, "customer_group.cancelled", target=f"offboarding:{off.id}", outcome="noop",
                     reason="the offboarding was cancelled", detail={"userid": off.userid, "rows": n},
                     session=session)  # fmt: skip
    return n


def _settle(session: Session, offboarding_id: int) -> str:
    from wecom_plugin.services import offboarding

    return offboarding.settle(session, offboarding_id)


def _set_scan(session: Session, offboarding_id: int, **values: Any) -> None:
    session.execute(
        sa.update(SCAN).where(SCAN.c.offboarding_id == offboarding_id).values(**values, updated_at=utcnow())
    )


def _scan_state(engine: sa.Engine, offboarding_id: int) -> Any | None:
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        return conn.execute(sa.select(SCAN).where(SCAN.c.offboarding_id == offboarding_id)).first()


# --- the claim (one worker per leaver) ----------------------------------------------------------------
# The claim lives on the leaver's first ``customer_group_scan`` row (the lowest offboarding id of the same
# folded userid), so two offboardings of one person (a rehire and a second departure) never hand the
# same groups over at once. ``offboarding.cancel`` takes the same row (:func:`cancel_blocker`).
def _lock_id(conn: Session | sa.Connection, off: Any) -> int:
    found = conn.execute(
        sa.select(sa.func.min(SCAN.c.offboarding_id))
        .join(OFF, OFF.c.id == SCAN.c.offboarding_id)
        .where(OFF.c.userid_folded == off.userid_folded)
    ).scalar()
    return int(found) if found is not None else int(off.id)


def _claim(engine: sa.Engine, off: Any) -> tuple[str, int] | None:
    fence = secrets.token_hex(16)
    now = utcnow()
    with engine.begin() as conn:
        lock_id = _lock_id(conn, off)
        taken = conn.execute(
            sa.update(SCAN)
            .where(
                SCAN.c.offboarding_id == lock_id,
                sa.or_(SCAN.c.lease_until.is_(None), SCAN.c.lease_until < now),
            )
            .values(fence=fence, lease_until=now + timedelta(seconds=LEASE_SECONDS))
        ).rowcount
    return (fence, lock_id) if taken == 1 else None


def _renew(run: _Run, *, force: bool = True) -> None:
    """Extend the claim (at most every RENEW_EVERY seconds unless ``force``). Raises HandoverBusy when
    it was lost, _Cancelled when the offboarding was cancelled meanwhile."""
    if not force and time.monotonic() - run.renewed < RENEW_EVERY:
        return
    with run.engine.begin() as conn:
        ours = conn.execute(
            sa.update(SCAN)
            .where(SCAN.c.offboarding_id == run.lock_id, SCAN.c.fence == run.fence)
            .values(lease_until=utcnow() + timedelta(seconds=LEASE_SECONDS))
        ).rowcount
        state = conn.execute(sa.select(OFF.c.state).where(OFF.c.id == run.off.id)).scalar()
    if ours != 1:
        raise HandoverBusy(f"offboarding #{run.off.id}: the claim on its customer groups was lost", 2.0)
    run.renewed = time.monotonic()
    if state == "cancelled":
        raise _Cancelled(run.off.id)


def _check_ours(session: Session, run: _Run) -> None:
    """In the caller's transaction: the claim is still ours and the offboarding not cancelled."""
    query = sa.select(SCAN.c.fence).where(SCAN.c.offboarding_id == run.lock_id)
    fence = session.execute(query.with_for_update() if _pg(session) else query).scalar()
    if fence != run.fence:
        raise HandoverBusy(f"offboarding #{run.off.id}: the claim on its customer groups was lost", 2.0)
    if session.execute(sa.select(OFF.c.state).where(OFF.c.id == run.off.id)).scalar() == "cancelled":
        raise _Cancelled(run.off.id)


def _release(engine: sa.Engine, lock_id: int, fence: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.update(SCAN)
                .where(SCAN.c.offboarding_id == lock_id, SCAN.c.fence == fence)
                .values(fence=None, lease_until=None)
            )
    except Exception:  # noqa: BLE001 - it expires anyway
        log.exception("customer-group claim %s: releasing it failed", lock_id)


def cancel_blocker(session: Session, off: Any) -> str | None:
    """For ``offboarding.cancel`` (in its transaction): ``executed`` when a customer group of the
    offboarding was transferred by us, failed or handed to a person; ``executing`` while a worker holds
    the leaver's claim. Otherwise None, and the claim row is taken for the transaction (any expired
    claim cleared), so no worker can send between this check and the commit; a worker that claims
    afterwards finds the offboarding cancelled before any call."""
    executed = session.execute(
        sa.select(sa.func.count()).where(
            HAND.c.offboarding_id == off.id,
            sa.or_(HAND.c.state.in_(PROBLEM_ROW_STATES), sa.and_(HAND.c.state == "done", HAND.c.attempts > 0)),
        )
    ).scalar_one()
    if executed:
        return "executed"
    lock_id = _lock_id(session, off)
    exists = session.execute(sa.select(SCAN.c.offboarding_id).where(SCAN.c.offboarding_id == lock_id)).first()
    if exists is None:
        return None
    free = session.execute(
        sa.update(SCAN)
        .where(
            SCAN.c.offboarding_id == lock_id,
            sa.or_(SCAN.c.lease_until.is_(None), SCAN.c.lease_until < utcnow()),
        )
        .values(fence=None, lease_until=None)
    ).rowcount
    return None if free == 1 else "executing"


# --- the minute sweep ----------------------------------------------------------------------------------
def sweep(app: Any) -> dict[str, Any]:
    """Queue the handover of offboardings that need it: a deletion arrived for a leaver whose groups wait
    (or whose on-the-job transfer WeCom refused in a way ``transfer`` may not), listings not done after
    two minutes, pending groups with no job queued while the switches allow changes, groups waiting
    longer than CUSTOMER_GROUP_WAIT_DAYS with nobody told yet, and open rows of cancelled offboardings (a
    rehire: they become cancelled, nothing moves). Offboardings whose listing failed are retried at most
    hourly (their open rows normally became a manual action already)."""
    from wecom_plugin.services.governance_switches import effective

    settings = app.extensions["wecom_settings"]
    if settings.customer_group_handover == "off":
        return {"queued": 0, "off": True}
    engine = _engine(app)
    now = utcnow()
    stale = now - REQUEUE_AFTER
    with Session(engine) as session, session.begin():
        may_change = effective(session, settings.governance_mode).may_change_chats
        backed_off = set(
            session.execute(
                sa.select(SCAN.c.offboarding_id).where(
                    SCAN.c.state == "failed", SCAN.c.updated_at >= now - FAILED_LISTING_RETRY
                )
            ).scalars()
        )  # a failed listing: not every minute
        retry = sa.or_(
            HAND.c.state == "waiting",
            sa.and_(HAND.c.state == "failed", HAND.c.method == "onjob_transfer", HAND.c.errcode.in_(RETRY_ON_DELETION)),
        )
        deleted = set(
            session.execute(
                sa.select(HAND.c.offboarding_id)
                .join(OFF, OFF.c.id == HAND.c.offboarding_id)
                .join(PERSON, PERSON.c.userid_folded == OFF.c.userid_folded)
                .where(retry, PERSON.c.status == LEFT, OFF.c.state != "cancelled")
                .distinct()
            ).scalars()
        )
        unlisted = set(
            session.execute(
                sa.select(SCAN.c.offboarding_id).where(SCAN.c.state == "pending", SCAN.c.updated_at < stale)
            ).scalars()
        )
        pending: set[int] = set()
        overdue: set[int] = set()
        if may_change:
            pending = set(
                session.execute(
                    sa.select(HAND.c.offboarding_id)
                    .where(HAND.c.state == "pending", HAND.c.updated_at < stale)
                    .distinct()
                ).scalars()
            )
            overdue = set(
                session.execute(
                    sa.select(HAND.c.offboarding_id)
                    .join(OFF, OFF.c.id == HAND.c.offboarding_id)
                    .where(
                        HAND.c.state == "waiting", HAND.c.method != "member", HAND.c.manual_action_id.is_(None),
                        HAND.c.created_at < now - timedelta(days=settings.customer_group_wait_days),
                        OFF.c.state != "cancelled",
                    )
                    .distinct()
                ).scalars()
            )  # fmt: skip
        cancelled = set(
            session.execute(
                sa.select(HAND.c.offboarding_id)
                .join(OFF, OFF.c.id == HAND.c.offboarding_id)
                .where(HAND.c.state.in_(OPEN_ROW_STATES), OFF.c.state == "cancelled")
                .distinct()
            ).scalars()
        )  # a rehire or a cancellation: the job marks the rows cancelled
        deleted -= cancelled | backed_off
        pending -= backed_off
        overdue -= backed_off
        queued = 0
        for off_id in sorted(deleted):
            queued += _enqueue(session, off_id)
        for off_id in sorted((unlisted | pending | overdue | cancelled) - deleted):
            queued += _enqueue(session, off_id, unless_running=True)
    return {"queued": queued, "deleted": len(deleted), "unlisted": len(unlisted), "pending": len(pending),
            "overdue": len(overdue), "cancelled": len(cancelled), "backed_off": len(backed_off)}  # fmt: skip


__all__ = ["HandoverBusy", "HandoverOutcomeUnknown", "cancel_blocker", "handover", "progress", "schedule",
           "successor_for", "sweep", "view"]  # fmt: skip
