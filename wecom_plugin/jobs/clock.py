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
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
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
MAX_OCCURRENCES_PER_SCHEDULE = 1000
# The clock raises "no worker is running" when due jobs wait this long with no fresh worker.
WORKER_MISSING_AFTER_SECONDS = 300


def periodic_definitions(settings) -> list[PeriodicDefinition]:
    """Every schedule declared in code, in one place. Keys are stable across deploys."""
    definitions = [
        PeriodicDefinition(
            key="runtime.prune",
            job_name="runtime.prune",
            spec={"kind": "interval", "seconds": int(timedelta(hours=1).total_seconds())},
            misfire_grace_seconds=int(timedelta(hours=1).total_seconds()),
        ),
    ]
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
    for key, row in existing.items():
        if key not in declared and row.enabled:
            row.enabled = False
    session.commit()


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
        with self.app.app_context():
            sync_code_schedules(db.session, self.settings)
            db.session.remove()
        ticks = 0
        log.info("clock %s started (tick %ss)", self.owner, self.tick_seconds)
        while not self._stop.is_set():
            try:
                self.tick()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("clock %s tick failed: %s", self.owner, exc.__class__.__name__)
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            self._stop.wait(self.tick_seconds)
        with self.app.app_context():
            heartbeat.beat(db.engine, self.owner, "clock", state="stopped")

    def tick(self) -> int:
        """One pass over due schedules. Returns how many jobs this clock enqueued."""
        with self.app.app_context():
            engine = db.engine
            heartbeat.beat(engine, self.owner, "clock")
            enqueued = 0
            while True:
                batch_enqueued, more = self._tick_batch(engine)
                enqueued += batch_enqueued
                if not more:
                    break
            self._watchdog(engine)
            return enqueued

    def _tick_batch(self, engine: sa.Engine) -> tuple[int, bool]:
        with engine.begin() as conn:
            now = db_now(conn)
            due = (
                sa.select(SCHEDULE)
                .where(SCHEDULE.c.enabled.is_(True), SCHEDULE.c.next_run_at <= now)
                .order_by(SCHEDULE.c.id)
                .limit(SCHEDULES_PER_TRANSACTION)
            )
            if conn.dialect.name == "postgresql":
                # Concurrent clocks split the due schedules instead of queueing behind each other;
                # the occurrence key is what guarantees once-only either way.
                due = due.with_for_update(skip_locked=True)
            rows = conn.execute(due).all()
            enqueued = sum(self._materialise(conn, row, now) for row in rows)
            return enqueued, len(rows) == SCHEDULES_PER_TRANSACTION

    def _materialise(self, conn: sa.Connection, schedule: sa.Row, now: datetime) -> int:
        tz = ZoneInfo(schedule.timezone)
        times, following = specs.occurrences_between(
            schedule.spec, tz, schedule.next_run_at, now, MAX_OCCURRENCES_PER_SCHEDULE
        )
        if following <= now:
            # Further behind than we list: everything up to now is older than any sane grace.
            following = specs.next_after(schedule.spec, tz, now)
        grace = timedelta(seconds=schedule.misfire_grace_seconds)
        in_grace = [t for t in times if now - t <= grace]
        missed = [t for t in times if now - t > grace]
        fire = in_grace[-1:] if schedule.coalesce else in_grace
        coalesced = in_grace[:-1] if schedule.coalesce else []

        enqueued = 0
        for when in fire:
            occurrence_id = self._insert_occurrence(conn, schedule.key, when, "enqueued")
            if occurrence_id is None:
                continue  # another clock won this occurrence
            job_id = enqueue(
                schedule.job_name,
                {**(schedule.payload or {}), "scheduled_at": when.isoformat(), "schedule_key": schedule.key},
                dedupe_key=f"occ:{schedule.key}:{when.isoformat()}",
                session=conn,
            )
            conn.execute(sa.update(OCCURRENCE).where(OCCURRENCE.c.id == occurrence_id).values(job_id=job_id))
            enqueued += 1
        for when in coalesced:
            self._insert_occurrence(conn, schedule.key, when, "coalesced")
        newly_missed = [when for when in missed if self._insert_occurrence(conn, schedule.key, when, "missed")]
        if newly_missed and schedule.alert_on_miss:
            self._alert_missed(conn, schedule, newly_missed)
        conn.execute(
            sa.update(SCHEDULE)
            .where(SCHEDULE.c.id == schedule.id, SCHEDULE.c.next_run_at == schedule.next_run_at)
            .values(next_run_at=following, updated_at=utcnow())
        )
        return enqueued

    def _insert_occurrence(self, conn: sa.Connection, key: str, when: datetime, state: str) -> int | None:
        stmt = (
            insert_for(conn, OCCURRENCE)
            .values(schedule_key=key, scheduled_at=when, state=state, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["schedule_key", "scheduled_at"])
            .returning(OCCURRENCE.c.id)
        )
        return conn.execute(stmt).scalar_one_or_none()

    def _alert_missed(self, conn: sa.Connection, schedule: sa.Row, missed: Iterable[datetime]) -> None:
        from wecom_plugin.services.alerts import raise_alert

        missed = list(missed)
        local = [m.astimezone(ZoneInfo(schedule.timezone)).strftime("%Y-%m-%d %H:%M") for m in missed]
        raise_alert(
            f"schedule.missed:{schedule.key}",
            severity="error",
            title_zh=f"定时任务 {schedule.key} 错过了 {len(missed)} 次执行（{local[-1]}），未补发",
            title_en=f"Schedule {schedule.key} missed {len(missed)} occurrence(s) (last {local[-1]}); not run",
            detail={"schedule_key": schedule.key, "missed": [m.isoformat() for m in missed][-20:]},
            session=conn,
        )
        log.error("schedule %s missed %s occurrence(s)", schedule.key, len(missed))

    def _watchdog(self, engine: sa.Engine) -> None:
        """Alert when due jobs wait and no worker is alive: the classic forgotten worker."""
        from wecom_plugin.services.alerts import raise_alert

        now = utcnow()
        if self._last_watchdog and (now - self._last_watchdog).total_seconds() < 60:
            return
        self._last_watchdog = now
        with engine.begin() as conn:
            db_time = db_now(conn)
            oldest = conn.execute(
                sa.select(sa.func.min(JOB.c.due_at)).where(JOB.c.state == ClaimState.READY, JOB.c.due_at <= db_time)
            ).scalar_one_or_none()
            if oldest is None or (db_time - oldest).total_seconds() < WORKER_MISSING_AFTER_SECONDS:
                return
            alive = [
                p
                for p in heartbeat.processes(conn, self.settings.heartbeat_stale_seconds)
                if p["kind"] == "worker" and p["fresh"]
            ]
            if alive:
                return
            raise_alert(
                "runtime.no_worker",
                severity="critical",
                title_zh="没有正在运行的 worker 进程：后台任务在排队等待",
                title_en="No worker process is running: background jobs are waiting",
                detail={"oldest_due_at": oldest.isoformat()},
                session=conn,
            )
