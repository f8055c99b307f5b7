"""The worker in-process: outcomes, retries, rate limits, dead jobs, steps."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from tests.support.runtime import enqueue_committed as _enqueue
from tests.support.runtime import load_job as _job
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import Alert, Job, JobStep


def _make_due(app, job_id):
    """Skip the wait: move the job's due time into the past."""
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(due_at=datetime(2000, 1, 1, tzinfo=UTC)))
        db.session.commit()


def test_it_runs_a_job_once_and_records_done(app, recorder):
    job_id = _enqueue(app, "test.record", {"url": recorder.url, "key": "k1"})
    worker = Worker(app)
    assert worker.run_once() == 1
    assert worker.run_once() == 0
    job = _job(app, job_id)
    assert job.state == "done"
    assert job.attempts == 1
    assert job.lease_owner is None
    assert recorder.counts()["k1"] == 1


def test_enqueue_with_a_dedupe_key_is_idempotent(app):
    first = _enqueue(app, "noop", dedupe_key="same")
    second = _enqueue(app, "noop", dedupe_key="same")
    assert first == second
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1


def test_a_job_that_is_not_due_is_not_claimed(app):
    from datetime import timedelta

    _enqueue(app, "noop", run_after=timedelta(hours=1))
    assert Worker(app).run_once() == 0


def test_a_rate_limited_job_is_retried_after_the_limit_lifts_with_attempts_intact(app, recorder):
    # One attempt only: if a rate limit spent attempts, the job would be dead after the first.
    job_id = _enqueue(
        app, "test.rate_limited", {"url": recorder.url, "key": "rl", "limited_calls": 2, "retry_after": 1}
    )
    worker = Worker(app)
    assert worker.run_once() == 1
    job = _job(app, job_id)
    assert (job.state, job.attempts) == ("ready", 0)
    assert "api freq out of limit" in job.last_error
    # Not due before the limit lifts.
    assert worker.run_once() == 0
    _make_due(app, job_id)
    worker.run_once()
    _make_due(app, job_id)
    worker.run_once()
    job = _job(app, job_id)
    assert (job.state, job.attempts) == ("done", 1)
    assert job.result == {"calls": 3}
    assert recorder.counts()["rl"] == 3


def test_a_failing_job_retries_with_backoff_then_goes_dead_with_one_alert(app):
    job_id = _enqueue(app, "test.fail")
    worker = Worker(app)
    worker.run_once()
    job = _job(app, job_id)
    assert (job.state, job.attempts) == ("ready", 1)
    assert "RuntimeError: boom" in job.last_error
    _make_due(app, job_id)
    worker.run_once()
    job = _job(app, job_id)
    assert (job.state, job.attempts) == ("dead", 2)
    with app.app_context():
        alerts = db.session.scalars(sa.select(Alert)).all()
        assert [a.key for a in alerts] == ["job.dead:test.fail"]
        # The alert's delivery job was enqueued in the same transaction.
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.name == "alerts.deliver")) == 1


def test_a_dead_job_can_be_retried_from_the_cli(app):
    job_id = _enqueue(app, "test.fail", max_attempts=1)
    Worker(app).run_once()
    assert _job(app, job_id).state == "dead"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["jobs", "retry", str(job_id)])
    assert result.exit_code == 0, result.output
    assert (_job(app, job_id).state, _job(app, job_id).attempts) == ("ready", 0)
    again = runner.invoke(args=["jobs", "retry", str(job_id)])
    assert again.exit_code != 0
    assert "is not dead" in again.output


def test_fanout_steps_resume_after_the_last_finished_target(app, recorder):
    job_id = _enqueue(app, "test.fanout", {"url": recorder.url, "targets": ["a", "b", "c"]})
    # A previous run finished "a" and "b" (their step rows exist), then its holder died.
    with app.app_context():
        for target in ("a", "b"):
            db.session.add(JobStep(job_id=job_id, target=target, state="done", fence=1))
        db.session.commit()
    Worker(app).run_once()
    assert recorder.counts() == {"c": 1}
    assert _job(app, job_id).state == "done"


def test_an_at_most_once_step_left_sending_ends_unknown_with_one_alert_and_is_not_repeated(app, recorder):
    job_id = _enqueue(app, "test.fanout_once", {"url": recorder.url, "targets": ["a", "b", "c"]})
    with app.app_context():
        # A holder with fence 0 marked "b" sending and died: nobody knows whether it went out.
        db.session.add(JobStep(job_id=job_id, target="a", state="done", fence=0))
        db.session.add(JobStep(job_id=job_id, target="b", state="sending", fence=0))
        db.session.commit()
    Worker(app).run_once()
    assert recorder.counts() == {"c": 1}
    job = _job(app, job_id)
    assert job.state == "done"
    assert job.result["outcomes"] == {"a": "already_done", "b": "unknown", "c": "done"}
    with app.app_context():
        alerts = db.session.scalars(sa.select(Alert)).all()
        assert [a.key for a in alerts] == [f"job.step_unknown:test.fanout_once:{job_id}"]
        states = dict(db.session.execute(sa.select(JobStep.target, JobStep.state)).all())
        assert states == {"a": "done", "b": "unknown", "c": "done"}


def test_the_worker_only_claims_job_types_it_knows(app):
    # During a deploy, an old worker must leave job types that only the new code knows alone.
    job_id = _enqueue(app, "noop")
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(name="from.a.newer.deploy"))
        db.session.commit()
    assert Worker(app).run_once() == 0
    assert _job(app, job_id).state == "ready"


def test_the_cli_enqueues_with_an_audit_row_and_refuses_bad_input(app):
    from wecom_plugin.models import AuditEvent

    runner = app.test_cli_runner()
    ok = runner.invoke(args=["jobs", "enqueue", "noop", "--count", "2"])
    assert ok.exit_code == 0, ok.output
    for args, message in (
        (["jobs", "enqueue", "no.such.type"], "unknown job type"),
        (["jobs", "enqueue", "noop", "--payload", "{oops"], "not JSON"),
        (["jobs", "enqueue", "noop", "--payload", "[1]"], "must be a JSON object"),
    ):
        bad = runner.invoke(args=args)
        assert bad.exit_code == 2 and message in bad.output, bad.output
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 2
        rows = db.session.scalars(sa.select(AuditEvent)).all()
        assert [(r.actor, r.action, r.target, r.detail["count"]) for r in rows] == [
            ("cli", "job.enqueue", "job-type:noop", 2)
        ]
