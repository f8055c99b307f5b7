"""Writing the directory mirror: members, departments and tags, each change with its history row and,
for departures, disablements, reactivations and moves, one governance outbox record.

Every write is compare-and-set on the row's ``fingerprint`` (the hash of what WeCom last said): a
writer holding an older view (a sync that listed a department before a callback re-read the
member) changes nothing, and the next reconciliation settles any drift. So callbacks, syncs and
the HR path can run at once without one overwriting a newer answer with an older one.

Functions join the caller's transaction (a Connection); they never commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import DepartmentRecord, MemberRecord, TagRecord
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.directory import (
    Department,
    DirectoryChange,
    DirectoryOutbox,
    Person,
    Tag,
    TagMember,
)
from wecom_plugin.models.employee_numbers import EmployeeNumber
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import directory_bulk

PERSON = Person.__table__
DEPARTMENT = Department.__table__
TAG = Tag.__table__
TAG_MEMBER = TagMember.__table__
CHANGE = DirectoryChange.__table__
OUTBOX = DirectoryOutbox.__table__
EMPLOYEE_NUMBER = EmployeeNumber.__table__


@dataclass(frozen=True)
class Origin:
    """Where a change came from: ``source`` (callback, sync, hr, cli, retention) and its record."""

    source: str
    sync_id: int | None = None
    inbox_id: int | None = None
    reason: str | None = None

    def columns(self) -> dict[str, Any]:
        return {"source": self.source, "sync_id": self.sync_id, "inbox_id": self.inbox_id}


@dataclass
class Applied:
    """What one write did: ``kind`` is ``unchanged`` when nothing was written."""

    person_id: int | None
    kind: str
    changes: dict[str, list[Any]] = field(default_factory=dict)
    outbox: str | None = None


def record_of(row: Any) -> MemberRecord:
    """The MemberRecord a person row holds."""
    return MemberRecord(
        userid=row.userid,
        name=row.name,
        departments=tuple(row.departments or ()),
        main_department=row.main_department,
        position=row.position,
        is_leader_in_dept=tuple(row.is_leader_in_dept or ()),
        direct_leaders=tuple(row.direct_leaders or ()),
        status=row.status,
        employee_id=row.employee_id,
    )


def find_person(conn: sa.Connection, userid: str, *, lock: bool = False) -> Any | None:
    query = sa.select(PERSON).where(PERSON.c.userid_folded == rules.fold(userid))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).one_or_none()


def _history(conn: sa.Connection, origin: Origin, kind: str, detail: dict[str, Any], **ids: Any) -> int:
    if origin.reason:
        detail = {**detail, "reason": origin.reason}
    return conn.execute(
        sa.insert(CHANGE)
        .values(occurred_at=utcnow(), kind=kind, detail=detail, **origin.columns(), **ids)
        .returning(CHANGE.c.id)
    ).scalar_one()


def _outbox(conn: sa.Connection, kind: str, person_id: int, change_id: int, origin: Origin, detail: dict) -> None:
    conn.execute(
        insert_for(conn, OUTBOX)
        .values(
            kind=kind,
            person_id=person_id,
            change_id=change_id,
            source=origin.source,
            occurred_at=utcnow(),
            detail=detail,
        )
        .on_conflict_do_nothing(index_elements=["change_id"])
    )
    enqueue("offboarding.consume_outbox", {}, dedupe_key=f"offboarding.consume_outbox:{change_id}", session=conn)


def _change_kind(before: MemberRecord, after: MemberRecord) -> tuple[str, str | None]:
    """(history kind, outbox kind) for an update: status changes first, then renames, then moves."""
    status_kind = rules.status_change_kind(before.status, after.status)
    is_move = rules.moved(before.departments, after.departments)
    if status_kind:
        return status_kind, status_kind
    if before.folded != after.folded or before.userid != after.userid:
        return "renamed", "renamed"  # the registry names people by userid: it follows (a move rides along)
    if is_move:
        return "moved", "moved"
    return "updated", None


def upsert_member(
    conn: sa.Connection,
    rec: MemberRecord,
    origin: Origin,
    *,
    current: Any | None = None,
    expected: str | None = None,
) -> Applied:
    """Make the mirror hold ``rec``. Inserts a new person, or updates ``current`` (the row as read:
    for a rename, the person under the old id) when the fingerprint differs.

    ``expected``: the fingerprint the caller saw *before* it asked WeCom. If the row has changed
    since (another writer with a fresher answer got there first), nothing is written and the
    kind is ``stale``: the caller re-reads or leaves it to the next reconciliation. Without it the
    compare-and-set only guards against a change between reading ``current`` and writing.
    """
    fp = rec.fingerprint()
    if current is None:
        current = find_person(conn, rec.userid, lock=True)
    now = utcnow()
    values = rec.values()
    values["userid_folded"] = rec.folded
    if current is None:
        person_id = conn.execute(
            insert_for(conn, PERSON)
            .values(
                **values,
                fingerprint=fp,
                departed_at=now if rec.status == rules.LEFT else None,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["userid_folded"])
            .returning(PERSON.c.id)
        ).scalar_one_or_none()
        if person_id is None:  # a concurrent writer inserted them first; theirs is as fresh
            return Applied(None, "unchanged")
        _history(conn, origin, "hired", {"userid": rec.userid, "status": rec.status}, person_id=person_id)
        return Applied(person_id, "hired", {})
    if expected is not None and current.fingerprint != expected:
        return Applied(current.id, "stale")
    if current.fingerprint == fp and current.userid_folded == rec.folded:
        return Applied(current.id, "unchanged")
    before = record_of(current)
    changes = rules.diff(before.values(), values | {"userid": rec.userid})
    changes.pop("userid_folded", None)
    if not changes and current.userid_folded == rec.folded:
        # Same values under another fingerprint (the fingerprint's encoding changed in an upgrade):
        # refresh it quietly, so the history shows no change that never happened.
        conn.execute(
            sa.update(PERSON)
            .where(PERSON.c.id == current.id, PERSON.c.fingerprint == current.fingerprint)
            .values(fingerprint=fp)
        )
        return Applied(current.id, "unchanged")
    kind, outbox_kind = _change_kind(before, rec)
    extra: dict[str, Any] = {}
    if rec.status == rules.LEFT and current.departed_at is None:
        extra["departed_at"] = now
    elif rec.status != rules.LEFT and current.status == rules.LEFT:
        extra["departed_at"] = None
    updated = conn.execute(
        sa.update(PERSON)
        .where(PERSON.c.id == current.id, PERSON.c.fingerprint == current.fingerprint)
        .values(**values, fingerprint=fp, updated_at=now, **extra)
    ).rowcount
    if updated != 1:
        return Applied(current.id, "unchanged")
    change_id = _history(conn, origin, kind, {"changes": changes}, person_id=current.id)
    if outbox_kind:
        _outbox(conn, outbox_kind, current.id, change_id, origin, {"userid": rec.userid, "changes": changes})
    return Applied(current.id, kind, changes, outbox_kind)


def merge_person(conn: sa.Connection, keep: Any, duplicate: Any, origin: Origin) -> None:
    """Fold ``duplicate`` into ``keep``: one person seen under two ids because a rename's callback
    arrived after an update for the new id (which created a second person). History and outbox rows
    move to ``keep``; the duplicate's row goes. Tables that refer to people must move theirs here too.
    """
    conn.execute(sa.update(CHANGE).where(CHANGE.c.person_id == duplicate.id).values(person_id=keep.id))
    conn.execute(sa.update(OUTBOX).where(OUTBOX.c.person_id == duplicate.id).values(person_id=keep.id))
    conn.execute(sa.delete(TAG_MEMBER).where(TAG_MEMBER.c.person_id == duplicate.id))
    conn.execute(sa.delete(PERSON).where(PERSON.c.id == duplicate.id))
    _history(conn, origin, "merged", {"merged_person_id": duplicate.id, "userid": duplicate.userid}, person_id=keep.id)


def mark_departed(conn: sa.Connection, person: Any, origin: Origin) -> Applied:
    """Record a departure (delete_user, or absence confirmed by 60111): status 5, departed_at now.

    Compare-and-set on the fingerprint the caller read; already-departed people are left alone.
    """
    if person.status == rules.LEFT:
        return Applied(person.id, "unchanged")
    before = record_of(person)
    after = replace(before, status=rules.LEFT)
    now = utcnow()
    updated = conn.execute(
        sa.update(PERSON)
        .where(PERSON.c.id == person.id, PERSON.c.fingerprint == person.fingerprint)
        .values(status=rules.LEFT, departed_at=now, fingerprint=after.fingerprint(), updated_at=now)
    ).rowcount
    if updated != 1:
        return Applied(person.id, "unchanged")
    changes = {"status": [before.status, rules.LEFT]}
    change_id = _history(conn, origin, "departed", {"changes": changes}, person_id=person.id)
    _outbox(conn, "departed", person.id, change_id, origin, {"userid": person.userid, "changes": changes})
    return Applied(person.id, "departed", changes, "departed")


def bulk_insert_members(conn: sa.Connection, records: Sequence[MemberRecord], origin: Origin) -> int:
    """Insert people not yet in the mirror, each with a ``hired`` history row (a first sync of 100,000
    members; see :mod:`~wecom_plugin.services.directory_bulk` for how).

    Ids that exist by now (a concurrent callback) are skipped. Returns the number inserted.
    """
    return directory_bulk.insert_new_members(conn, records, origin, utcnow())


def person_ids_by_folded(conn: sa.Connection, folded: Iterable[str] | None) -> dict[str, int]:
    """Live people's ids by folded userid (chunked IN queries); ``None``: every live person."""
    live = sa.select(PERSON.c.userid_folded, PERSON.c.id).where(PERSON.c.status != rules.LEFT)
    if folded is None:
        return dict(conn.execute(live).all())
    folded = list(folded)
    out: dict[str, int] = {}
    for start in range(0, len(folded), 500):
        out.update(dict(conn.execute(live.where(PERSON.c.userid_folded.in_(folded[start : start + 500]))).all()))
    return out


# --- departments ------------------------------------------------------------------------------------
def upsert_department(conn: sa.Connection, rec: DepartmentRecord, origin: Origin, current: Any | None) -> str:
    """Insert or update one department; ``current`` is its row (or None). Returns the change kind."""
    fp = rec.fingerprint()
    now = utcnow()
    values = rec.values()
    values["parent_id"] = values.pop("parent_id")
    if current is None:
        inserted = conn.execute(
            insert_for(conn, DEPARTMENT)
            .values(**values, fingerprint=fp, updated_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        ).rowcount
        if not inserted:
            return "unchanged"
        _history(
            conn, origin, "department_created", {"name": rec.name, "parent_id": rec.parent_id}, department_id=rec.id
        )
        return "created"
    if current.fingerprint == fp and current.deleted_at is None:
        return "unchanged"
    before = {"name": current.name, "name_en": current.name_en, "parent_id": current.parent_id,
              "order": current.order, "leaders": list(current.leaders or [])}  # fmt: skip
    changes = rules.diff(before, {k: v for k, v in values.items() if k != "id"})
    updated = conn.execute(
        sa.update(DEPARTMENT)
        .where(DEPARTMENT.c.id == rec.id, DEPARTMENT.c.fingerprint == current.fingerprint)
        .values(**{k: v for k, v in values.items() if k != "id"}, fingerprint=fp, deleted_at=None, updated_at=now)
    ).rowcount
    if updated != 1:
        return "unchanged"
    _history(conn, origin, "department_updated", {"changes": changes}, department_id=rec.id)
    return "updated"


def bulk_insert_departments(conn: sa.Connection, records: Sequence[DepartmentRecord], origin: Origin) -> int:
    """Insert departments not yet in the mirror in one statement per table (a first sync of 2,000)."""
    if not records:
        return 0
    now = utcnow()
    rows = [{**rec.values(), "fingerprint": rec.fingerprint(), "updated_at": now} for rec in records]
    inserted = (
        conn.execute(
            insert_for(conn, DEPARTMENT).on_conflict_do_nothing(index_elements=["id"]).returning(DEPARTMENT.c.id),
            rows,
        )
        .scalars()
        .all()
    )
    names = {rec.id: rec for rec in records}
    if inserted:
        conn.execute(
            sa.insert(CHANGE),
            [
                {
                    "occurred_at": now,
                    "kind": "department_created",
                    "department_id": dep_id,
                    "detail": {"name": names[dep_id].name, "parent_id": names[dep_id].parent_id},
                    **origin.columns(),
                }
                for dep_id in inserted
            ],
        )
    return len(inserted)


def mark_department_deleted(conn: sa.Connection, dep_id: int, origin: Origin) -> bool:
    now = utcnow()
    done = conn.execute(
        sa.update(DEPARTMENT)
        .where(DEPARTMENT.c.id == dep_id, DEPARTMENT.c.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
    ).rowcount
    if done:
        _history(conn, origin, "department_deleted", {}, department_id=dep_id)
    return bool(done)


# --- tags ---------------------------------------------------------------------------------------------
def upsert_tag(
    conn: sa.Connection, rec: TagRecord, origin: Origin, current: Any | None, person_ids: dict[str, int]
) -> str:
    """Insert or update one tag and its direct members (folded userid -> person id via ``person_ids``)."""
    wanted = {person_ids[u] for u in rec.users if u in person_ids}
    fp = rec.fingerprint()
    if current is not None and current.fingerprint == fp and current.deleted_at is None:
        return "unchanged"
    if len(wanted) < len(rec.users):
        # Some members are not in the mirror yet (tag and member events are unordered, §8.5): store
        # no fingerprint, so the next sync compares unequal and fills them in.
        fp = ""
    now = utcnow()
    if current is None:
        conn.execute(
            insert_for(conn, TAG)
            .values(id=rec.id, name=rec.name, party_ids=list(rec.party_ids), fingerprint=fp, updated_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        kind = "tag_created"
    else:
        conn.execute(
            sa.update(TAG)
            .where(TAG.c.id == rec.id)
            .values(name=rec.name, party_ids=list(rec.party_ids), fingerprint=fp, deleted_at=None, updated_at=now)
        )
        kind = "tag_updated"
    have = set(conn.execute(sa.select(TAG_MEMBER.c.person_id).where(TAG_MEMBER.c.tag_id == rec.id)).scalars())
    added, removed = sorted(wanted - have), sorted(have - wanted)
    if removed:
        conn.execute(sa.delete(TAG_MEMBER).where(TAG_MEMBER.c.tag_id == rec.id, TAG_MEMBER.c.person_id.in_(removed)))
    if added:
        conn.execute(sa.insert(TAG_MEMBER), [{"tag_id": rec.id, "person_id": p} for p in added])
    _history(
        conn,
        origin,
        kind,
        {"name": rec.name, "added": added, "removed": removed, "parties": list(rec.party_ids)},
        tag_id=rec.id,
    )
    return "created" if current is None else "updated"


def mark_tag_deleted(conn: sa.Connection, tag_id: int, origin: Origin) -> bool:
    now = utcnow()
    done = conn.execute(
        sa.update(TAG).where(TAG.c.id == tag_id, TAG.c.deleted_at.is_(None)).values(deleted_at=now, updated_at=now)
    ).rowcount
    if done:
        conn.execute(sa.delete(TAG_MEMBER).where(TAG_MEMBER.c.tag_id == tag_id))
        _history(conn, origin, "tag_deleted", {}, tag_id=tag_id)
    return bool(done)


# --- retention (PIPL) -----------------------------------------------------------------------------------
def minimise_departed(conn: sa.Connection, before: datetime, *, limit: int = 1000) -> int:
    """Strip the personal data of people who left before ``before``: name, position, departments,
    leaders, employee number (and their rows of the imported 工号 table) and the userid itself
    (replaced by ``departed-<id>``). Their history keeps ids, kinds and dates; its field values are
    removed. Returns how many people were minimised."""
    ids = list(
        conn.execute(
            sa.select(PERSON.c.id)
            .where(PERSON.c.status == rules.LEFT, PERSON.c.departed_at < before, PERSON.c.minimised_at.is_(None))
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    now = utcnow()
    for pid in ids:
        pseudonym = f"~departed-{pid}"  # "~" never appears in a WeCom userid: no collision
        conn.execute(
            sa.update(PERSON)
            .where(PERSON.c.id == pid)
            .values(
                userid=pseudonym,
                userid_folded=pseudonym,
                name="",
                position="",
                departments=[],
                main_department=None,
                is_leader_in_dept=[],
                direct_leaders=[],
                employee_id=None,
                fingerprint="",
                minimised_at=now,
                updated_at=now,
            )
        )
    _strip_history(conn, ids)
    conn.execute(sa.delete(TAG_MEMBER).where(TAG_MEMBER.c.person_id.in_(ids)))
    conn.execute(sa.delete(EMPLOYEE_NUMBER).where(EMPLOYEE_NUMBER.c.person_id.in_(ids)))
    conn.execute(
        sa.insert(CHANGE),
        [
            {"occurred_at": now, "source": "retention", "kind": "minimised", "person_id": pid, "detail": {}}
            for pid in ids
        ],
    )
    return len(ids)


def _strip_history(conn: sa.Connection, person_ids: Iterable[int]) -> None:
    """Keep each history row's kind, source and date; drop the values (names, userids, positions)."""
    ids = list(person_ids)
    conn.execute(sa.update(CHANGE).where(CHANGE.c.person_id.in_(ids)).values(detail={"minimised": True}))
    conn.execute(sa.update(OUTBOX).where(OUTBOX.c.person_id.in_(ids)).values(detail={}))


def move_aside(conn: sa.Connection, person: Any, origin: Origin) -> None:
    """Free a departed person's userid for someone WeCom now gives it to (a rename onto a reused id).

    The departed row keeps its name and history; only its lookup key changes.
    """
    aside = f"~{person.id}~{person.userid_folded}"[:64]
    conn.execute(sa.update(PERSON).where(PERSON.c.id == person.id).values(userid_folded=aside))
    _history(conn, origin, "id_released", {"userid": person.userid}, person_id=person.id)
