"""Failure modes found in review: each pinned by a test."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tests.support.runtime import enqueue_committed as _enqueue
from tests.support.runtime import load_job as _job
from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import Clock
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import Alert, Job, JobStep, Occurrence, Schedule
from wecom_plugin.models.dbtime import db_now


def _alert_keys(app) -> list[str]:
    with app.app_context():
        return sorted(db.session.scalars(sa.select(Alert.key)))


def test_the_prune_job_runs_on_sqlite_without_locking_itself_out(make_app):
    app = make_app(SQLITE_BUSY_TIMEOUT="1")
    job_id = _enqueue(app, "runtime.prune")
    started = time.monotonic()
    Worker(app).run_once()
    assert time.monotonic() - started < 1
    job = _job(app, job_id)
    assert job.state == "done", job.last_error


def test_a_handler_holding_a_transaction_across_ensure_lease_fails_fast_with_a_clear_error(make_app):
    app = make_app(SQLITE_BUSY_TIMEOUT="5")
    job_id = _enqueue(app, "test.leaves_transaction_open")
    started = time.monotonic()
    Worker(app).run_once()
    assert time.monotonic() - started < 2
    job = _job(app, job_id)
    assert job.state == "dead"
    assert "commit or roll back db.session before ensure_lease()" in job.last_error


def _schedule(app, key, **values):
    with app.app_context():
        now = db_now(db.session)
        defaults = dict(
            key=key, origin="data", job_name="noop", spec={"kind": "interval", "seconds": 60},
            timezone="Asia/Shanghai", next_run_at=now - timedelta(seconds=1), misfire_grace_seconds=600,
        )  # fmt: skip
        db.session.add(Schedule(**{**defaults, **values}))
        db.session.commit()


def test_one_broken_schedule_does_not_stop_the_others(app):
    _schedule(app, "bad-zone", timezone="Mars/Olympus")
    _schedule(app, "bad-spec", spec={"kind": "fortnightly"})
    _schedule(app, "good")
    clock = Clock(app)
    assert clock.tick() == 1
    assert clock.tick() == 0  # the broken ones stay broken, quietly counted
    with app.app_context():
        assert db.session.scalars(sa.select(Occurrence.schedule_key)).all() == ["good"]
        counts = dict(db.session.execute(sa.select(Alert.key, Alert.count)).all())
    assert counts == {"schedule.broken:bad-spec": 2, "schedule.broken:bad-zone": 2}


def test_a_schedule_for_an_unknown_job_type_is_left_alone_and_alerted_when_stalled(app):
    _schedule(app, "newer-deploy", job_name="bulletin.from_the_future")
    assert Clock(app).tick() == 0
    assert _alert_keys(app) == []
    with app.app_context():
        db.session.execute(
            sa.update(Schedule)
            .where(Schedule.key == "newer-deploy")
            .values(next_run_at=datetime(2026, 1, 1, tzinfo=UTC))
        )
        db.session.commit()
    Clock(app).tick()
    assert _alert_keys(app) == ["schedule.unknown_job_type:newer-deploy"]


def test_after_a_very_long_outage_the_newest_occurrence_in_grace_still_runs(app):
    # Every minute, down for 20 hours (1,200 occurrences), grace 10 minutes.
    with app.app_context():
        now = db_now(db.session)
    # Half a minute off the minute, so no occurrence sits on the grace boundary.
    _schedule(app, "minutely", next_run_at=now - timedelta(hours=20) + timedelta(seconds=30), alert_on_miss=True)
    assert Clock(app).tick() == 1
    with app.app_context():
        states = db.session.execute(sa.select(Occurrence.state, sa.func.count()).group_by(Occurrence.state)).all()
        assert dict(states) == {"enqueued": 1, "coalesced": 9, "missed": 100}
        alert = db.session.scalar(sa.select(Alert))
        assert alert.key == "schedule.missed:minutely" and alert.detail["missed_count"] == 1190
        schedule = db.session.scalar(sa.select(Schedule).where(Schedule.key == "minutely"))
        assert now < schedule.next_run_at <= now + timedelta(minutes=1)


def test_an_at_most_once_job_whose_holders_keep_dying_leaves_no_step_sending(app, recorder):
    job_id = _enqueue(app, "test.fanout_once", {"url": recorder.url, "targets": ["a", "b"]}, max_attempts=2)
    with app.app_context():
        db.session.add(JobStep(job_id=job_id, target="a", state="sending", fence=2))
        # Two holders died: the next claim is the third, past the budget.
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(attempts=2, fence=2))
        db.session.commit()
    Worker(app).run_once()
    assert _job(app, job_id).state == "dead"
    assert recorder.counts() == {}
    with app.app_context():
        assert db.session.scalar(sa.select(JobStep.state)) == "unknown"
    assert _alert_keys(app) == ["job.dead:test.fanout_once", f"job.step_unknown:test.fanout_once:{job_id}"]


def test_a_hung_job_is_released_after_its_timeout_and_alerted(make_app):
    app = make_app(JOB_LEASE_SECONDS="1")
    job_id = _enqueue(app, "test.hang", {"seconds": 4})
    hung = Worker(app)  # with its lease keeper running, as in production
    thread = threading.Thread(target=hung.run)
    thread.start()
    try:
        # Timeout 1 s, lease 1 s: after about 2-3 s the job is free for another worker.
        deadline = time.monotonic() + 10
        taken = 0
        while time.monotonic() < deadline and not taken:
            time.sleep(0.3)
            taken = Worker(app, names=["test.hang"]).run_once()
    finally:
        hung.stop()
        thread.join()
    assert taken == 1
    job = _job(app, job_id)
    assert (job.state, job.result["attempt"]) == ("done", 2)
    assert "job.overran:test.hang" in _alert_keys(app)


def test_the_worker_loop_survives_a_locked_database(make_app):
    app = make_app(SQLITE_BUSY_TIMEOUT="0.2", WORKER_POLL_INTERVAL="0.05")
    job_id = _enqueue(app, "noop")
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool)
    locker = engine.raw_connection()
    locker.driver_connection.isolation_level = None
    locker.driver_connection.execute("BEGIN EXCLUSIVE")
    worker = Worker(app)
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1})
    thread.start()
    time.sleep(0.8)  # the worker hits "database is locked" several times meanwhile
    locker.driver_connection.execute("COMMIT")
    locker.close()
    engine.dispose()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert _job(app, job_id).state == "done"


def test_the_cli_refuses_out_of_range_numbers_and_dates_cleanly(app):
    runner = app.test_cli_runner()
    for args in (
        ["jobs", "enqueue", "noop", "--count", "0"],
        ["jobs", "retry", "99999999999999999999"],
        ["alerts", "ack", "99999999999999999999", "--by", "x"],
        ["jobs", "list", "--limit", "-1"],
        ["audit", "export", "--from", "0001-01-01"],
    ):
        result = runner.invoke(args=args)
        assert result.exit_code == 2, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
