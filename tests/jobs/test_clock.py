"""The clock in-process: misfire grace, coalescing, missed alerts, code schedules."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import Clock, sync_code_schedules
from wecom_plugin.models import Alert, Job, Occurrence, Schedule
from wecom_plugin.models.dbtime import db_now


def _add_schedule(app, key, *, behind, spec=None, grace=600, coalesce=True, alert_on_miss=True):
    with app.app_context():
        now = db_now(db.session)
        db.session.add(
            Schedule(
                key=key,
                origin="data",
                job_name="noop",
                spec=spec or {"kind": "interval", "seconds": 300},
                timezone="Asia/Shanghai",
                next_run_at=now - behind,
                misfire_grace_seconds=grace,
                coalesce=coalesce,
                alert_on_miss=alert_on_miss,
            )
        )
        db.session.commit()


def _occurrences(app, key):
    with app.app_context():
        rows = db.session.scalars(
            sa.select(Occurrence).where(Occurrence.schedule_key == key).order_by(Occurrence.scheduled_at)
        )
        return [o.state for o in rows]


def test_after_downtime_the_newest_occurrence_in_grace_runs_once_and_older_ones_are_missed_with_an_alert(app):
    # Three occurrences were due during downtime (every 5 min: 12, 7 and 2 minutes ago); grace is 5 min.
    _add_schedule(app, "bulletin:1", behind=timedelta(minutes=12), grace=300)
    clock = Clock(app)
    assert clock.tick() == 1
    assert _occurrences(app, "bulletin:1") == ["missed", "missed", "enqueued"]
    with app.app_context():
        alerts = db.session.scalars(sa.select(Alert)).all()
        assert [(a.key, a.count) for a in alerts] == [("schedule.missed:bulletin:1", 1)]
        assert len(alerts[0].detail["missed"]) == 2
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.name == "noop")) == 1
        schedule = db.session.scalar(sa.select(Schedule).where(Schedule.key == "bulletin:1"))
        assert schedule.next_run_at > db_now(db.session)
    # A second tick, or a second clock, finds nothing more to do.
    assert Clock(app).tick() == 0


def test_coalescing_runs_one_catch_up_for_several_occurrences_within_grace(app):
    _add_schedule(app, "sync", behind=timedelta(minutes=12), grace=3600)
    assert Clock(app).tick() == 1
    assert _occurrences(app, "sync") == ["coalesced", "coalesced", "enqueued"]


def test_without_coalescing_every_occurrence_within_grace_runs(app):
    _add_schedule(app, "every", behind=timedelta(minutes=12), grace=3600, coalesce=False)
    assert Clock(app).tick() == 3
    assert _occurrences(app, "every") == ["enqueued"] * 3


def test_a_schedule_that_is_not_due_yields_nothing(app):
    _add_schedule(app, "later", behind=-timedelta(minutes=5))
    assert Clock(app).tick() == 0
    assert _occurrences(app, "later") == []


def test_the_job_carries_the_occurrence_time_and_a_dedupe_key(app):
    _add_schedule(app, "one", behind=timedelta(seconds=1))
    Clock(app).tick()
    with app.app_context():
        job = db.session.scalar(sa.select(Job).where(Job.name == "noop"))
        occurrence = db.session.scalar(sa.select(Occurrence))
        assert job.payload["schedule_key"] == "one"
        assert job.payload["scheduled_at"] == occurrence.scheduled_at.isoformat()
        assert job.dedupe_key == f"occ:one:{occurrence.scheduled_at.isoformat()}"
        assert occurrence.job_id == job.id


def test_code_schedules_are_synced_without_moving_an_unchanged_next_run(app):
    settings = app.extensions["wecom_settings"]
    with app.app_context():
        sync_code_schedules(db.session, settings)
        keys = set(db.session.scalars(sa.select(Schedule.key).where(Schedule.origin == "code")))
        assert {"runtime.prune", "test.code.every_minute"} <= keys
        before = db.session.scalar(sa.select(Schedule.next_run_at).where(Schedule.key == "runtime.prune"))
        sync_code_schedules(db.session, settings)
        after = db.session.scalar(sa.select(Schedule.next_run_at).where(Schedule.key == "runtime.prune"))
        assert before == after


def test_a_code_schedule_no_longer_declared_is_disabled(app):
    settings = app.extensions["wecom_settings"]
    with app.app_context():
        now = db_now(db.session)
        db.session.add(
            Schedule(
                key="old.definition",
                origin="code",
                job_name="noop",
                spec={"kind": "interval", "seconds": 60},
                next_run_at=now - timedelta(minutes=1),
            )
        )
        db.session.commit()
        sync_code_schedules(db.session, settings)
        assert db.session.scalar(sa.select(Schedule.enabled).where(Schedule.key == "old.definition")) is False
    assert Clock(app).tick() == 0


def test_the_clock_alerts_when_jobs_wait_and_no_worker_is_alive(app):
    from wecom_plugin.runtime.queue import enqueue

    with app.app_context():
        enqueue("noop", run_after=db_now(db.session) - timedelta(minutes=10))
        db.session.commit()
    Clock(app).tick()
    with app.app_context():
        assert db.session.scalars(sa.select(Alert.key)).all() == ["runtime.no_worker"]
