"""The directory mirror as membership rules read it: one :class:`InMemoryDirectory` per run.

A daily check evaluates every governed chat against the same directory, so the mirror is read
once, with raw column selects (no ORM objects: 100,000 people load in about a second), into the
pure :class:`~wecom_plugin.domain.membership.InMemoryDirectory`.

Tags: a member's tags are the tags they carry directly (``tag_member``) and the tags of any
department they are in or under (``tag.party_ids``: WeCom tags whole departments without
expanding them; message/send expands a tagged department with its sub-departments, and so do we).
Deleted departments and tags are left out.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain.directory import fold
from wecom_plugin.domain.membership import InMemoryDirectory, Person
from wecom_plugin.models.directory import Department, DirectoryChange, Tag, TagMember
from wecom_plugin.models.directory import Person as PersonRow

PERSON = PersonRow.__table__
DEPARTMENT = Department.__table__
TAG = Tag.__table__
TAG_MEMBER = TagMember.__table__
CHANGE = DirectoryChange.__table__


@dataclass
class DirectoryView:
    """The loaded directory plus what rules do not need but the check does (leaders, names)."""

    directory: InMemoryDirectory
    parents: dict[int, int] = field(default_factory=dict)
    leaders: dict[int, tuple[str, ...]] = field(default_factory=dict)  # department -> leader userids

    def person(self, userid: str) -> Person | None:
        return self.directory.person(userid)

    def name(self, userid: str) -> str:
        person = self.directory.person(userid)
        return person.name if person is not None and person.name else userid

    def department_leaders(self, department_id: int | None) -> list[str]:
        """Leaders of ``department_id``, then of each department above it, nearest first (deduplicated)."""
        out: list[str] = []
        seen_users: set[str] = set()
        seen_departments: set[int] = set()
        current = department_id
        while current and current not in seen_departments:
            seen_departments.add(current)
            for userid in self.leaders.get(current, ()):
                if fold(userid) not in seen_users:
                    seen_users.add(fold(userid))
                    out.append(userid)
            current = self.parents.get(current)
        return out


def _connect(engine_or_conn: Any):
    if isinstance(engine_or_conn, sa.Engine):
        return engine_or_conn.connect().execution_options(sqlite_begin="DEFERRED")
    return _Borrowed(engine_or_conn)


class _Borrowed:
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        return None


def load_view(engine_or_conn: Any) -> DirectoryView:
    """Read the mirror (an engine: a read-only connection of its own; or a connection/session)."""
    with _connect(engine_or_conn) as conn:
        departments = conn.execute(
            sa.select(DEPARTMENT.c.id, DEPARTMENT.c.parent_id, DEPARTMENT.c.leaders).where(
                DEPARTMENT.c.deleted_at.is_(None)
            )
        ).all()
        tags = conn.execute(sa.select(TAG.c.id, TAG.c.party_ids).where(TAG.c.deleted_at.is_(None))).all()
        direct_tags: dict[int, set[int]] = {}
        live_tags = {t.id for t in tags}
        for tag_id, person_id in conn.execute(sa.select(TAG_MEMBER.c.tag_id, TAG_MEMBER.c.person_id)):
            if tag_id in live_tags:
                direct_tags.setdefault(person_id, set()).add(tag_id)
        rows = conn.execute(
            sa.select(
                PERSON.c.id, PERSON.c.userid, PERSON.c.name, PERSON.c.status, PERSON.c.departments, PERSON.c.position
            )
        ).all()

    parents = {int(d.id): int(d.parent_id or 0) for d in departments}
    leaders = {int(d.id): tuple(d.leaders or ()) for d in departments if d.leaders}
    department_tags = _department_tags(parents, tags)
    people: list[Person] = []
    for pid, userid, name, status, deps, position in rows:
        deps = tuple(int(d) for d in deps or ())
        tag_ids = direct_tags.get(pid, set())
        if department_tags:
            inherited = [department_tags[d] for d in deps if d in department_tags]
            if inherited:
                tag_ids = tag_ids.union(*inherited)
        people.append(Person(userid, name or "", int(status), deps, position or "", frozenset(tag_ids)))
    return DirectoryView(InMemoryDirectory(people, parents, live_tags), parents, leaders)


# --- one loaded view per process, reused while the mirror has not changed ------------------------------
# Applying a chat re-evaluates its rule against the directory; loading 100,000 people for each chat
# (0.5 s of CPU at 20,000) made an offboarding of 50 chats take half a minute. Every write to the
# mirror adds a directory_change row, so the highest history id says whether a loaded view is current.
CACHE_MAX_AGE_SECONDS = 300.0  # and never older than this, whatever the stamp says
# Keyed by the engine object (weakly): one cache per database a process talks to.
_CACHE: weakref.WeakKeyDictionary[sa.Engine, tuple[Any, float, DirectoryView]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def mirror_stamp(conn: Any) -> Any:
    """Changes whenever the mirror does: the newest history id and the number of people."""
    newest = conn.execute(sa.select(sa.func.max(CHANGE.c.id))).scalar()
    people = conn.execute(sa.select(sa.func.count()).select_from(PERSON)).scalar()
    return (newest, people)


def current_view(engine: sa.Engine) -> DirectoryView:
    """:func:`load_view`, reused while :func:`mirror_stamp` is unchanged (and for at most
    CACHE_MAX_AGE_SECONDS). Views are read-only, so threads may share one."""
    with _connect(engine) as conn:
        stamp = mirror_stamp(conn)
    now = time.monotonic()
    with _CACHE_LOCK:
        cached = _CACHE.get(engine)
        if cached is not None and cached[0] == stamp and now - cached[1] < CACHE_MAX_AGE_SECONDS:
            return cached[2]
    view = load_view(engine)
    with _CACHE_LOCK:
        _CACHE[engine] = (stamp, now, view)
    return view


def _department_tags(parents: dict[int, int], tags: Iterable[Any]) -> dict[int, frozenset[int]]:
    """department -> tags it carries through a tagged department at or above it."""
    children: dict[int, list[int]] = {}
    for dep, parent in parents.items():
        if dep != parent:
            children.setdefault(parent, []).append(dep)
    out: dict[int, set[int]] = {}
    for tag in tags:
        for root in tag.party_ids or ():
            stack, seen = [int(root)], set()
            while stack:
                dep = stack.pop()
                if dep in seen:
                    continue
                seen.add(dep)
                out.setdefault(dep, set()).add(int(tag.id))
                stack.extend(children.get(dep, ()))
    return {d: frozenset(t) for d, t in out.items()}


def people_status(conn: Any, userids: Iterable[str]) -> dict[str, tuple[str, str, int]]:
    """folded userid -> (userid, name, status) for a few people (no full load)."""
    folded = sorted({fold(u) for u in userids if u})
    out: dict[str, tuple[str, str, int]] = {}
    for start in range(0, len(folded), 500):
        chunk = folded[start : start + 500]
        for f, userid, name, status in conn.execute(
            sa.select(PERSON.c.userid_folded, PERSON.c.userid, PERSON.c.name, PERSON.c.status).where(
                PERSON.c.userid_folded.in_(chunk)
            )
        ):
            out[f] = (userid, name or "", int(status))
    return out


MIRROR_MAX_AGE_FLOOR_MINUTES = 60  # never stricter than an hour (a sync takes a while)
MIRROR_MAX_AGE_DEFAULT_MINUTES = 24 * 60  # no schedule: a day


def mirror_problem(conn: Any, sync_minutes: int, now: Any = None) -> str | None:
    """Why the mirror cannot be trusted to say who is *not* in the directory, or None when it can.

    Trusted only when the newest full sync (not a dry run, not running) ended ``completed`` (not
    braked, incomplete or failed) within ``2 × DIRECTORY_SYNC_MINUTES`` (24 h without a schedule),
    and the mirror holds people at all.
    """
    from datetime import timedelta

    from wecom_plugin.models.base import utcnow
    from wecom_plugin.models.directory import DirectorySync

    sync = DirectorySync.__table__
    row = conn.execute(
        sa.select(sync.c.id, sync.c.state, sync.c.finished_at)
        .where(sa.not_(sync.c.dry_run), sync.c.state != "running")
        .order_by(sync.c.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return "no directory sync has finished / 通讯录尚未同步"
    if row.state != "completed":
        return f"the latest directory sync #{row.id} is {row.state} / 最近一次通讯录同步状态为 {row.state}"
    minutes = 2 * sync_minutes if sync_minutes else MIRROR_MAX_AGE_DEFAULT_MINUTES
    minutes = max(minutes, MIRROR_MAX_AGE_FLOOR_MINUTES)
    now = now or utcnow()
    if row.finished_at is None or row.finished_at < now - timedelta(minutes=minutes):
        return f"the latest directory sync #{row.id} is older than {minutes} min / 通讯录同步已过期"
    if conn.execute(sa.select(PERSON.c.userid_folded).limit(1)).first() is None:
        return "the directory mirror is empty / 通讯录镜像为空"
    return None
