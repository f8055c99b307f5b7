"""Preparing ahead (CLOCK_PREPARE_SECONDS): the clock materialises a bulletin's next occurrence before its
time, the job opens the run and its deliveries then, and the send itself waits for the scheduled time.
Whatever changes in between (the schedule edited, the bulletin paused) is judged at that time."""

from __future__ import annotations

import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from tests.bulletins.support import (
    chat_messages,
    create,
    deliveries,
    make_due,
    release_ready_jobs,
    run_worker,
    runs,
    text_doc,
    tick,
)
from tests.groups.check_support import governed_chat, people
from wecom_plugin.extensions import db
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.jobs import Job, Occurrence
from wecom_plugin.services import bulletins

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _soon(app, seconds: float):
    with app.app_context():
        return db_now(db.session) + timedelta(seconds=seconds)


def _waiting_jobs(app) -> list[Job]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(Job).where(Job.name == "bulletins.fire", Job.state == "ready")))
        db.session.expunge_all()
        return rows


def _prepare(app, emulator, seconds: float = 30):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(app, members)
    bulletin_id = create(app, text_doc(chats=[group_id]))
    when = make_due(app, bulletin_id, at=_soon(app, seconds))
    assert tick(app) == 1  # within the lead: materialised now
    assert tick(app) == 0  # once
    run_worker(app)
    return bulletin_id, group_id, chatid, when


def test_an_occurrence_within_the_lead_is_prepared_early_and_sent_at_its_time(tenant_app, emulator):
    bulletin_id, group_id, chatid, when = _prepare(tenant_app, emulator, seconds=2)

    # Prepared: the run is open and the delivery waits for its time; nothing has been sent.
    [run] = runs(tenant_app, bulletin_id)
    assert run.state == "running" and run.scheduled_at == when
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert (delivery.state, delivery.target, delivery.due_at) == ("pending", f"chat:{group_id}", when)
    assert chat_messages(emulator, chatid) == []
    [waiting] = _waiting_jobs(tenant_app)
    assert waiting.due_at == when and waiting.payload["prepared_for"] == when.isoformat()
    with tenant_app.app_context():
        [occurrence] = db.session.scalars(sa.select(Occurrence)).all()
        assert occurrence.scheduled_at == when and occurrence.state == "enqueued"

    run_worker(tenant_app)  # before its time the send is not due
    assert chat_messages(emulator, chatid) == []

    time.sleep(max(0.0, (when - _soon(tenant_app, 0)).total_seconds()) + 0.1)
    run_worker(tenant_app)
    assert len(chat_messages(emulator, chatid)) == 1
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert delivery.state == "sent" and delivery.sent_at >= when
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]

    # Nothing more happens: a new tick materialises the next day's occurrence only when it is near.
    assert tick(tenant_app) == 0
    run_worker(tenant_app)
    assert len(chat_messages(emulator, chatid)) == 1


def test_a_schedule_edited_after_preparing_skips_the_prepared_time(tenant_app, emulator):
    bulletin_id, group_id, chatid, _when = _prepare(tenant_app, emulator)
    with tenant_app.app_context():
        doc = text_doc(chats=[group_id], times=("18:30", "18:31"))
        settings = tenant_app.extensions["wecom_settings"]
        bulletins.save(db.session, doc, actor="user:test", settings=settings, bulletin_id=bulletin_id)
        db.session.commit()
    assert release_ready_jobs(tenant_app) == 1
    run_worker(tenant_app)
    assert chat_messages(emulator, chatid) == []
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert delivery.state == "skipped" and "schedule was changed" in delivery.reason
    [run] = runs(tenant_app, bulletin_id)
    assert run.state == "skipped" and "schedule was changed" in run.reason


def test_a_bulletin_paused_after_preparing_is_not_sent(tenant_app, emulator):
    bulletin_id, _group_id, chatid, _when = _prepare(tenant_app, emulator)
    with tenant_app.app_context():
        bulletins.set_state(db.session, bulletin_id, "paused", actor="user:test", reason="test")
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert chat_messages(emulator, chatid) == []
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["cancelled"]


def test_a_prepared_occurrence_picked_up_after_its_time_is_sent_at_once(tenant_app, emulator):
    """A worker that reaches the early job only after the scheduled time (a backlog) sends right away
    instead of queueing a send for a time that has passed."""
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    when = make_due(tenant_app, bulletin_id, at=_soon(tenant_app, 1))
    assert tick(tenant_app) == 1
    time.sleep(max(0.0, (when - _soon(tenant_app, 0)).total_seconds()) + 0.1)
    run_worker(tenant_app)
    assert len(chat_messages(emulator, chatid)) == 1
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent"]
    assert _waiting_jobs(tenant_app) == []


def test_without_a_lead_the_occurrence_is_materialised_when_due(make_app, db_url, emulator):
    from tests.groups.check_support import sync

    app = make_app(
        DATABASE_URL=db_url, **emulator.plugin_settings(), CUSTOMER_GROUP_HANDOVER="off", CLOCK_PREPARE_SECONDS="0"
    )
    sync(app)
    group_id, _chatid = governed_chat(app, people(emulator, 2))
    bulletin_id = create(app, text_doc(chats=[group_id]))
    make_due(app, bulletin_id, at=_soon(app, 30))
    assert tick(app) == 0
    make_due(app, bulletin_id, ago=1)
    assert tick(app) == 1


def test_a_day_the_calendar_no_longer_counts_after_preparing_is_skipped(tenant_app, emulator):
    """A State Council notice imported between preparing and the time makes today a holiday: the
    workday bulletin prepared for today is not sent."""
    import pytest

    from wecom_plugin.services import workday_calendar

    today = _soon(tenant_app, 0).astimezone(SHANGHAI).date()
    with tenant_app.app_context():
        if not workday_calendar.load_calendar(db.session, "hold").day(today).workday:
            pytest.skip("today is not a workday: the scenario needs one")
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], rule={"rule": "workdays"}))
    make_due(tenant_app, bulletin_id, at=_soon(tenant_app, 30))
    assert tick(tenant_app) == 1
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["pending"]

    notice = (
        f"year: {today.year}\n"
        f"source: 国务院办公厅关于{today.year}年部分节假日安排的通知（测试）\n"
        "holidays:\n"
        "  - name: 测试假日\n"
        f"    from: {today.isoformat()}\n"
        f"    to: {today.isoformat()}\n"
        "workdays: []\n"
    )
    with tenant_app.app_context():
        workday_calendar.import_notice(db.session, notice, filename="notice.yaml", actor="user:test")
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert chat_messages(emulator, chatid) == []
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert delivery.state == "skipped" and "测试假日" in delivery.reason
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["skipped"]
