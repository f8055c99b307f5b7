"""Alerts: deduplicated, open until acknowledged, delivered outside WeCom."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import Alert, AuditEvent, Job, JobStep
from wecom_plugin.services.alerts import acknowledge, raise_alert


def _raise(app, key="sync.brake", **kwargs):
    with app.app_context():
        raised = raise_alert(key, title_zh="同步被制动", title_en="Sync brake engaged", **kwargs)
        db.session.commit()
        return raised


def test_raising_the_same_open_alert_again_only_counts_it(app, caplog):
    with caplog.at_level(logging.ERROR, logger="wecom_plugin.alerts"):
        first = _raise(app)
        second = _raise(app)
    assert first.alert_id == second.alert_id
    assert (first.count, second.count) == (1, 2)
    # Logged (the channel outside WeCom) and queued for delivery once, not per raise.
    assert sum("ALERT sync.brake" in r.getMessage() for r in caplog.records) == 1
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.name == "alerts.deliver")) == 1


def test_an_acknowledged_alert_is_closed_and_a_new_raise_opens_a_new_one(app):
    first = _raise(app)
    with app.app_context():
        assert acknowledge(db.session, first.alert_id, "user:zhangsan")
        assert not acknowledge(db.session, first.alert_id, "user:zhangsan")
        db.session.commit()
        audit = db.session.scalars(sa.select(AuditEvent)).all()
        assert [(a.actor, a.action, a.target) for a in audit] == [
            ("user:zhangsan", "alert.ack", f"alert:{first.alert_id}")
        ]
    again = _raise(app)
    assert again.alert_id != first.alert_id and again.is_new


def test_alerts_are_delivered_to_the_generic_webhook(make_app, recorder):
    app = make_app(ALERT_WEBHOOK_URL=recorder.url)
    _raise(app, detail={"would_remove": 40})
    Worker(app).run_once()
    [call] = recorder.snapshot()
    assert call["key"] == "sync.brake"
    assert call["title_zh"] == "同步被制动"
    assert call["detail"] == {"would_remove": 40}
    with app.app_context():
        assert db.session.scalar(sa.select(Job.state).where(Job.name == "alerts.deliver")) == "done"
        assert db.session.scalar(sa.select(JobStep.state).where(JobStep.target == "webhook")) == "done"


def test_a_failing_webhook_is_retried_not_dropped(make_app):
    # Nothing listens on this port: connection refused is retryable.
    app = make_app(ALERT_WEBHOOK_URL="http://127.0.0.1:9/alerts")
    _raise(app)
    Worker(app).run_once()
    with app.app_context():
        job = db.session.scalar(sa.select(Job).where(Job.name == "alerts.deliver"))
        assert (job.state, job.attempts) == ("ready", 1)
        assert "unreachable" in job.last_error


def test_the_cli_lists_and_acknowledges_alerts(app):
    raised = _raise(app)
    runner = app.test_cli_runner()
    listed = runner.invoke(args=["alerts", "list"])
    assert "同步被制动" in listed.output and "Sync brake engaged" in listed.output
    assert runner.invoke(args=["alerts", "ack", str(raised.alert_id), "--by", "lisi"]).exit_code == 0
    assert "no open alerts" in runner.invoke(args=["alerts", "list"]).output
    missing = runner.invoke(args=["alerts", "ack", "999", "--by", "lisi"])
    assert missing.exit_code != 0 and "not open" in missing.output


def test_unknown_severities_are_refused(app):
    with pytest.raises(ValueError):
        _raise(app, severity="meh")
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Alert)) == 0


def test_alerts_reach_the_configured_admins_in_wecom(make_app, emulator):
    admins = [u.userid for u in emulator.users()[:2]]
    app = make_app(
        WECOM_API_BASE_URL=emulator.url,
        WECOM_CORP_ID=emulator.corp_id,
        WECOM_AGENT_ID=str(emulator.OUR),
        WECOM_SECRET=emulator.secret(),
        ALERT_WECOM_USERIDS=",".join([*admins, "nobody_here"]),
    )
    _raise(app)
    Worker(app).run_once()
    for userid in admins:
        [received] = emulator.admin("messages", query={"userid": userid})["messages"]
        assert received["msgtype"] == "text" and "同步被制动" in received["content"]["content"]
    with app.app_context():
        job = db.session.scalar(sa.select(Job).where(Job.name == "alerts.deliver"))
        assert job.state == "done", job.last_error
        assert job.result == {"wecom": "done", "wecom_rejected": ["nobody_here"]}
