"""Robot keys never appear in errors, records or logs; a calendar import moves the clock's next run."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from tests.bulletins.support import create, deliveries, make_due, run_worker, text_doc, tick
from tests.groups.check_support import governed_chat, people
from wecom_plugin.extensions import db
from wecom_plugin.models.jobs import Job, JobStep
from wecom_plugin.models.ops import Alert, AuditEvent

BAD_KEY = "aaaa1111-2222-3333-4444-NotARobotKey99"


def test_review2_a_93000_robot_failure_never_shows_the_key(tenant_app, emulator, caplog):
    caplog.set_level(logging.DEBUG, logger="wecom_plugin")
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members, name="值班群")
    bulletin_id = create(tenant_app, text_doc(robots=[{"name": "坏机器人", "key": BAD_KEY}]))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    [d] = deliveries(tenant_app, bulletin_id)
    print("STATE", d.state, d.errcode, repr(d.reason))
    texts = [d.reason or ""]
    with tenant_app.app_context():
        texts += [str(r) for r in db.session.execute(sa.select(Alert.title_zh, Alert.title_en, Alert.detail)).all()]
        texts += [str(r) for r in db.session.execute(sa.select(AuditEvent.reason, AuditEvent.detail)).all()]
        texts += [str(r) for r in db.session.execute(sa.select(Job.result, Job.last_error)).all()]
        texts += [str(r) for r in db.session.execute(sa.select(JobStep.detail)).all()]
        db.session.rollback()
    texts += [r.getMessage() for r in caplog.records if r.name.startswith("wecom_plugin")]
    leaks = [t for t in texts if BAD_KEY in t or BAD_KEY.lower() in t.lower()]
    assert not leaks, leaks
    assert d.state == "failed" and d.errcode == 93000
