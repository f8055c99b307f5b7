"""The clock: turns schedules into occurrences and occurrences into jobs.

Two kinds of source feed it, through one path:

* periodic definitions declared in code, all in :func:`periodic_definitions` (plus those extra
  job modules contribute); the clock upserts them into the ``schedule`` table at start-up;
* schedules stored as data (bulletins will be thousands of them), in the same table.

Guarantees:

* Each occurrence is a row unique on (schedule key, scheduled time), inserted with
  ``ON CONFLICT DO NOTHING``; only the transaction whose insert won enqueues the job, in the same
  transaction. Any number of clocks (an old and a new deploy at once) enqueue it once.
* "Due" is decided by the database clock, so a clock on a host with a skewed clock neither fires
  early nor twice.
* Misfire grace: an occurrence seen later than ``misfire_grace_seconds`` after its time is
  ``missed``, not run (alerted when the schedule says so). Coalescing: after downtime, only the
  newest occurrence still within grace runs; older ones within grace are ``coalesced``.
* Preparing ahead: job types registered with ``prepares_ahead`` (bulletins) have their next
  occurrence materialised up to ``CLOCK_PREPARE_SECONDS`` before its time, so neither the tick's
  phase nor the pass over thousands of schedules due at one minute makes them late; the handler
  prepares and queues the send for the scheduled time itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask

from wecom_plugin.domain import schedules as specs
from wecom_plugin.extensions import db
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.jobs import Job, Occurrence, Schedule
from wecom_plugin.runtime import heartbeat, registry
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.runtime.registry import PeriodicDefinition

log = logging.getLogger("wecom_plugin.clock")

SCHEDULE = Schedule.__table__
OCCURRENCE = Occurrence.__table__
JOB = Job.__table__

SCHEDULES_PER_TRANSACTION = 200
# At most this many occurrences of one schedule run in one pass (without coalescing).
MAX_OCCURRENCES_PER_SCHEDULE = 1000
# Missed occurrences get a row each, up to this many per pass; the rest are counted in the alert.
MISSED_ROWS_PER_PASS = 100
# Occurrences walked per schedule per pass before skipping ahead (an outage of a week at one per second).
MAX_BACKLOG_SCAN = 1_000_000
# Seconds between re-syncs of the code-declared schedules.
SYNC_CODE_SCHEDULES_EVERY = 300
# The clock raises "no worker is running" when due jobs wait this long with no fresh worker.
WORKER_MISSING_AFTER_SECONDS = 300
# ... and "schedule stalled" when a due schedule names a job type unknown to this code for this long.
STALLED_SCHEDULE_SECONDS = 3600


def periodic_definitions(settings) -> list[PeriodicDefinition]:
    """Every schedule declared in code, in one place. Keys are stable across deploys."""
    definitions = [
        PeriodicDefinition(
            key="runtime.prune",
            job_name="runtime.prune",
            spec={"kind": "interval", "seconds": int(timedelta(hours=1).total_seconds())},
            misfire_grace_seconds=int(timedelta(hours=1).total_seconds()),
        ),
        PeriodicDefinition(
            key="directory.minimise",
            job_name="directory.minimise",
            spec={"kind": "daily", "times": ["03:30"]},
            misfire_grace_seconds=int(timedelta(hours=12).total_seconds()),
        ),
    ]
    if settings.directory_sync_minutes:
        # Reconciliation: a full sync heals whatever the change callbacks missed.
        definitions.append(
            PeriodicDefinition(
                key="directory.reconcile",
                job_name="directory.sync",
                spec={"kind": "interval", "seconds": settings.directory_sync_minutes * 60},
                payload={"trigger": "schedule"},
                misfire_grace_seconds=settings.directory_sync_minutes * 60,
            )
        )
    return definitions + registry.contributed_periodic_definitions(settings)


def sync_code_schedules(session: sa.orm.Session, settings) -> None:
    """Upsert code definitions into ``schedule``; disable code schedules no longer declared.

    A changed spec takes effect from the next occurrence after now; an unchanged one keeps its
    ``next_run_at``, so restarting the clock neither skips nor repeats an occurrence.
    """
    now = db_now(session)
    tz = settings.tz
    declared = {d.key: d for d in periodic_definitions(settings)}
    existing = {s.key: s for s in session.scalars(sa.select(Schedule).where(Schedule.origin == "code"))}
    for key, definition in declared.items():
        specs.validate(definition.spec)
        row = existing.get(key)
        if row is None:
            session.add(
                Schedule(
                    key=key,
                    origin="code",
                    job_name=definition.job_name,
                    payload=definition.payload,
                    spec=definition.spec,
                    timezone=settings.timezone,
                    next_run_at=specs.next_after(definition.spec, tz, now),
                    misfire_grace_seconds=definition.misfire_grace_seconds,
                    coalesce=definition.coalesce,
                    alert_on_miss=definition.alert_on_miss,
                    enabled=True,
                )
            )
            continue
        if row.spec != definition.spec or row.timezone != settings.timezone:
            row.spec, row.timezone = definition.spec, settings.timezone
            row.next_run_at = specs.next_after(definition.spec, tz, now)
        row.job_name, row.payload, row.enabled = definition.job_name, definition.payload, True
        row.misfire_grace_seconds = definition.misfire_grace_seconds
        row.coalesce, row.alert_on_miss = definition.coalesce, definition.alert_on_miss
    known = set(registry.known_names())
    for key, row in existing.items():
        # A code schedule whose job type this code does not know belongs to a newer deploy
        # running alongside: leave it to that deploy.
        if key not in declared and row.enabled and row.job_name in known:
            row.enabled = False
    session.commit()


@dataclass
class _Backlog:
    """The occurrences a due schedule has accumulated up to ``now``."""

    in_grace: list[datetime]  # oldest first, at most MAX_OCCURRENCES_PER_SCHEDULE (the newest)
    missed_recent: list[datetime]  # the newest missed ones that get a row, oldest first
    missed_count: int  # every missed occurrence, including those without a row
    following: datetime  # the schedule's next occurrence after now


def _scan_backlog(schedule: sa.Row, tz: ZoneInfo, now: datetime, calendar=None) -> _Backlog:
    """Walk the schedule's occurrences from ``next_run_at`` to ``now``, keeping bounded lists.

    After a long outage a schedule may be thousands of occurrences behind: the newest within
    grace still runs (or all of them within grace, up to a cap, without coalescing), and the
    rest are counted as missed, with rows for the newest few.
    """
    grace_start = now - timedelta(seconds=schedule.misfire_grace_seconds)
    in_grace: deque[datetime] = deque(maxlen=MAX_OCCURRENCES_PER_SCHEDULE)
    missed_recent: deque[datetime] = deque(maxlen=MISSED_ROWS_PER_PASS)
    missed = 0
    current = schedule.next_run_at
    for _ in range(MAX_BACKLOG_SCAN):
        if current > now:
            break
        if current < grace_start:
            missed += 1
            missed_recent.append(current)
        else:
            if len(in_grace) == in_grace.maxlen:
                missed += 1  # beyond the cap of occurrences run in one pass
            in_grace.append(current)
        current = specs.next_after(schedule.spec, tz, current, calendar)
    else:
        # Absurdly far behind (a tiny interval and a long outage): skip ahead to the future.
        log.warning("schedule %s is more than %s occurrences behind; skipping ahead", schedule.key, MAX_BACKLOG_SCAN)
        current = specs.next_after(schedule.spec, tz, now, calendar)
    return _Backlog(list(in_grace), list(missed_recent), missed, current)


class Clock:
    """Materialises due occurrences. :meth:`tick` is one pass; :meth:`run` loops."""

    def __init__(self, app: Flask, *, owner: str | None = None, tick_seconds: float | None = None):
        from wecom_plugin.jobs.worker import process_id

        self.app = app
        self.settings = app.extensions["wecom_settings"]
        self.owner = owner or process_id("clock")
        self.tick_seconds = tick_seconds or self.settings.clock_tick_seconds
        self._stop = threading.Event()
        self._last_watchdog: datetime | None = None

    def stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def _handler(signum, _frame):
            log.info("clock %s got signal %s: stopping after this tick", self.owner, signum)
            self.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)

    def run(self, *, max_ticks: int | None = None) -> None:
        ticks = 0
        last_sync = float("-inf")
        log.info("clock %s started (tick %ss)", self.owner, self.tick_seconds)
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_sync >= SYNC_CODE_SCHEDULES_EVERY:
                    # Also periodically, so a clock of an old deploy that restarted during a
                    # rolling deploy does not leave its definitions in place for long.
                    with self.app.app_context():
                        sync_code_schedules(db.session, self.settings)
                        db.session.remove()
                    last_sync = time.monotonic()
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the clock must outlive any one bad pass
                log.error("clock %s tick failed: %s: %s", self.owner, exc.__class__.__name__, str(exc)[:300])
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            self._stop.wait(self.tick_seconds)
        try:
            with self.app.app_context():
                heartbeat.beat(db.engine, self.owner, "clock", state="stopped")
        except sa.exc.SQLAlchemyError as exc:
            log.warning("clock %s could not record that it stopped: %s", self.owner, exc.__class__.__name__)

    def tick(self) -> int:
        """One pass over due schedules. Returns how many jobs this clock enqueued."""
        with self.app.app_context():
            engine = db.engine
            heartbeat.beat(engine, self.owner, "clock")
            enqueued, after_id = 0, 0
            while after_id is not None:
                batch_enqueued, after_id = self._tick_batch(engine, after_id)
                enqueued += batch_enqueued
            self._watchdog(engine)
            return enqueued

    def _tick_batch(self, engine: sa.Engine, after_id: int) -> tuple[int, int | None]:
        """Materialise due schedules with ids above ``after_id``; returns (enqueued, next after_id)."""
        with engine.begin() as conn:
            now = db_now(conn)
            is_due: sa.ColumnElement[bool] = SCHEDULE.c.next_run_at <= now
            preparing, lead = self._preparing()
            if preparing:
                early = sa.and_(SCHEDULE.c.job_name.in_(preparing), SCHEDULE.c.next_run_at <= now + lead)
                is_due = sa.or_(is_due, early)
            due = (
                sa.select(SCHEDULE)
                .where(
                    SCHEDULE.c.enabled.is_(True),
                    is_due,
                    SCHEDULE.c.id > after_id,
                    # Only job types this code can enqueue: a newer deploy's schedules are its own.
                    SCHEDULE.c.job_name.in_(registry.known_names()),
                )
                .order_by(SCHEDULE.c.id)
                .limit(SCHEDULES_PER_TRANSACTION)
            )
            if conn.dialect.name == "postgresql":
                # Concurrent clocks split the due schedules instead of queueing behind each other;
                # the occurrence key is what guarantees once-only either way.
                due = due.with_for_update(skip_locked=True)
            rows = conn.execute(due).all()
            enqueued = 0
            calendar = self._calendar(conn) if rows else None
            for row in rows:
                try:
                    with conn.begin_nested():
                        enqueued += self._materialise(conn, row, now, calendar)
                except Exception as exc:  # noqa: BLE001 - one bad schedule must not stop the others
                    self._alert_broken(conn, row, exc)
            more = len(rows) == SCHEDULES_PER_TRANSACTION
            return enqueued, (rows[-1].id if more else None)

    def _preparing(self) -> tuple[list[str], timedelta]:
        """The job types materialised ahead, and how far ahead (none when CLOCK_PREPARE_SECONDS is 0)."""
        lead = timedelta(seconds=self.settings.clock_prepare_seconds)
        return (registry.preparing_names() if lead else []), lead

    def _calendar(self, conn: sa.Connection):
        """The workday calendar (package data plus imported notices), for kinds that follow it.
        Cached per process and re-read when an import changes it."""
        from wecom_plugin.services.workday_calendar import load_calendar

        return load_calendar(conn, self.settings.calendar_fallback)

    def _materialise(self, conn: sa.Connection, schedule: sa.Row, now: datetime, calendar=None) -> int:
        tz = ZoneInfo(schedule.timezone)
        backlog = _scan_backlog(schedule, tz, now, calendar)
        following, early = backlog.following, []
        preparing, lead = self._preparing()
        if schedule.job_name in preparing and following <= now + lead:
            # The next occurrence is within the lead: materialise it now, due at once; the job
            # knows its time from the payload and prepares for it.
            early, following = [following], specs.next_after(schedule.spec, tz, following, calendar)
        # Advance next_run_at first, conditionally: if another clock already did, it owns this pass.
        advanced = conn.execute(
            sa.update(SCHEDULE)
            .where(SCHEDULE.c.id == schedule.id, SCHEDULE.c.next_run_at == schedule.next_run_at)
            .values(next_run_at=following, updated_at=utcnow())
        ).rowcount
        if not advanced:
            return 0
        fire = (backlog.in_grace[-1:] if schedule.coalesce else backlog.in_grace) + early
        coalesced = backlog.in_grace[:-1] if schedule.coalesce else []
        enqueued = 0
        for when in fire:
            occurrence_id = self._insert_occurrence(conn, schedule.key, when, "enqueued")
            if occurrence_id is None:
                continue  # already materialised (a clock of another deploy, or a rerun)
            marks = {"scheduled_at": when.isoformat(), "schedule_key": schedule.key}
            if when in early:
                marks["early"] = True  # materialised ahead of its time: the handler prepares for it
            job_id = enqueue(
                schedule.job_name,
                {**(schedule.payload or {}), **marks},
                dedupe_key=f"occ:{schedule.key}:{when.isoformat()}",
                session=conn,
            )
            conn.execute(sa.update(OCCURRENCE).where(OCCURRENCE.c.id == occurrence_id).values(job_id=job_id))
            enqueued += 1
        for when in coalesced:
            self._insert_occurrence(conn, schedule.key, when, "coalesced")
        for when in backlog.missed_recent:
            self._insert_occurrence(conn, schedule.key, when, "missed")
        if backlog.missed_count and schedule.alert_on_miss:
            self._alert_missed(conn, schedule, backlog)
        return enqueued

    def _insert_occurrence(self, conn: sa.Connection, key: str, when: datetime, state: str) -> int | None:
        stmt = (
            insert_for(conn, OCCURRENCE)
            .values(schedule_key=key, scheduled_at=when, state=state, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["schedule_key", "scheduled_at"])
            .returning(OCCURRENCE.c.id)
        )
        return conn.execute(stmt).scalar_one_or_none()

    def _alert_missed(self, conn: sa.Connection, schedule: sa.Row, backlog: _Backlog) -> None:
        from wecom_plugin.services.alerts import raise_alert

        last = backlog.missed_recent[-1].astimezone(ZoneInfo(schedule.timezone)).strftime("%Y-%m-%d %H:%M")
        count = backlog.missed_count
        raise_alert(
            f"schedule.missed:{schedule.key}",
            severity="error",
            title_zh=f"定时任务 {schedule.key} 错过了 {count} 次执行（最近一次 {last}），未补发",
            title_en=f"Schedule {schedule.key} missed {count} occurrence(s) (last {last}); not run",
            detail={
                "schedule_key": schedule.key,
                "missed_count": count,
                "missed": [m.isoformat() for m in backlog.missed_recent][-20:],
            },
            session=conn,
        )
        log.error("schedule %s missed %s occurrence(s)", schedule.key, count)

    def _alert_broken(self, conn: sa.Connection, schedule: sa.Row, exc: Exception) -> None:
        from wecom_plugin.services.alerts import raise_alert

        log.error("schedule %s cannot be materialised: %s: %s", schedule.key, type(exc).__name__, exc)
        raise_alert(
            f"schedule.broken:{schedule.key}",
            severity="error",
            title_zh=f"定时任务 {schedule.key} 配置有误，无法执行，请检查",
            title_en=f"Schedule {schedule.key} is broken and cannot run; please check it",
            detail={"schedule_key": schedule.key, "error": f"{type(exc).__name__}: {exc}"[:500]},
            session=conn,
        )

    def _watchdog(self, engine: sa.Engine) -> None:
        """Once a minute: look for the classic forgotten worker, and for schedules nobody runs."""
        now = utcnow()
        if self._last_watchdog and (now - self._last_watchdog).total_seconds() < 60:
            return
        self._last_watchdog = now
        with engine.begin() as conn:
            db_time = db_now(conn)
            self._check_workers(conn, db_time)
            self._check_stalled_schedules(conn, db_time)

    def _check_workers(self, conn: sa.Connection, db_time: datetime) -> None:
        from wecom_plugin.services.alerts import raise_alert

        oldest = conn.execute(
            sa.select(sa.func.min(JOB.c.due_at)).where(JOB.c.state == ClaimState.READY, JOB.c.due_at <= db_time)
        ).scalar_one_or_none()
        if oldest is None or (db_time - oldest).total_seconds() < WORKER_MISSING_AFTER_SECONDS:
            return
        processes = heartbeat.processes(conn, self.settings.heartbeat_stale_seconds)
        if any(p["kind"] == "worker" and p["fresh"] for p in processes):
            return
        raise_alert(
            "runtime.no_worker",
            severity="critical",
            title_zh="没有正在运行的 worker 进程：后台任务在排队等待",
            title_en="No worker process is running: background jobs are waiting",
            detail={"oldest_due_at": oldest.isoformat()},
            session=conn,
        )

    def _check_stalled_schedules(self, conn: sa.Connection, db_time: datetime) -> None:
        """A due schedule whose job type no running code knows (a typo, or a deploy that never
        finished) would otherwise wait silently forever."""
        from wecom_plugin.services.alerts import raise_alert

        stalled = conn.execute(
            sa.select(SCHEDULE.c.key, SCHEDULE.c.job_name).where(
                SCHEDULE.c.enabled.is_(True),
                SCHEDULE.c.next_run_at < db_time - timedelta(seconds=STALLED_SCHEDULE_SECONDS),
                SCHEDULE.c.job_name.not_in(registry.known_names()),
            )
        ).all()
        for key, job_name in stalled:
            raise_alert(
                f"schedule.unknown_job_type:{key}",
                severity="error",
                title_zh=f"定时任务 {key} 的任务类型 {job_name} 无法识别，一直未执行",
                title_en=f"Schedule {key} names job type {job_name}, which no running code knows; it is not running",
                detail={"schedule_key": key, "job_name": job_name},
                session=conn,
            )
