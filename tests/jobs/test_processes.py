"""The runtime with real processes: workers and clocks racing, killed and paused.

Each test runs on SQLite and, when configured, PostgreSQL. Jobs make their external calls over
real HTTP to a recorder, so "exactly once" is counted where the side effect lands.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support import procs
from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import sync_code_schedules
from wecom_plugin.models import Alert, Job, JobStep, Occurrence, Schedule
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.runtime.queue import enqueue

pytestmark = pytest.mark.timeout(180)


def _reader(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql+psycopg", "postgresql+psycopg"), poolclass=sa.pool.NullPool)


def _job_state(engine: sa.Engine, job_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(Job.state).where(Job.id == job_id)).scalar_one()


def test_four_workers_racing_over_1000_jobs_run_each_exactly_once(app, db_url, recorder):
    with app.app_context():
        for i in range(1000):
            enqueue("test.record", {"url": recorder.url, "key": f"job-{i}"})
        db.session.commit()

    workers = [procs.start(db_url, "worker", "--exit-when-idle", WORKER_BATCH_SIZE="5") for _ in range(4)]
    results = [procs.finish(w, timeout=150) for w in workers]
    for code, err in results:
        assert code == 0, err
        assert "Traceback" not in err, err

    counts = recorder.counts()
    assert len(counts) == 1000
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    with app.app_context():
        rows = db.session.execute(sa.select(Job.state, Job.attempts, sa.func.count()).group_by(Job.state, Job.attempts))
        assert rows.all() == [("done", 1, 1000)]
    pids = {call["pid"] for call in recorder.snapshot()}
    assert len(pids) >= 2, "the jobs were not shared between workers"


def test_three_clocks_over_200_due_occurrences_from_code_and_data_enqueue_each_once(app, db_url):
    with app.app_context():
        settings = app.extensions["wecom_settings"]
        sync_code_schedules(db.session, settings)
        now = db_now(db.session)
        # Downtime: the code schedule (tests.support.jobs) last ran 50 minutes ago ...
        start = now - timedelta(minutes=49, seconds=30)
        db.session.execute(
            sa.update(Schedule).where(Schedule.key == "test.code.every_minute").values(next_run_at=start)
        )
        # ... and three data schedules are as far behind. No coalescing: every occurrence runs.
        for i in range(3):
            db.session.add(
                Schedule(
                    key=f"data:bulletin-{i}",
                    origin="data",
                    job_name="noop",
                    spec={"kind": "interval", "seconds": 60},
                    timezone="Asia/Shanghai",
                    next_run_at=start,
                    misfire_grace_seconds=7200,
                    coalesce=False,
                )
            )
        db.session.commit()

    clocks = [procs.start(db_url, "clock", "--max-ticks", "3", "--tick-seconds", "0.1") for _ in range(3)]
    for code, err in [procs.finish(c, timeout=120) for c in clocks]:
        assert code == 0, err
        assert "Traceback" not in err, err

    with app.app_context():
        occurrences = db.session.scalars(sa.select(Occurrence)).all()
        assert len(occurrences) == 200
        assert {o.state for o in occurrences} == {"enqueued"}
        per_source = {}
        for o in occurrences:
            per_source[o.schedule_key] = per_source.get(o.schedule_key, 0) + 1
        assert per_source == {"test.code.every_minute": 50, **{f"data:bulletin-{i}": 50 for i in range(3)}}
        jobs = db.session.scalars(sa.select(Job).where(Job.name == "noop")).all()
        assert len(jobs) == 200
        assert {o.job_id for o in occurrences} == {j.id for j in jobs}


def test_a_killed_at_least_once_job_is_finished_by_another_worker_after_the_lease(app, db_url, recorder):
    with app.app_context():
        job_id = enqueue(
            "test.record",
            {"url": recorder.url, "key": "k", "pause_before": {"seconds": 60, "attempts": [1]}},
        )
        db.session.commit()
    reader = _reader(db_url)
    first = procs.start(db_url, "worker", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1")
    procs.wait_for(lambda: _job_state(reader, job_id) == "running", 30, what="the first worker to claim the job")
    first.send_signal(signal.SIGKILL)
    procs.finish(first)

    second = procs.start(db_url, "worker", "--max-jobs", "1", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1")
    code, err = procs.finish(second, timeout=60)
    assert code == 0, err
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert (job.state, job.attempts) == ("done", 2)
        assert job.result == {"pid": second.pid}
    assert [(c["key"], c["attempt"]) for c in recorder.snapshot()] == [("k", 2)]
    reader.dispose()


def test_a_killed_at_most_once_step_ends_unknown_with_one_alert_and_is_not_repeated(app, db_url, recorder):
    with app.app_context():
        job_id = enqueue(
            "test.fanout_once",
            {
                "url": recorder.url,
                "targets": ["a", "b", "c"],
                # The worker dies after WeCom got "b" but before it could record that.
                "pause_after_call": {"target": "b", "seconds": 60, "attempts": [1]},
            },
        )
        db.session.commit()
    first = procs.start(db_url, "worker", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1")
    procs.wait_for(lambda: "b" in recorder.counts(), 30, what="the call for target b")
    first.send_signal(signal.SIGKILL)
    procs.finish(first)

    second = procs.start(db_url, "worker", "--max-jobs", "1", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1")
    code, err = procs.finish(second, timeout=60)
    assert code == 0, err

    assert recorder.counts() == {"a": 1, "b": 1, "c": 1}
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == "done"
        assert job.result["outcomes"] == {"a": "already_done", "b": "unknown", "c": "done"}
        steps = dict(db.session.execute(sa.select(JobStep.target, JobStep.state)).all())
        assert steps == {"a": "done", "b": "unknown", "c": "done"}
        alerts = db.session.scalars(sa.select(Alert)).all()
        assert [(a.key, a.count) for a in alerts] == [(f"job.step_unknown:test.fanout_once:{job_id}", 1)]


def _stop_outside_a_write(proc, db_url: str) -> None:
    """SIGSTOP ``proc`` at a moment it holds no SQLite write lock. A process frozen inside a write
    transaction blocks every other process on SQLite (a different failure, not the fence under test):
    if the database is not writable right after the stop, let it run a moment and stop it again."""
    import sqlite3

    for _ in range(100):
        proc.send_signal(signal.SIGSTOP)
        if not db_url.startswith("sqlite"):
            return
        con = sqlite3.connect(db_url.removeprefix("sqlite:///"), timeout=0.3)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.02)
        finally:
            con.close()
    raise AssertionError("the worker never paused outside a write transaction")


def test_a_worker_paused_past_its_lease_makes_no_further_call_and_cannot_complete_the_job(app, db_url, recorder):
    targets = [f"t{i}" for i in range(1, 7)]
    with app.app_context():
        job_id = enqueue("test.fanout", {"url": recorder.url, "targets": targets, "pause_after_each": 0.4})
        db.session.commit()
    # One thread each: with eight, an idle thread polling every 0.1 s can be frozen by SIGSTOP inside a
    # SQLite write transaction, and the takeover then waits on the lock instead of testing the fence.
    paused = procs.start(db_url, "worker", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1", WORKER_THREADS="1")
    procs.wait_for(lambda: "t2" in recorder.counts(), 30, what="the first worker's second call")
    _stop_outside_a_write(paused, db_url)
    calls_before_pause = sum(1 for c in recorder.snapshot() if c["pid"] == paused.pid)
    try:
        time.sleep(3)  # past the 2 s lease
        takeover = procs.start(
            db_url, "worker", "--max-jobs", "1", JOB_LEASE_SECONDS="2", WORKER_POLL_INTERVAL="0.1", WORKER_THREADS="1"
        )
        code, err = procs.finish(takeover, timeout=60)
        assert code == 0, err
    finally:
        paused.send_signal(signal.SIGCONT)
    time.sleep(2)  # the paused worker wakes up mid-job and carries on as far as it can
    paused.send_signal(signal.SIGTERM)
    code, err = procs.finish(paused, timeout=30)
    assert code == 0, err

    calls_after_resume = [c for c in recorder.snapshot() if c["pid"] == paused.pid][calls_before_pause:]
    assert calls_after_resume == []
    # It noticed, and its completion was refused by the fence.
    assert "lost the lease of job" in err
    assert "lease was lost; not recorded" in err or "lease lost" in err
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == "done"
        assert job.result == {"pid": takeover.pid}
    # Every target was called; a target may be called twice only if the first worker was
    # paused between its call and recording it (at-least-once), never after resuming.
    assert set(recorder.counts()) == set(targets)


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_lets_the_current_job_finish(app, db_url, recorder, signum):
    with app.app_context():
        job_id = enqueue(
            "test.record", {"url": recorder.url, "key": "slow", "pause_before": {"seconds": 1.5, "attempts": [1]}}
        )
        db.session.commit()
    reader = _reader(db_url)
    worker = procs.start(db_url, "worker", WORKER_POLL_INTERVAL="0.1")
    procs.wait_for(lambda: _job_state(reader, job_id) == "running", 30, what="the job to start")
    os.kill(worker.pid, signum)
    code, err = procs.finish(worker, timeout=30)
    assert code == 0, err
    assert _job_state(reader, job_id) == "done"
    assert recorder.counts() == {"slow": 1}
    reader.dispose()
