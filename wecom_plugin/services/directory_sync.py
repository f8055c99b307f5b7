"""Full sync: walk WeCom's directory and make the mirror match it, safely.

The walk (app secret, root visibility; contract §2): ``department/list`` once, ``user/list`` per
department, then ``tag/list`` and ``tag/get`` per tag. That is the lower bound of calls (1 +
departments + 1 + tags); a sync adds ``user/get`` only for members it did not see, to confirm a
departure, and ``user/list_id`` (contact-sync secret, ids only) as a cheap cross-check when one is
configured.

* **Bounded concurrency**: ``DIRECTORY_SYNC_CONCURRENCY`` reads in flight, each through the budget
  service (WeCom's 10,000/min per API, §10.2), from worker threads; every database write happens on
  the calling thread in short transactions, never while waiting for WeCom.
* **Streamed**: departments are read through a sliding window and their members folded in as they
  arrive; the sync keeps an index of the mirror (id, fingerprint, status per member) and the set
  of ids seen, not the tenant.
* **Writes only differences**: rows are compared by fingerprint; a re-sync that finds nothing new
  writes nothing but its own ``directory_sync`` record.
* **Never a mass departure by mistake**: a member absent from the lists departs only when the sync
  was complete (every read succeeded, root visible) and ``user/get`` answers 60111; a member
  whose id vanished while an identical person appeared is a rename, not a departure; and more than
  max(10, 5 %) departures stop the sync (``braked``) until ``wecom-plugin directory confirm``.
  An empty directory, a failed read, 60020 or 48009 change nothing and raise one alert.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import DepartmentRecord, MemberRecord, TagRecord
from wecom_plugin.errors import RateLimitedError
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.dbtime import sql_now
from wecom_plugin.models.directory import DirectorySync
from wecom_plugin.services import directory_mirror as mirror
from wecom_plugin.services.alerts import raise_alert
from wecom_plugin.services.directory_alerts import raise_scope_alert, raise_setup_alert
from wecom_plugin.services.directory_mirror import DEPARTMENT, PERSON, TAG, Origin
from wecom_plugin.wecom import errors as wecom_errors
from wecom_plugin.wecom.api import department as department_api
from wecom_plugin.wecom.api import tag as tag_api
from wecom_plugin.wecom.api import user as user_api
from wecom_plugin.wecom.budget import BudgetExhausted, read_asks
from wecom_plugin.wecom.diagnosis import diagnose
from wecom_plugin.wecom.errors import WeComError

log = logging.getLogger("wecom_plugin.directory")

SYNC = DirectorySync.__table__
UPDATE_BATCH = 500  # changed members written per transaction
INSERT_BATCH = 2000  # new members inserted per statement
NEWCOMER_HOLD = 5000  # new members held back for rename matching before they are inserted
BIG_TAG = 2000  # a tag with more members than this resolves them with one scan of the mirror
READ_AHEAD = 64  # answers in flight or waiting for the caller, at most
RESERVE_CHUNK = 200  # read budget reserved at a time (one budget transaction per 200 reads, not per read)
ABANDONED_AFTER_SECONDS = 3 * 3600  # a sync "running" longer than this lost its process


class SyncAborted(Exception):
    """The sync stopped before applying departures (the reason is on the sync record)."""


class SyncBusy(Exception):
    """Another sync is running (one at a time, across every process: a partial unique index)."""


@dataclass
class SyncReport:
    """What a sync did (or, dry run, would do). ``state`` as on :class:`DirectorySync`."""

    sync_id: int
    state: str
    dry_run: bool
    stats: dict[str, Any] = field(default_factory=dict)
    planned_departures: list[int] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "sync_id": self.sync_id,
            "state": self.state,
            "dry_run": self.dry_run,
            "stats": self.stats,
            "planned_departures": len(self.planned_departures),
            "error": self.error,
        }


@dataclass
class _Index:
    """The mirror as it stood when the sync began: folded userid -> (id, fingerprint, status)."""

    members: dict[str, tuple[int, str, int]]
    departments: dict[int, Any]
    tags: dict[int, Any]

    @property
    def live_members(self) -> int:
        return sum(1 for _id, _fp, status in self.members.values() if status != rules.LEFT)


class _Reader:
    """Directory reads on a bounded pool of threads, one WeCom client per thread."""

    def __init__(self, make_client: Callable[[], Any], concurrency: int, guard: Callable[[], None] | None) -> None:
        self._make_client = make_client
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="directory-sync")
        # Answers read ahead of the caller: enough that the readers keep going while the caller
        # writes a batch (a first sync inserts 2,000 members at a time), small enough to stay
        # bounded (64 answers of ~50 members each: well under 10 MB).
        self.window = max(READ_AHEAD, concurrency * 2)
        self.guard = guard
        self.calls = 0
        self.waited = 0.0  # seconds the caller spent waiting for an answer (the walk is read-bound then)
        self._reserved: dict[str, int] = {}

    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._make_client()
            with self._lock:
                self._clients.append(client)
        return client

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            self.calls += 1
        return fn(self.client(), *args, spend=())  # the budget was reserved by reserve()

    def reserve(self, path: str, upcoming: int | None = None) -> None:
        """Take one read of ``path`` from the budget service, reserving up to RESERVE_CHUNK at a time.

        Directory reads count against WeCom's per-API limits (10,000/min, 150,000/h per corp, §10.2)
        shared with every other process; reserving in chunks keeps that to one budget transaction
        per 200 reads. ``upcoming`` (the reads still to come, when known) caps the chunk, so a small
        walk reserves no more than it makes. A denial raises BudgetExhausted (a rate limit: the job
        is retried later).
        """
        left = self._reserved.get(path, 0)
        if left == 0:
            chunk = RESERVE_CHUNK if upcoming is None else max(1, min(RESERVE_CHUNK, upcoming))
            budget = getattr(self.client(), "budget", None)
            if budget is not None:
                grant = budget.acquire_many(read_asks(path, chunk))
                if not grant.ok:
                    raise BudgetExhausted(grant, path)
            left = chunk
        self._reserved[path] = left - 1

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], path: str
    ) -> Iterator[tuple[Any, Any, BaseException | None]]:
        """Yield ``(item, result, error)`` in submission order, at most ``window`` calls in flight.

        The guard (a job's lease check) runs on the calling thread before each submission, so a
        sync whose job lost its lease stops asking WeCom.
        """
        pending: deque[tuple[Any, Future]] = deque()
        upcoming = len(items) if isinstance(items, Sized) else None
        items = iter(items)
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < self.window:
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                if self.guard is not None:
                    self.guard()
                self.reserve(path, upcoming)
                if upcoming is not None:
                    upcoming -= 1
                pending.append((item, self._pool.submit(self.call, fn, item)))
            if not pending:
                break
            item, future = pending.popleft()
            try:
                if not future.done():
                    started = time.perf_counter()
                    futures_wait([future])
                    self.waited += time.perf_counter() - started
                yield item, future.result(), None
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its item
                yield item, None, exc

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for client in self._clients:
            client.close()


class FullSync:
    """One full sync run. Use :func:`run_sync`."""

    def __init__(
        self,
        engine: sa.Engine,
        reader: _Reader,
        *,
        dry_run: bool,
        trigger: str,
        contact_client: Callable[[], Any] | None = None,
        confirmed_sync: int | None = None,
        include_tags: bool = True,
        employee_field: str = "",
    ) -> None:
        self.engine = engine
        self.employee_field = employee_field  # EMPLOYEE_ID_FIELD: where members' 工号 is
        self.include_tags = include_tags
        self.reader = reader
        self.dry_run = dry_run
        self.trigger = trigger
        self.contact_client = contact_client
        self.confirmed_sync = confirmed_sync
        self.stats: dict[str, Any] = {
            "departments": 0,
            "members": 0,
            "tags": 0,
            "hired": 0,
            "updated": 0,
            "renamed": 0,
            "departed": 0,
            "departments_changed": 0,
            "tags_changed": 0,
            "missed_by_lists": 0,
            "failed_reads": 0,
        }
        self.sync_id = 0
        self.origin = Origin("sync")
        self.complete = True
        self.problems: list[str] = []

    # ---- lifecycle ------------------------------------------------------------------------------
    def run(self) -> SyncReport:
        self._start()
        self.origin = Origin("sync", sync_id=self.sync_id)
        try:
            planned = self._walk()
        except SyncAborted as exc:
            return self._finish("failed", error=str(exc))
        except RateLimitedError as exc:
            self._finish("failed", error=f"rate limited: {exc}")
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised (Ctrl-C included)
            self._finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        if self.dry_run:
            # A dry run never leaves a brake to confirm; what it would do is in its stats.
            self.stats["planned_departures"] = len(planned or [])
            return self._finish("dry_run")
        if planned is not None:
            return self._finish("braked", planned=planned)
        return self._finish("completed" if self.complete else "incomplete", error="; ".join(self.problems) or None)

    def _start(self) -> None:
        """Record the run; one non-dry sync at a time (a partial unique index on ``state = 'running'``)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(SYNC)
                .where(SYNC.c.state == "running", SYNC.c.started_at < sql_now(-ABANDONED_AFTER_SECONDS))
                .values(state="failed", error="abandoned: its process stopped", finished_at=sql_now())
            )
        try:
            with self.engine.begin() as conn:
                self.sync_id = conn.execute(
                    sa.insert(SYNC)
                    .values(trigger=self.trigger, dry_run=self.dry_run, state="running", started_at=utcnow(), stats={})
                    .returning(SYNC.c.id)
                ).scalar_one()
        except sa.exc.IntegrityError as exc:
            with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
                other = conn.execute(
                    sa.select(SYNC.c.id, SYNC.c.started_at).where(SYNC.c.state == "running", SYNC.c.dry_run.is_(False))
                ).first()
            which = f"#{other.id} (started {other.started_at:%Y-%m-%d %H:%M:%S}Z)" if other else "another"
            raise SyncBusy(f"directory sync {which} is still running") from exc

    def _finish(self, state: str, *, error: str | None = None, planned: list[int] | None = None) -> SyncReport:
        self.stats["api_calls"] = self.reader.calls
        if self.reader.waited:
            self.stats.setdefault("seconds", {})["waiting_for_wecom"] = round(self.reader.waited, 3)
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(SYNC)
                .where(SYNC.c.id == self.sync_id)
                .values(
                    state=state,
                    finished_at=utcnow(),
                    stats=self.stats,
                    error=(error or None) and error[:2000],
                    planned_departures=planned or [],
                )
            )
        log.info("directory sync #%s %s: %s", self.sync_id, state, self.stats)
        return SyncReport(self.sync_id, state, self.dry_run, dict(self.stats), planned or [], error)

    def _abort(self, key: str, zh: str, en: str, detail: dict[str, Any]) -> SyncAborted:
        with self.engine.begin() as conn:
            raise_alert(key, title_zh=zh, title_en=en, detail={**detail, "sync_id": self.sync_id}, session=conn)
        return SyncAborted(en)

    def _setup_problem(self, exc: WeComError) -> SyncAborted:
        with self.engine.begin() as conn:
            detail = raise_setup_alert(
                conn, exc, title_zh="通讯录同步失败", title_en="Directory sync failed", sync_id=self.sync_id
            )
        said = f"\nWeCom: {detail['wecom_errmsg']}" if detail["wecom_errmsg"] else ""
        return SyncAborted(detail["fix"] + said)

    # ---- the walk ------------------------------------------------------------------------------------
    def _walk(self) -> list[int] | None:
        """Returns the planned departures when the brake stops the sync, else None."""
        try:
            self.reader.reserve("department/list", 1)
            raw_departments = self.reader.call(department_api.list_departments)
        except WeComError as exc:
            if diagnose(exc.errcode) is not None:
                raise self._setup_problem(exc) from exc
            raise SyncAborted(f"department/list failed: {exc}") from exc
        departments = []
        for row in raw_departments:
            try:
                departments.append(DepartmentRecord.from_api(row))
            except ValueError:
                continue
        if not departments:
            raise self._abort(
                "directory.empty",
                "通讯录同步已停止：企业微信返回了空的部门列表（可能是权限丢失），未做任何更改",
                "Directory sync stopped: WeCom answered an empty department list (lost permission?); nothing changed",
                {"endpoint": "department/list"},
            )
        self.stats["departments"] = len(departments)
        if 1 not in {d.id for d in departments}:
            self._incomplete("root department not visible: set the app's visibility to the whole company")
            self._scope_alert()
        with self._timed("index"):
            index = self._load_index()
        with self._timed("departments"):
            self._apply_departments(departments, index)
        with self._timed("members"):
            seen, newcomers, leaving = self._walk_members(departments, index)
        with self._timed("absent"):
            planned = self._settle_absent(index, seen, newcomers, leaving)
        if planned is not None:
            return planned
        self._delete_departments(index, {d.id for d in departments})
        if self.include_tags:
            with self._timed("tags"):
                self._walk_tags(index)
        return None

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Seconds per phase in the run's stats (``seconds``), for ``directory status --json`` and the bench."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = self.stats.setdefault("seconds", {})
            seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - started, 3)

    def _incomplete(self, why: str) -> None:
        self.complete = False
        if why not in self.problems:
            self.problems.append(why)

    def _scope_alert(self) -> None:
        with self.engine.begin() as conn:
            raise_scope_alert(conn, {"sync_id": self.sync_id})

    def _load_index(self) -> _Index:
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            members = {
                folded: (pid, fp, status)
                for pid, folded, fp, status in conn.execute(
                    sa.select(PERSON.c.id, PERSON.c.userid_folded, PERSON.c.fingerprint, PERSON.c.status)
                )
            }
            departments = {row.id: row for row in conn.execute(sa.select(DEPARTMENT))}
            tags = {row.id: row for row in conn.execute(sa.select(TAG))}
        return _Index(members, departments, tags)

    # ---- departments ---------------------------------------------------------------------------------
    def _apply_departments(self, departments: list[DepartmentRecord], index: _Index) -> None:
        changed = [d for d in departments if not _unchanged(d, index.departments.get(d.id))]
        self.stats["departments_changed"] = len(changed)
        if self.dry_run or not changed:
            return
        with self.engine.begin() as conn:
            mirror.bulk_insert_departments(conn, [d for d in changed if d.id not in index.departments], self.origin)
            for dep in changed:
                if dep.id in index.departments:
                    mirror.upsert_department(conn, dep, self.origin, index.departments[dep.id])

    def _delete_departments(self, index: _Index, listed: set[int]) -> None:
        """Departments missing from a complete answer are gone (decided only after a complete, unbraked
        member walk); a partial answer proves nothing."""
        gone = [i for i, row in index.departments.items() if row.deleted_at is None and i not in listed]
        if not gone or not self.complete or len(gone) > rules.brake_threshold(len(index.departments)):
            return
        self.stats["departments_changed"] += len(gone)
        if self.dry_run:
            return
        with self.engine.begin() as conn:
            for dep_id in gone:
                mirror.mark_department_deleted(conn, dep_id, self.origin)

    # ---- members ---------------------------------------------------------------------------------------
    def _walk_members(
        self, departments: list[DepartmentRecord], index: _Index
    ) -> tuple[set[str], dict[str, MemberRecord], list[tuple[MemberRecord, int, str]]]:
        """List every department's members; write changes as they come, except status changes that
        take someone out (disabled, left): those count towards the brake and wait for its verdict."""
        seen: set[str] = set()
        changed: list[tuple[MemberRecord, int, str]] = []
        leaving: list[tuple[MemberRecord, int, str]] = []
        newcomers: dict[str, MemberRecord] = {}
        first_sync = not index.members
        for dep, rows, error in self.reader.map(user_api.list_users, [d.id for d in departments], "user/list"):
            if error is not None:
                self._read_failed(error, f"user/list department {dep}")
                continue
            for row in rows:
                userid = row.get("userid")
                if not isinstance(userid, str) or not userid.strip():
                    continue
                folded = rules.fold(userid)
                if folded in seen:
                    continue  # listed again under another of their departments
                seen.add(folded)
                known = index.members.get(folded)
                if known is None:
                    newcomers[folded] = MemberRecord.from_api(row, rules.ACTIVE, self.employee_field)
                    continue
                if rules.row_fingerprint(row, known[2], self.employee_field) == known[1]:
                    continue  # unchanged, the usual case: no record built
                rec = MemberRecord.from_api(row, known[2], self.employee_field)
                entry = (rec, known[0], known[1])
                if rec.status in rules.GONE and known[2] not in rules.GONE:
                    leaving.append(entry)
                else:
                    changed.append(entry)
            if len(changed) >= UPDATE_BATCH:
                self._write_changed(changed)
                changed = []
            if first_sync and len(newcomers) >= INSERT_BATCH:
                self._insert_newcomers(newcomers)
                newcomers = {}
        self._write_changed(changed)
        self.stats["members"] = len(seen)
        return seen, newcomers, leaving

    def _read_failed(self, error: BaseException, what: str) -> None:
        if isinstance(error, WeComError) and diagnose(error.errcode) is not None:
            raise self._setup_problem(error) from error
        if isinstance(error, RateLimitedError):
            raise error
        self.stats["failed_reads"] += 1
        self._incomplete(f"{what}: {error}"[:300])

    def _write_changed(self, changed: list[tuple[MemberRecord, int, str]]) -> None:
        """Write listed members whose answer differs, unless the row changed since the index was
        read (a callback wrote a fresher answer meanwhile: the next reconciliation compares again)."""
        if not changed:
            return
        if self.dry_run:
            for rec, _pid, _fp in changed:
                self._count("departed" if rec.status == rules.LEFT else "updated")
            return
        with self._timed("member_writes"), self.engine.begin() as conn:
            ids = [pid for _r, pid, _fp in changed]
            rows = {r.id: r for r in conn.execute(sa.select(PERSON).where(PERSON.c.id.in_(ids)))}
            for rec, pid, fp in changed:
                if pid in rows:
                    applied = mirror.upsert_member(conn, rec, self.origin, current=rows[pid], expected=fp)
                    self._count(applied.kind)

    def _count(self, kind: str) -> None:
        if kind in ("unchanged", "stale"):
            if kind == "stale":
                self.stats["stale_skipped"] = self.stats.get("stale_skipped", 0) + 1
            return
        key = kind if kind in ("hired", "renamed", "departed") else "updated"
        self.stats[key] += 1

    def _insert_newcomers(self, newcomers: dict[str, MemberRecord]) -> None:
        if not newcomers:
            return
        if self.dry_run:
            self.stats["hired"] += len(newcomers)
            return
        records = list(newcomers.values())
        with self._timed("member_writes"):
            self._insert_records(records)

    def _insert_records(self, records: list[MemberRecord]) -> None:
        for start in range(0, len(records), INSERT_BATCH):
            with self.engine.begin() as conn:
                self.stats["hired"] += mirror.bulk_insert_members(
                    conn, records[start : start + INSERT_BATCH], self.origin
                )

    # ---- absent members: departures, renames, the brake --------------------------------------------------
    def _settle_absent(
        self,
        index: _Index,
        seen: set[str],
        newcomers: dict[str, MemberRecord],
        leaving: list[tuple[MemberRecord, int, str]],
    ) -> list[int] | None:
        """Decide about members the lists did not show and those whose status took them out.

        Returns the planned departures when the brake stops the sync. Newcomers are held back when
        the sync is braked or incomplete: inserted now, they could no longer be matched to members
        whose ids were renamed, and those would depart once someone confirms.
        """
        fingerprints = {v[0]: v[1] for f, v in index.members.items() if f not in seen and v[2] != rules.LEFT}
        if fingerprints and not self.complete:
            self.stats["absent_unconfirmed"] = len(fingerprints)  # a partial answer proves nothing
            self.stats["held_newcomers"] = len(newcomers)
            return None
        threshold = rules.brake_threshold(index.live_members)
        confirmed_id, allowed = self._confirmed_departures()
        outgoing = set(fingerprints) | {pid for _r, pid, _fp in leaving}
        if len(outgoing - allowed) > threshold:
            self.stats["held_newcomers"] = len(newcomers)
            return self._brake(sorted(outgoing), threshold, index.live_members)
        self._write_changed(leaving)
        gone: dict[int, MemberRecord] = {}
        rows = self._person_rows(fingerprints)
        ids = [pid for pid in rows if rows[pid].fingerprint == fingerprints[pid]]  # unchanged since listed
        ask = lambda client, pid, spend: user_api.get(client, rows[pid].userid, spend=spend)  # noqa: E731
        for pid, answer, error in self.reader.map(ask, ids, "user/get"):
            if error is None:
                # Listed nowhere, yet WeCom knows them: the lists missed someone (scope, timing).
                self.stats["missed_by_lists"] += 1
                self._apply_member_answer(answer, rows[pid], fingerprints[pid])
            elif isinstance(error, WeComError) and error.errcode == wecom_errors.USERID_NOT_FOUND:
                gone[pid] = mirror.record_of(rows[pid])
            elif isinstance(error, WeComError) and error.errcode == wecom_errors.NO_PRIVILEGE:
                self._scope_alert()
            else:
                self._read_failed(error, f"user/get for person #{pid}")
        if gone:
            self._cross_check(gone, rows)
        renames = rules.match_renames(gone, newcomers)
        self._apply_renames(renames, newcomers, rows, fingerprints)
        for pid in renames:
            gone.pop(pid, None)
        self._insert_newcomers(newcomers)
        if self.complete:
            self._depart(gone, rows, fingerprints)
            self._mark_confirmation_applied(confirmed_id)
        else:
            self.stats["absent_unconfirmed"] = len(gone)
        return None

    def _confirmed_departures(self) -> tuple[int | None, set[int]]:
        """The newest confirmed brake not yet applied (any sync applies it, not only the one the
        confirmation started) and its departures."""
        query = sa.select(SYNC.c.id, SYNC.c.planned_departures).where(SYNC.c.state == "confirmed")
        if self.confirmed_sync is not None:
            query = query.where(SYNC.c.id == self.confirmed_sync)
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            row = conn.execute(query.order_by(SYNC.c.id.desc()).limit(1)).one_or_none()
        return (row.id, set(row.planned_departures or [])) if row is not None else (None, set())

    def _mark_confirmation_applied(self, confirmed_id: int | None) -> None:
        if confirmed_id is None or self.dry_run:
            return
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(SYNC).where(SYNC.c.id == confirmed_id, SYNC.c.state == "confirmed").values(state="applied")
            )

    def _brake(self, planned: list[int], threshold: int, live: int) -> list[int]:
        self.stats["planned_departures"] = len(planned)
        if not self.dry_run:
            with self.engine.begin() as conn:
                raise_alert(
                    "directory.brake",
                    title_zh=f"通讯录同步已暂停：将有 {len(planned)} 人被判定离职（上限 {threshold}），需人工确认",
                    title_en=f"Directory sync braked: {len(planned)} members would depart (limit {threshold}); "
                    "if that is real, run `wecom-plugin directory confirm --by NAME`",
                    severity="critical",
                    detail={"sync_id": self.sync_id, "planned": len(planned), "threshold": threshold, "members": live},
                    session=conn,
                )
        return planned

    def _person_rows(self, ids: Iterable[int]) -> dict[int, Any]:
        ids = list(ids)
        out: dict[int, Any] = {}
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                out.update({r.id: r for r in conn.execute(sa.select(PERSON).where(PERSON.c.id.in_(chunk)))})
        return out

    def _apply_member_answer(self, answer: dict[str, Any], row: Any, expected: str) -> None:
        try:
            rec = MemberRecord.from_api(answer, row.status, self.employee_field)
        except ValueError:
            return
        if self.dry_run:
            return
        with self.engine.begin() as conn:
            self._count(mirror.upsert_member(conn, rec, self.origin, current=row, expected=expected).kind)

    def _cross_check(self, gone: dict[int, MemberRecord], rows: dict[int, Any]) -> None:
        """``user/list_id`` (contact-sync secret, ids only): anyone it still lists is not gone."""
        if self.contact_client is None:
            return
        client = self.contact_client()
        try:
            listed = set()
            for page in user_api.list_id_pages(client):
                self.reader.calls += 1  # spent by the contact-sync client's own budget asks
                listed.update(rules.fold(str(r.get("userid", ""))) for r in page.rows)
        except WeComError as exc:
            self.problems.append(f"user/list_id cross-check skipped: errcode {exc.errcode}")
            if diagnose(exc.errcode) is not None:  # e.g. 48002: WECOM_CONTACT_SECRET holds the app's secret
                with self.engine.begin() as conn:
                    raise_setup_alert(
                        conn,
                        exc,
                        title_zh="通讯录同步助手 Secret 配置有误",
                        title_en="The contact-sync secret is misconfigured",
                        severity="warning",
                        sync_id=self.sync_id,
                    )
            return
        finally:
            client.close()
        for pid in [p for p in gone if rows[p].userid_folded in listed]:
            gone.pop(pid)
            self.stats["kept_by_list_id"] = self.stats.get("kept_by_list_id", 0) + 1

    def _apply_renames(
        self, renames: dict[int, str], newcomers: dict[str, MemberRecord], rows: dict, fingerprints: dict[int, str]
    ) -> None:
        for pid, folded in renames.items():
            rec = newcomers.pop(folded)
            self.stats["renamed"] += 1
            if self.dry_run:
                continue
            origin = Origin("sync", sync_id=self.sync_id, reason="inferred rename: the old id answers 60111")
            with self.engine.begin() as conn:
                mirror.upsert_member(conn, rec, origin, current=rows[pid], expected=fingerprints[pid])

    def _depart(self, gone: dict[int, MemberRecord], rows: dict[int, Any], fingerprints: dict[int, str]) -> None:
        if self.dry_run:
            self.stats["departed"] += len(gone)
            return
        origin = Origin("sync", sync_id=self.sync_id, reason="absent from a complete full sync; user/get 60111")
        for pid in gone:
            if rows[pid].fingerprint != fingerprints[pid]:
                continue  # changed since it was listed: not ours to decide now
            with self.engine.begin() as conn:
                self._count(mirror.mark_departed(conn, rows[pid], origin).kind)

    # ---- tags --------------------------------------------------------------------------------------------
    def _walk_tags(self, index: _Index) -> None:
        try:
            self.reader.reserve("tag/list", 1)
            tags = self.reader.call(tag_api.list_tags)
        except WeComError as exc:
            self._read_failed(exc, "tag/list")
            return
        self.stats["tags"] = len(tags)
        names = {int(t["tagid"]): str(t.get("tagname") or "") for t in tags if "tagid" in t}
        everyone: dict[str, int] | None = None  # every live person's id, loaded once for big tags
        for tagid, detail, error in self.reader.map(tag_api.get, list(names), "tag/get"):
            if error is not None:
                self._read_failed(error, f"tag/get {tagid}")
                continue
            rec = TagRecord.from_api(tagid, names[tagid], detail)
            current = index.tags.get(tagid)
            if _unchanged(rec, current):
                continue
            self.stats["tags_changed"] += 1
            if self.dry_run:
                continue
            with self.engine.begin() as conn:
                if len(rec.users) <= BIG_TAG:
                    ids = mirror.person_ids_by_folded(conn, rec.users)
                else:  # one scan instead of IN-lists of 500 (a first sync: tags of thousands)
                    if everyone is None:
                        everyone = mirror.person_ids_by_folded(conn, None)
                    ids = everyone
                mirror.upsert_tag(conn, rec, self.origin, current, ids)
        self._delete_tags(index, names)

    def _delete_tags(self, index: _Index, listed: dict[int, str]) -> None:
        """Tags missing from tag/list are deleted only when few, and each confirmed by tag/get 40068:
        a truncated tag list must not empty the tags (and their members) that rules refer to."""
        missing = [i for i, row in index.tags.items() if row.deleted_at is None and i not in listed]
        if not missing or not self.complete:
            return
        if len(missing) > rules.brake_threshold(len(index.tags)):
            self._incomplete(f"{len(missing)} tags missing from tag/list: not deleted without a person")
            return
        gone = []
        for tagid, _detail, error in self.reader.map(tag_api.get, missing, "tag/get"):
            if isinstance(error, WeComError) and error.errcode == wecom_errors.INVALID_TAGID:
                gone.append(tagid)
        self.stats["tags_changed"] += len(gone)
        if self.dry_run or not gone:
            return
        with self.engine.begin() as conn:
            for tagid in gone:
                mirror.mark_tag_deleted(conn, tagid, self.origin)


def _unchanged(rec: DepartmentRecord | TagRecord, row: Any | None) -> bool:
    """The mirror's live row already holds what WeCom answered (no write needed)."""
    return row is not None and row.fingerprint == rec.fingerprint() and row.deleted_at is None


def run_sync(
    app: Any,
    *,
    dry_run: bool = False,
    trigger: str = "cli",
    confirmed_sync: int | None = None,
    guard: Callable[[], None] | None = None,
    concurrency: int | None = None,
    include_tags: bool = True,
) -> SyncReport:
    """Run one full sync against the configured tenant and return its report.

    Args:
        app: the Flask app (settings and engine).
        dry_run: read everything, write only the sync record (with what would change).
        trigger: recorded on the sync (cli, schedule, confirm, callback).
        confirmed_sync: a braked sync a person confirmed: its planned departures may proceed.
        guard: a job's lease check, called before each read is submitted.
        concurrency: reads in flight (default DIRECTORY_SYNC_CONCURRENCY).
        include_tags: also walk tags (tag/list + tag/get per tag); reconciliation always does.
    """
    from wecom_plugin.extensions import db
    from wecom_plugin.services.wecom import client_for

    settings = app.extensions["wecom_settings"]
    with app.app_context():
        engine = db.engine
    reader = _Reader(lambda: client_for(app), concurrency or settings.directory_sync_concurrency, guard)
    contact = (lambda: client_for(app, secret="contact")) if settings.contact_secret else None  # noqa: S106
    try:
        return FullSync(
            engine,
            reader,
            dry_run=dry_run,
            trigger=trigger,
            contact_client=contact,
            confirmed_sync=confirmed_sync,
            include_tags=include_tags,
            employee_field=settings.employee_id_field,
        ).run()
    finally:
        reader.close()
