"""Offboarding (离职处理): take a person out of every governed chat.

Triggers: a departure record of the directory mirror (``directory_outbox``: departed, disabled;
``reactivated`` cancels), the HR API (``POST /api/v1/offboardings``) and the CLI
(``wecom-plugin offboard``). All land in :func:`start_offboarding`, which is idempotent:

* the same API client + ``Idempotency-Key`` answers the offboarding it made the first time (a
  different body under the same key is refused, 422);
* the same outbox record answers the same offboarding;
* a second trigger for a person with an open offboarding (scheduled, pending, running) reuses it;
  one finished less than :data:`REUSE_FINISHED_DAYS` ago with no reactivation since is re-planned
  (usually finding nothing new) instead of starting another.

:func:`plan` writes one pending ``chat_change`` (remove, source ``offboarding``, priority 0) per
governed chat the person is in by ``chat_member`` (and per chat naming them owner or admin, and
per chat never read yet): the per-chat executor
(:func:`wecom_plugin.services.chat_changes.apply_chat`) re-reads each chat first, skips people no
longer there (WeCom already removed a deleted member: counted as done), re-homes the owner
(group admin first, then department leader) and obeys the governance switches and the update
budget. "One pending change per person per chat" (a partial unique index) makes every repeat of
a trigger a no-op: ``INSERT ... ON CONFLICT DO NOTHING``.

**Coalescing window.** A chat's ``groups.apply`` is enqueued due :data:`COALESCE_WINDOW_SECONDS`
(0.5 s) after the first offboarding change of that chat; a later offboarding's change reuses that
job while it is still waiting (``ready``) and pushes it to 0.5 s after itself, never past
:data:`COALESCE_MAX_SECONDS` (1 s) after the first: a debounce with a cap. Every change planned
for the chat in one burst goes out in the same ``appchat/update``, so 100 people leaving at once
across 300 chats cost one update per distinct chat, and no removal waits more than 1 s for others.

**Completion**: an offboarding is ``done`` when all its changes are final and none needed a
person, ``partial`` when some became manual actions (a chat this app did not create: 86008) or
failed. :func:`settle` decides, run by ``offboarding.settle`` jobs after the window, the
minute sweep and every status read.

**Cancellation** (:func:`cancel`, the HR ``DELETE``, a ``reactivated`` record = rehire) is allowed
only before execution: while no change of the offboarding has been applied, failed or handed to a
person, and no ``groups.apply`` of its chats is running. Its pending changes become cancelled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import ACTIVE, NOT_ACTIVATED, fold
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import db_now, sql_now
from wecom_plugin.models.directory import DirectoryOutbox, Person
from wecom_plugin.models.groups import (
    ChatApplyLease,
    ChatChange,
    ChatMember,
    GovernedGroup,
    ManualAction,
    Offboarding,
)
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import audit

log = logging.getLogger("wecom_plugin.offboarding")

OFF = Offboarding.__table__
CHANGE = ChatChange.__table__
MEMBER = ChatMember.__table__
GROUP = GovernedGroup.__table__
MANUAL = ManualAction.__table__
PERSON = Person.__table__
OUTBOX = DirectoryOutbox.__table__
JOB = Job.__table__
LEASE = ChatApplyLease.__table__

#: Seconds a chat's ``groups.apply`` waits after its first offboarding change, so changes for
#: several leavers of one chat go out in one ``appchat/update``. At most 1 s (the requirement).
COALESCE_WINDOW_SECONDS = 0.5
#: A chat's first offboarding change waits at most this long for others (the requirement: <= 1 s).
COALESCE_MAX_SECONDS = 1.0
#: A finished offboarding younger than this is re-planned by a new trigger instead of starting another.
REUSE_FINISHED_DAYS = 30

SOURCES = ("directory", "hr", "cli")
MAX_ID = 2**31 - 1  # offboarding.id is a 32-bit integer on PostgreSQL
OPEN_STATES = ("scheduled", "pending", "running")
FINISHED_STATES = ("done", "partial", "failed")
ALIAS_STATE = "duplicate"  # a request that resolved to another offboarding (``detail.same_as``)
EXECUTED_ROW_STATES = ("applied", "failed", "manual")
ROW_STATES = ("pending", "applied", "skipped", "cancelled", "manual", "failed")
ACTOR = "system:offboarding"


class OffboardingError(ValueError):
    """A request that cannot be honoured; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Started:
    """What :func:`start_offboarding` did: ``offboarding_id`` None when nothing was needed
    (``note`` says why); ``created`` False when an existing offboarding answered; ``replay`` True
    when this exact request (client + key, or outbox record) was seen before."""

    offboarding_id: int | None
    created: bool
    replay: bool = False
    note: str | None = None


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- start ----------------------------------------------------------------------------------------
def parse_effective_at(value: Any) -> datetime:
    """An ``effective_at`` given as ISO 8601 text with a UTC offset, as an aware UTC datetime.

    Raises ValueError (a message for people, English) for anything else: not a string, no offset,
    or a moment that cannot be expressed in UTC (year 1 or 9999 with an offset overflows).
    """
    if not isinstance(value, str):
        raise ValueError("effective_at must be an ISO 8601 string")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("effective_at needs a UTC offset, e.g. 2025-01-31T18:00:00+08:00")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"effective_at {value!r} is out of range") from None


def start_offboarding(
    session: Session,
    *,
    userid: str,
    source: str,
    effective_at: datetime | None = None,
    client_id: int | None = None,
    idempotency_key: str | None = None,
    outbox_id: int | None = None,
    requested_by: str,
    reason: str | None = None,
    body_hash: str | None = None,
    defer_apply: list[int] | None = None,
) -> Started:
    """Start (or find) the offboarding of ``userid`` and plan it when it is due. The caller commits.

    Raises:
        OffboardingError: unknown person (404), a key reused with another body (422), bad input (400).
    """
    if source not in SOURCES:
        raise OffboardingError(f"unknown source {source!r}")
    if effective_at is not None and effective_at.tzinfo is None:
        raise OffboardingError("effective_at must carry a UTC offset")
    if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
        raise OffboardingError("Idempotency-Key must be 1 to 255 characters")
    if client_id is not None and idempotency_key:
        seen = _by_key(session, client_id, idempotency_key)
        if seen is not None:
            return _replay(seen, body_hash)
    if outbox_id is not None:
        seen = session.execute(sa.select(OFF).where(OFF.c.outbox_id == outbox_id)).first()
        if seen is not None:
            return Started(_canonical_id(seen), False, replay=True)
    folded = fold(userid or "")
    if not folded:
        raise OffboardingError("userid is required")
    query = sa.select(PERSON).where(PERSON.c.userid_folded == folded)
    person = session.execute(query.with_for_update() if _pg(session) else query).first()
    if person is None:
        raise OffboardingError(f"unknown person {userid!r}: not in the directory mirror", 404, "unknown_person")
    if source == "directory" and person.status in (ACTIVE, NOT_ACTIVATED):
        return Started(None, False, note="active in the directory again (rehired): nothing to do")
    now = db_now(session)
    due_later = effective_at is not None and effective_at > now
    existing = _reusable(session, person)
    if existing is not None:
        off_id = existing.id
        if existing.state == "scheduled" and not due_later:
            _set(session, off_id, state="pending")
            plan(session, off_id, defer_apply)
        elif existing.state == "scheduled" and effective_at != existing.effective_at and source != "directory":
            _reschedule(session, existing, effective_at, requested_by)
        elif existing.state in FINISHED_STATES:
            result = plan(session, off_id, defer_apply)
            if result["new"] or result["adopted"]:  # it owns pending removals again
                _set(session, off_id, state="pending", finished_at=None)
        _attach(session, existing, client_id, idempotency_key, outbox_id, body_hash, source, requested_by)
        return Started(off_id, False)
    detail: dict[str, Any] = {"reason": (reason or "")[:500], "status_at_start": int(person.status)}
    if body_hash:
        detail["request_hash"] = body_hash
    values = dict(
        userid=person.userid, userid_folded=folded, person_id=person.id, source=source, outbox_id=outbox_id,
        client_id=client_id, idempotency_key=idempotency_key if client_id is not None else None,
        state="scheduled" if due_later else "pending", effective_at=effective_at, requested_by=requested_by[:128],
        detail=detail, created_at=utcnow(),
    )  # fmt: skip
    try:
        with session.begin_nested():
            off_id = session.execute(sa.insert(OFF).values(**values).returning(OFF.c.id)).scalar_one()
    except sa.exc.IntegrityError:  # a concurrent request with the same key or record won
        if client_id is not None and idempotency_key:
            seen = _by_key(session, client_id, idempotency_key)
            if seen is not None:
                return _replay(seen, body_hash)
        seen = session.execute(sa.select(OFF).where(OFF.c.outbox_id == outbox_id)).first()
        if seen is not None:
            return Started(_canonical_id(seen), False, replay=True)
        raise
    audit.record(
        requested_by[:128] or ACTOR, "offboarding.start", target=f"offboarding:{off_id}", reason=reason,
        detail={"userid": person.userid, "source": source, "effective_at": effective_at and effective_at.isoformat()},
        session=session,
    )  # fmt: skip
    if due_later:
        from wecom_plugin.runtime.queue import enqueue

        enqueue("offboarding.run", {"offboarding_id": off_id}, run_after=effective_at,
                dedupe_key=f"offboarding.run:{off_id}", session=session)  # fmt: skip
    else:
        plan(session, off_id, defer_apply)
    return Started(off_id, True)


def _reschedule(session: Session, existing: Any, effective_at: datetime | None, requested_by: str) -> None:
    """A later HR/CLI request names another future date (离职日期 corrected): the latest one counts.
    The job queued for the old date finds the offboarding not due yet and does nothing."""
    from wecom_plugin.runtime.queue import enqueue

    _set(session, existing.id, effective_at=effective_at)
    enqueue("offboarding.run", {"offboarding_id": existing.id}, run_after=effective_at,
            dedupe_key=f"offboarding.run:{existing.id}:{effective_at.isoformat()}", session=session)  # fmt: skip
    audit.record(
        requested_by[:128] or ACTOR, "offboarding.rescheduled", target=f"offboarding:{existing.id}",
        detail={"userid": existing.userid, "from": existing.effective_at and existing.effective_at.isoformat(),
                "to": effective_at.isoformat()},
        session=session,
    )  # fmt: skip


def _by_key(session: Session, client_id: int, key: str) -> Any | None:
    return session.execute(sa.select(OFF).where(OFF.c.client_id == client_id, OFF.c.idempotency_key == key)).first()


def _canonical_id(row: Any) -> int:
    if row.state == ALIAS_STATE:
        return int((row.detail or {}).get("same_as") or row.id)
    return row.id


def _replay(row: Any, body_hash: str | None) -> Started:
    stored = (row.detail or {}).get("request_hash")
    if body_hash is not None and stored is not None and stored != body_hash:
        raise OffboardingError(
            "this Idempotency-Key was used with a different request body", 422, "idempotency_key_reused"
        )
    created = row.state != ALIAS_STATE and not (row.detail or {}).get("reused")
    return Started(_canonical_id(row), created, replay=True)


def _reusable(session: Session, person: Any) -> Any | None:
    """The person's open offboarding, else a recently finished one with no reactivation since."""
    rows = session.execute(
        sa.select(OFF)
        .where(OFF.c.userid_folded == person.userid_folded, OFF.c.state.in_(OPEN_STATES + FINISHED_STATES))
        .order_by(OFF.c.id.desc())
        .limit(5)
    ).all()
    for row in rows:
        if row.state in OPEN_STATES:
            return row
    if not rows:
        return None
    latest = rows[0]
    if latest.created_at < utcnow() - timedelta(days=REUSE_FINISHED_DAYS):
        return None
    rehired = session.execute(
        sa.select(OUTBOX.c.id).where(
            OUTBOX.c.person_id == person.id, OUTBOX.c.kind == "reactivated", OUTBOX.c.occurred_at > latest.created_at
        )
    ).first()
    return None if rehired is not None else latest


def _attach(
    session: Session,
    existing: Any,
    client_id: int | None,
    key: str | None,
    outbox_id: int | None,
    body_hash: str | None,
    source: str,
    requested_by: str,
) -> None:
    """Remember the request that resolved to ``existing`` so its repeat answers the same."""
    updates: dict[str, Any] = {}
    detail = dict(existing.detail or {})
    triggers = list(detail.get("triggers") or [])
    triggers.append({"source": source, "by": requested_by[:128], "at": utcnow().isoformat()})
    detail["triggers"] = triggers[-20:]
    if outbox_id is not None and existing.outbox_id is None:
        updates["outbox_id"] = outbox_id
    elif outbox_id is not None:
        detail["outbox_ids"] = sorted({*detail.get("outbox_ids", []), outbox_id})
    alias = False
    if client_id is not None and key:
        if existing.client_id is None and existing.idempotency_key is None:
            updates.update(client_id=client_id, idempotency_key=key)
            detail["reused"] = True
            if body_hash:
                detail["request_hash"] = body_hash
        else:
            alias = True
    updates["detail"] = detail
    session.execute(sa.update(OFF).where(OFF.c.id == existing.id).values(**updates))
    if alias:
        alias_detail = {"same_as": existing.id, **({"request_hash": body_hash} if body_hash else {})}
        try:
            with session.begin_nested():
                session.execute(
                    sa.insert(OFF).values(
                        userid=existing.userid, userid_folded=existing.userid_folded, person_id=existing.person_id,
                        source=source, client_id=client_id, idempotency_key=key, state=ALIAS_STATE,
                        requested_by=requested_by[:128], detail=alias_detail, created_at=utcnow(),
                        finished_at=utcnow(),
                    )
                )  # fmt: skip
        except sa.exc.IntegrityError:  # the same key raced in; either row answers the replay
            pass


def _set(session: Session, off_id: int, **values: Any) -> None:
    session.execute(sa.update(OFF).where(OFF.c.id == off_id).values(**values))


# --- plan -----------------------------------------------------------------------------------------
def plan(session: Session, offboarding_id: int, defer_apply: list[int] | None = None) -> dict[str, Any]:
    """Plan the removal of the person from every governed chat and queue each chat's executor.
    Repeats are no-ops (one pending change per person per chat). The caller commits.

    ``defer_apply``: collect the chats here instead of queueing their executors (a batch queues
    them once at its end, so a batch of leavers shares one update per chat)."""
    off = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).first()
    if off is None or off.state in ("cancelled", ALIAS_STATE):
        return {"chats": 0, "new": 0, "adopted": 0}
    folded = off.userid_folded
    reason = "offboarding"
    if off.source == "directory":
        reason = str((off.detail or {}).get("reason") or "offboarding")
        reason = reason if reason in ("departed", "disabled") else "offboarding"
    gids = set(session.execute(sa.select(MEMBER.c.group_id).where(MEMBER.c.userid_folded == folded)).scalars())
    groups = session.execute(
        sa.select(GROUP.c.id, GROUP.c.owner, GROUP.c.admins).where(
            GROUP.c.status == "active", GROUP.c.chatid.is_not(None)
        )
    ).all()
    active = {g.id for g in groups}
    for g in groups:
        if fold(g.owner or "") == folded or any(fold(a or "") == folded for a in (g.admins or ())):
            gids.add(g.id)
    never_read = session.execute(
        sa.select(GROUP.c.id).where(
            GROUP.c.status == "active",
            GROUP.c.chatid.is_not(None),
            ~sa.exists().where(MEMBER.c.group_id == GROUP.c.id),
        )
    ).scalars()
    gids.update(never_read)
    gids &= active
    now = utcnow()
    new = adopted = 0
    ours: list[int] = []
    for gid in sorted(gids):
        row = {
            "group_id": gid, "userid": off.userid, "userid_folded": folded, "action": "remove", "reason": reason,
            "detail": f"offboarding #{off.id}", "source": "offboarding", "priority": 0, "offboarding_id": off.id,
            "state": "pending", "attempts": 0, "created_at": now,
        }  # fmt: skip
        inserted = _insert_pending(session, row)
        if inserted is not None:
            new += 1
            ours.append(gid)
            continue
        existing = session.execute(
            sa.select(CHANGE).where(
                CHANGE.c.group_id == gid, CHANGE.c.userid_folded == folded, CHANGE.c.state == "pending"
            )
        ).first()
        if existing is None:  # applied in between: plan again
            if _insert_pending(session, row) is not None:
                new += 1
                ours.append(gid)
            continue
        if existing.action == "remove":
            if existing.offboarding_id in (None, off.id):
                if existing.offboarding_id is None:
                    # Taken over, it is the offboarding's removal: source "offboarding", so rule edits,
                    # exemptions, re-evaluation and the brake (which act on check rows) leave it alone.
                    session.execute(
                        sa.update(CHANGE)
                        .where(CHANGE.c.id == existing.id, CHANGE.c.state == "pending")
                        .values(offboarding_id=off.id, priority=0, source="offboarding", reason=row["reason"])
                    )
                    adopted += 1
                ours.append(gid)
            continue
        # A planned addition or owner change of someone leaving: superseded by the removal.
        session.execute(
            sa.update(CHANGE)
            .where(CHANGE.c.id == existing.id, CHANGE.c.state == "pending")
            .values(state="cancelled", error=f"superseded by offboarding #{off.id}")
        )
        if _insert_pending(session, row) is not None:
            new += 1
            ours.append(gid)
    if defer_apply is None:
        schedule_apply(session, ours)
    else:
        defer_apply.extend(ours)
    detail = dict(off.detail or {})
    detail["planned_at"] = now.isoformat()
    detail["chats_planned"] = len(set(ours) | set(detail.get("chats") or []))
    detail["chats"] = sorted(set(ours) | set(detail.get("chats") or []))[:5000]
    _set(session, off.id, detail=detail)
    # --- customer groups (客户群): their handover job (services/customer_groups.py) ---
    from wecom_plugin.services import customer_groups

    customer_groups.schedule(session, off)
    if ours:
        from wecom_plugin.runtime.queue import enqueue

        enqueue("offboarding.settle", {"offboarding_id": off.id, "n": 0},
                run_after=timedelta(seconds=COALESCE_MAX_SECONDS + 2),
                dedupe_key=f"offboarding.settle:{off.id}:{secrets.token_hex(4)}", session=session)  # fmt: skip
    else:
        settle(session, off.id)
    return {"chats": len(ours), "new": new, "adopted": adopted}


def _insert_pending(session: Session, row: dict[str, Any]) -> int | None:
    stmt = (
        insert_for(session, CHANGE)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["group_id", "userid_folded"], index_where=sa.text("state = 'pending'"))
        .returning(CHANGE.c.id)
    )
    return session.execute(stmt).scalar_one_or_none()


def schedule_apply(session: Session, group_ids: list[int]) -> int:
    """Queue each chat's ``groups.apply`` due after the coalescing window. A job of the chat still
    waiting (``ready``) is reused and pushed to ``now + window``, never past
    :data:`COALESCE_MAX_SECONDS` after the chat's first change (a debounce with a cap): removals
    planned in one burst go out in one ``appchat/update`` per chat, and none waits longer than
    the cap. Returns how many new jobs were queued."""
    from wecom_plugin.runtime.queue import enqueue

    queued = 0
    now = db_now(session)
    for gid in sorted(set(group_ids)):
        query = (
            sa.select(JOB.c.id, JOB.c.due_at, JOB.c.payload)
            .where(
                JOB.c.name == "groups.apply",
                JOB.c.state == ClaimState.READY,
                JOB.c.dedupe_key.like(f"groups.apply:{gid}:offboarding:%"),
            )
            .limit(1)
        )
        if _pg(session):
            query = query.with_for_update()  # a claim in progress finishes first; ours then sees it running
        waiting = session.execute(query).first()
        if waiting is not None and _push(session, waiting, now):
            continue
        until = now + timedelta(seconds=COALESCE_MAX_SECONDS)
        enqueue("groups.apply", {"group_id": gid, "trigger": "offboarding", "coalesce_until": until.isoformat()},
                run_after=now + timedelta(seconds=COALESCE_WINDOW_SECONDS),
                dedupe_key=f"groups.apply:{gid}:offboarding:{secrets.token_hex(6)}", session=session)  # fmt: skip
        queued += 1
    return queued


def _push(session: Session, job: Any, now: datetime) -> bool:
    """Move a waiting apply job to ``now + window`` within its cap; False when it was claimed meanwhile."""
    try:
        until = datetime.fromisoformat(str((job.payload or {}).get("coalesce_until")))
    except ValueError:
        until = job.due_at  # a job queued before the cap existed: keep its time
    due = max(job.due_at, min(now + timedelta(seconds=COALESCE_WINDOW_SECONDS), until))
    return bool(
        session.execute(
            sa.update(JOB).where(JOB.c.id == job.id, JOB.c.state == ClaimState.READY).values(due_at=due)
        ).rowcount
    )


def run_scheduled(session: Session, offboarding_id: int) -> dict[str, Any]:
    """``effective_at`` has come: plan a scheduled offboarding (no-op in any other state)."""
    changed = session.execute(
        sa.update(OFF)
        .where(OFF.c.id == offboarding_id, OFF.c.state == "scheduled", OFF.c.effective_at <= sql_now())
        .values(state="pending")
    ).rowcount
    if not changed:  # not scheduled any more, or moved to a later date (its own job comes then)
        return {"state": "not due"}
    return plan(session, offboarding_id)


# --- settle, cancel ---------------------------------------------------------------------------------
def _rows(session: Session, offboarding_id: int) -> list[Any]:
    return list(session.execute(sa.select(CHANGE).where(CHANGE.c.offboarding_id == offboarding_id)).all())


def settle(session: Session, offboarding_id: int) -> str:
    """Bring the offboarding's state up to date with its changes; returns the state. The caller commits."""
    off = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).first()
    if off is None:
        return "missing"
    if off.state not in ("pending", "running"):
        return off.state
    rows = _rows(session, offboarding_id)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    if counts.get("pending"):
        state = "running" if len(rows) > counts["pending"] else "pending"
        if state != off.state:
            _set(session, offboarding_id, state=state)
        return state
    # --- customer groups (客户群): not done while their handover is open (services/customer_groups.py) ---
    from wecom_plugin.services import customer_groups

    handover = customer_groups.progress(session, offboarding_id)
    if handover in ("pending", "running"):
        state = "running" if rows or handover == "running" else "pending"
        if state != off.state:
            _set(session, offboarding_id, state=state)
        return state
    state = "partial" if counts.get("manual") or counts.get("failed") or handover == "partial" else "done"
    # Compare-and-set: of two settles at once (a status read, the settle job, the sweep), one finishes
    # the offboarding and writes its manual actions and audit row; the other reports what it found.
    finished = session.execute(
        sa.update(OFF)
        .where(OFF.c.id == offboarding_id, OFF.c.state == off.state)
        .values(state=state, finished_at=utcnow())
    ).rowcount
    if not finished:
        return session.execute(sa.select(OFF.c.state).where(OFF.c.id == offboarding_id)).scalar_one()
    for r in rows:
        if r.state == "manual":
            _manual(session, off, r)
    audit.record(
        ACTOR, f"offboarding.{state}", target=f"offboarding:{offboarding_id}",
        outcome="success" if state == "done" else "failure", detail={"userid": off.userid, "changes": counts},
        session=session,
    )  # fmt: skip
    return state


def _manual(session: Session, off: Any, row: Any) -> None:
    exists = session.execute(
        sa.select(MANUAL.c.id).where(
            MANUAL.c.offboarding_id == off.id, MANUAL.c.group_id == row.group_id, MANUAL.c.kind == "offboarding_remove"
        )
    ).first()
    if exists is not None:
        return
    group = session.execute(sa.select(GROUP).where(GROUP.c.id == row.group_id)).first()
    name = group.name if group else str(row.group_id)
    assignee = None
    if group is not None:
        assignee = next((a for a in (group.admins or ()) if fold(a) != off.userid_folded), None) or group.owner
    action_id = session.execute(
        sa.insert(MANUAL).values(
            kind="offboarding_remove", group_id=row.group_id, chat_ref=group.chatid if group else None,
            userid=off.userid, assignee=assignee, offboarding_id=off.id, state="open", created_at=utcnow(),
            detail={
                "zh": f"请将离职人员 {off.userid} 移出群「{name}」（接口无法操作：{row.error or row.errcode}）",
                "en": f"Remove the leaver {off.userid} from chat {name!r} by hand (not possible by API: "
                f"{row.error or row.errcode})",
                "errcode": row.errcode, "change_id": row.id,
            },
        ).returning(MANUAL.c.id)
    ).scalar_one()  # fmt: skip
    from wecom_plugin.services.membership_notices import queue_manual_notice

    queue_manual_notice(session, action_id)


def executed(session: Session, offboarding_id: int) -> list[Any]:
    """Changes of the offboarding that reached WeCom or a person (cancellation is too late then)."""
    return [r for r in _rows(session, offboarding_id) if r.state in EXECUTED_ROW_STATES]


def cancel(session: Session, offboarding_id: int, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Cancel before execution: pending changes become cancelled. The caller commits.

    Raises:
        OffboardingError: unknown (404); already executed, finished or being executed now (409).
    """
    row = None
    if 1 <= offboarding_id <= MAX_ID:  # beyond the column's range: not found, not an overflow
        row = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).first()
    if row is None:
        raise OffboardingError(f"no offboarding #{offboarding_id}", 404, "not_found")
    off_id = _canonical_id(row)
    query = sa.select(OFF).where(OFF.c.id == off_id)
    off = session.execute(query.with_for_update() if _pg(session) else query).first()
    if off is None:
        raise OffboardingError(f"no offboarding #{offboarding_id}", 404, "not_found")
    if off.state == "cancelled":
        return {"id": off_id, "state": "cancelled", "cancelled_changes": 0, "already": True}
    if off.state in FINISHED_STATES or executed(session, off_id):
        raise OffboardingError(
            f"offboarding #{off_id} has already been executed ({off.state}); it cannot be cancelled", 409, "executed"
        )
    # Customer groups (客户群): too late once one was transferred or handed to a person; refused while
    # a handover worker holds the leaver's claim (taken here otherwise, until the commit).
    from wecom_plugin.services import customer_groups

    blocker = customer_groups.cancel_blocker(session, off)
    if blocker == "executed":
        raise OffboardingError(
            f"offboarding #{off_id}: customer groups have already been handed over; it cannot be cancelled",
            409,
            "executed",
        )
    if blocker == "executing":
        raise OffboardingError(
            f"offboarding #{off_id} is in progress (its customer groups are being handed over); it cannot be "
            "cancelled now",
            409,
            "executing",
        )
    pending = [r for r in _rows(session, off_id) if r.state == "pending"]
    running = _running_applies(session, sorted({r.group_id for r in pending}))
    if running:
        raise OffboardingError(
            f"offboarding #{off_id} is being executed now (chats {running[:5]}); it cannot be cancelled",
            409,
            "executing",
        )
    groups = sorted({r.group_id for r in pending})
    try:
        with session.begin_nested():  # a claimed chat: nothing of this is kept
            fence = _hold_chats(session, groups)
            cancelled = session.execute(
                sa.update(CHANGE)
                .where(CHANGE.c.offboarding_id == off_id, CHANGE.c.state == "pending")
                .values(state="cancelled", error=f"offboarding cancelled by {actor}"[:500])
            ).rowcount
            session.execute(sa.delete(LEASE).where(LEASE.c.fence == fence))
    except _ChatsBusy as busy:
        raise OffboardingError(
            f"offboarding #{off_id} is in progress (chats {busy.groups[:5]} are being applied); it cannot be "
            "cancelled now",
            409,
            "executing",
        ) from None
    now = utcnow()
    _set(session, off_id, state="cancelled", cancelled_at=now, finished_at=now)
    session.execute(  # a scheduled offboarding's run is no longer wanted
        sa.update(JOB)
        .where(
            sa.or_(
                JOB.c.dedupe_key == f"offboarding.run:{off_id}",
                JOB.c.dedupe_key.like(f"offboarding.run:{off_id}:%"),  # moved to another date
            ),
            JOB.c.state == ClaimState.READY,
        )
        .values(state=ClaimState.CANCELLED, finished_at=sql_now())
    )
    audit.record(actor[:128], "offboarding.cancel", target=f"offboarding:{off_id}", reason=reason,
                 detail={"userid": off.userid, "cancelled_changes": cancelled}, session=session)  # fmt: skip
    return {"id": off_id, "state": "cancelled", "cancelled_changes": cancelled, "already": False}


class _ChatsBusy(Exception):
    def __init__(self, groups: list[int]) -> None:
        super().__init__(f"chats {groups} are claimed")
        self.groups = groups


def _hold_chats(session: Session, group_ids: list[int]) -> str:
    """Take each chat's apply claim (``chat_apply_lease``) in the caller's transaction, so no
    executor can claim it until that commits (and then finds the rows cancelled). Raises
    :class:`_ChatsBusy` when a live claim holds any of them. The caller deletes the claims by the
    returned fence before committing."""
    fence = secrets.token_hex(16)
    now = utcnow()
    until = now + timedelta(seconds=60)
    busy = []
    for gid in group_ids:
        try:
            with session.begin_nested():
                session.execute(
                    sa.insert(LEASE).values(group_id=gid, fence=fence, holder="offboarding.cancel", expires_at=until)
                )
            continue
        except sa.exc.IntegrityError:
            pass
        taken = session.execute(  # an expired claim (a crashed process) is taken over
            sa.update(LEASE)
            .where(LEASE.c.group_id == gid, LEASE.c.expires_at < now)
            .values(fence=fence, holder="offboarding.cancel", expires_at=until)
        ).rowcount
        if taken != 1:
            busy.append(gid)
    if busy:
        raise _ChatsBusy(busy)
    return fence


def cancel_overtaken(session: Session, offboarding_id: int, change_ids: list[int]) -> None:
    """Changes of a cancelled offboarding were applied by WeCom after all (an apply had read them
    before the cancel): the offboarding reflects what WeCom did. The caller commits."""
    off = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).first()
    if off is None or off.state != "cancelled":
        return
    rows = _rows(session, offboarding_id)
    state = "partial" if any(r.state == "cancelled" for r in rows) else "done"
    detail = dict(off.detail or {})
    detail["cancel_overtaken"] = sorted({*detail.get("cancel_overtaken", []), *change_ids})
    _set(session, offboarding_id, state=state, detail=detail, finished_at=utcnow())
    audit.record(
        ACTOR, "offboarding.cancel_overtaken", target=f"offboarding:{offboarding_id}", outcome="failure",
        reason="cancelled while its removal was being applied: WeCom applied it",
        detail={"userid": off.userid, "change_ids": sorted(change_ids), "state": state}, session=session,
    )  # fmt: skip


def _running_applies(session: Session, group_ids: list[int]) -> list[int]:
    if not group_ids:
        return []
    keys = session.execute(
        sa.select(JOB.c.payload).where(JOB.c.name == "groups.apply", JOB.c.state == ClaimState.RUNNING)
    ).all()
    wanted = set(group_ids)
    busy = set()
    for (payload,) in keys:
        gid = (payload or {}).get("group_id")
        if gid is None:
            return sorted(wanted)  # a drain of every chat is running
        if int(gid) in wanted:
            busy.add(int(gid))
    return sorted(busy)


def cancel_for_person(session: Session, person_id: int, actor: str, reason: str) -> list[dict[str, Any]]:
    """A rehire: cancel every not-yet-executed open offboarding of the person."""
    folded = session.execute(sa.select(PERSON.c.userid_folded).where(PERSON.c.id == person_id)).scalar()
    if folded is None:
        return []
    out = []
    for (off_id,) in session.execute(
        sa.select(OFF.c.id).where(OFF.c.userid_folded == folded, OFF.c.state.in_(OPEN_STATES))
    ).all():
        try:
            with session.begin_nested():
                out.append(cancel(session, off_id, actor, reason))
        except OffboardingError as exc:
            out.append({"id": off_id, "state": "not_cancelled", "error": str(exc)})
    return out


# --- the outbox consumer ----------------------------------------------------------------------------
def consume_outbox(
    engine: sa.Engine, consumer: str, *, limit: int = 500, kinds: tuple[str, ...] | None = None
) -> dict[str, int]:
    """Claim and act on unconsumed directory records, one transaction each (compare-and-set on
    ``consumed_at IS NULL``: two consumers never both act on one). ``kinds``: only these."""
    stats = {"offboarded": 0, "cancelled": 0, "ignored": 0, "lost": 0}
    chats: list[int] = []
    query = sa.select(OUTBOX.c.id).where(OUTBOX.c.consumed_at.is_(None))
    if kinds is not None:
        query = query.where(OUTBOX.c.kind.in_(kinds))
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        ids = conn.execute(query.order_by(OUTBOX.c.id).limit(limit)).scalars().all()
    for outbox_id in ids:
        with Session(engine) as session, session.begin():
            won = session.execute(
                sa.update(OUTBOX)
                .where(OUTBOX.c.id == outbox_id, OUTBOX.c.consumed_at.is_(None))
                .values(consumed_at=utcnow(), consumed_by=consumer[:64])
            ).rowcount
            if not won:
                stats["lost"] += 1
                continue
            record = session.execute(sa.select(OUTBOX).where(OUTBOX.c.id == outbox_id)).one()
            stats[_consume(session, record, chats)] += 1
    if chats:  # one executor per chat for the whole batch, due after the coalescing window
        with Session(engine) as session, session.begin():
            schedule_apply(session, chats)
    return stats


def _consume(session: Session, record: Any, chats: list[int]) -> str:
    person = session.execute(sa.select(PERSON).where(PERSON.c.id == record.person_id)).first()
    if record.kind in ("departed", "disabled"):
        if person is None:
            return "ignored"
        try:
            with session.begin_nested():
                started = start_offboarding(
                    session, userid=person.userid, source="directory", outbox_id=record.id,
                    requested_by=f"directory:{record.source}", reason=record.kind, defer_apply=chats,
                )  # fmt: skip
        except OffboardingError as exc:
            log.warning("directory record %s: %s", record.id, exc)
            return "ignored"
        if record.kind == "departed" and started.offboarding_id is not None and not started.created:
            # The deletion is what groupchat/transfer waits for: hand the customer groups over now
            # (the minute customer_groups.sweep is only the backstop).
            from wecom_plugin.services import customer_groups

            off = session.execute(sa.select(OFF).where(OFF.c.id == started.offboarding_id)).first()
            if off is not None and off.state in OPEN_STATES:
                customer_groups.schedule(session, off)
        return "offboarded" if started.offboarding_id is not None else "ignored"
    if record.kind == "reactivated":
        done = cancel_for_person(session, record.person_id, f"directory:{record.source}", "reactivated (rehired)")
        return "cancelled" if any(d.get("state") == "cancelled" for d in done) else "ignored"
    if record.kind == "renamed":
        userids = ((record.detail or {}).get("changes") or {}).get("userid") or []
        if len(userids) == 2 and all(isinstance(u, str) and u for u in userids):
            from wecom_plugin.services.group_registry import rename_member

            rename_member(session, userids[0], userids[1], actor=f"directory:{record.source}")
    return "ignored"  # moved: the daily check applies department rules; renamed: followed above


# --- sweep, status ----------------------------------------------------------------------------------
def sweep(app: Any) -> dict[str, Any]:
    """The minute backstop: consume left-over directory records, plan scheduled offboardings whose
    time has come, requeue chats whose offboarding changes wait with nobody queued, settle the rest."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.governance_switches import effective

    with app.app_context():
        engine = db.engine
    settings = app.extensions["wecom_settings"]
    out: dict[str, Any] = {"outbox": consume_outbox(engine, "sweep")}
    with Session(engine) as session, session.begin():
        now = db_now(session)
        due = session.execute(
            sa.select(OFF.c.id).where(OFF.c.state == "scheduled", OFF.c.effective_at <= now)
        ).scalars().all()  # fmt: skip
        for off_id in due:
            run_scheduled(session, off_id)
        out["planned"] = len(due)
        open_ids = session.execute(sa.select(OFF.c.id).where(OFF.c.state.in_(("pending", "running")))).scalars().all()
        states = [settle(session, off_id) for off_id in open_ids]
        out["settled"] = sum(1 for s in states if s in FINISHED_STATES)
        if effective(session, settings.governance_mode).may_change_chats:
            stale = session.execute(
                sa.select(CHANGE.c.group_id)
                .where(
                    CHANGE.c.state == "pending",
                    CHANGE.c.source == "offboarding",
                    CHANGE.c.created_at < utcnow() - timedelta(minutes=2),
                )
                .distinct()
            ).scalars().all()  # fmt: skip
            waiting = {
                int((p or {}).get("group_id") or 0)
                for (p,) in session.execute(
                    sa.select(JOB.c.payload).where(
                        JOB.c.name == "groups.apply", JOB.c.state.in_((ClaimState.READY, ClaimState.RUNNING))
                    )
                ).all()
            }
            out["requeued"] = schedule_apply(session, [g for g in stale if g not in waiting])
    return out


def find(session: Session, ref: int | str) -> Any | None:
    """An offboarding by id, or the latest (canonical) one of a userid."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and not _person_exists(session, ref)):
        if not 1 <= int(ref) <= MAX_ID:  # an id the column cannot hold: not found, not an overflow
            return None
        row = session.execute(sa.select(OFF).where(OFF.c.id == int(ref))).first()
        if row is not None and row.state == ALIAS_STATE:
            row = session.execute(sa.select(OFF).where(OFF.c.id == _canonical_id(row))).first()
        return row
    return session.execute(
        sa.select(OFF)
        .where(OFF.c.userid_folded == fold(str(ref)), OFF.c.state != ALIAS_STATE)
        .order_by(OFF.c.id.desc())
        .limit(1)
    ).first()


def _person_exists(session: Session, userid: str) -> bool:
    return session.execute(sa.select(PERSON.c.id).where(PERSON.c.userid_folded == fold(userid))).first() is not None


def status(session: Session, ref: int | str) -> dict[str, Any] | None:
    """Progress and outcome, per chat (settles first; the caller commits)."""
    off = find(session, ref)
    if off is None:
        return None
    settle(session, off.id)
    return view(session, off.id)


def view(session: Session, offboarding_id: int) -> dict[str, Any]:
    off = session.execute(sa.select(OFF).where(OFF.c.id == offboarding_id)).one()
    rows = _rows(session, off.id)
    names = dict(
        session.execute(
            sa.select(GROUP.c.id, GROUP.c.name).where(GROUP.c.id.in_(sorted({r.group_id for r in rows}) or [0]))
        ).all()
    )
    chats = []
    counts = {s: 0 for s in ROW_STATES}
    latest: dict[int, Any] = {}
    for r in sorted(rows, key=lambda r: r.id):
        latest[r.group_id] = r  # the latest change per chat tells its progress
    for gid, r in sorted(latest.items()):
        counts[r.state] = counts.get(r.state, 0) + 1
        chats.append({
            "group_id": gid, "name": names.get(gid, ""), "state": r.state, "change_id": r.id,
            "errcode": r.errcode, "error": r.error, "applied_at": r.applied_at and r.applied_at.isoformat(),
        })  # fmt: skip
    manual = session.execute(sa.select(MANUAL).where(MANUAL.c.offboarding_id == off.id).order_by(MANUAL.c.id)).all()
    detail = dict(off.detail or {})

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": off.id, "userid": off.userid, "state": off.state, "source": off.source,
        "requested_by": off.requested_by, "reason": detail.get("reason") or None,
        "resolved_by": detail.get("resolved_by"),  # userid, or the 工号 table / directory field
        "effective_at": iso(off.effective_at), "created_at": iso(off.created_at),
        "finished_at": iso(off.finished_at), "cancelled_at": iso(off.cancelled_at),
        "counts": {k: v for k, v in counts.items() if v}, "chats": chats,
        "manual_actions": [
            {"id": m.id, "kind": m.kind, "group_id": m.group_id, "assignee": m.assignee, "state": m.state}
            for m in manual
        ],
        "customer_groups": _customer_groups_view(session, off.id),  # 客户群 handover (services/customer_groups.py)
    }  # fmt: skip


def _customer_groups_view(session: Session, offboarding_id: int) -> dict[str, Any] | None:
    from wecom_plugin.services import customer_groups

    return customer_groups.view(session, offboarding_id)


def person_status(session: Session, userid: str) -> int | None:
    return session.execute(sa.select(PERSON.c.status).where(PERSON.c.userid_folded == fold(userid))).scalar()


__all__ = [
    "COALESCE_WINDOW_SECONDS", "OffboardingError", "Started", "cancel",
    "cancel_for_person", "consume_outbox", "plan", "settle", "start_offboarding", "status", "sweep", "view",
]  # fmt: skip
