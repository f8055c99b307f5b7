"""Worker threads in one process (``WORKER_THREADS``) and the idle sleep that ends when a job falls due."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from tests.support import jobs as test_jobs
from tests.support.runtime import enqueue_committed as _enqueue
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker, run_threads
from wecom_plugin.models import Job


def _states(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(sa.select(Job.state).order_by(Job.id)))


def test_threads_run_jobs_side_by_side_and_each_exactly_once(app):
    test_jobs.CONCURRENCY.update(now=0, max=0)
    for _ in range(8):
        _enqueue(app, "test.concurrent", {"seconds": 0.3})
    ran = run_threads(app, 4, batch_size=8, exit_when_idle=True, install_signals=False)
    assert ran == 8
    assert _states(app) == ["done"] * 8
    # One thread would run them one after another: at most 1 at a time.
    assert test_jobs.CONCURRENCY["max"] >= 2
    with app.app_context():
        assert set(db.session.scalars(sa.select(Job.attempts))) == {1}


def test_each_thread_claims_its_share_of_the_batch(app):
    for _ in range(8):
        _enqueue(app, "test.concurrent", {"seconds": 0})
    # batch 8 over 4 threads: 2 each, so one thread cannot take all 8 while the others sleep
    worker = Worker(app, batch_size=max(1, 8 // 4))
    assert worker.run_once() == 2


def test_an_idle_worker_sleeps_until_the_next_job_is_due_not_a_whole_poll(app):
    worker = Worker(app, poll_interval=30.0)
    assert worker._idle_seconds() == 30.0  # nothing queued: the poll interval
    _enqueue(app, "noop", run_after=timedelta(seconds=2))
    assert 0 < worker._idle_seconds() <= 2.0
    _enqueue(app, "noop", run_after=timedelta(hours=1))
    assert 0 < worker._idle_seconds() <= 2.0  # the sooner one counts
    _enqueue(app, "noop")
    assert worker._idle_seconds() <= 0.011  # one is due now
    assert Worker(app, poll_interval=30.0, names=["test.record"])._idle_seconds() == 30.0  # not its jobs
