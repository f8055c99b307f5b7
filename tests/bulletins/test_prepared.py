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
        rows = list(db.session.scalars(sa.select(Job).where(Job.name == "bulletins.send", Job.state == "ready")))
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
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert delivery.state == "cancelled" and "paused" in delivery.reason
    # Nothing of it went out: the run is skipped, not a "partial" one.
    [run] = runs(tenant_app, bulletin_id)
    assert run.state == "skipped" and "paused" in run.reason


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


def _next_whole_minute(app):
    """The next whole minute at least 20 s and at most 60 s away (inside the clock's lead)."""
    now = _soon(app, 0)
    boundary = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    if (boundary - now).total_seconds() < 20:
        time.sleep((boundary - now).total_seconds() + 0.2)
        return _next_whole_minute(app)
    return boundary


def test_an_edit_after_preparing_that_keeps_the_time_still_sends_it(tenant_app, emulator):
    """An operator adds an evening time while the next time is prepared: that time is still a time of
    the schedule, so it is sent, once (the clock cannot materialise it again)."""
    group_id, chatid = governed_chat(tenant_app, people(emulator, 2))
    when = _next_whole_minute(tenant_app)
    hhmm = f"{when.astimezone(SHANGHAI):%H:%M}"
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], times=(hhmm,)))
    assert tick(tenant_app) == 1
    run_worker(tenant_app)
    with tenant_app.app_context():
        settings = tenant_app.extensions["wecom_settings"]
        doc = text_doc(chats=[group_id], times=(hhmm, "23:59" if hhmm != "23:59" else "23:58"))
        bulletins.save(db.session, doc, actor="user:test", settings=settings, bulletin_id=bulletin_id)
        db.session.commit()
    tick(tenant_app)  # the edit pointed the schedule at the same time: its occurrence exists already
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert len(chat_messages(emulator, chatid)) == 1
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]


def test_a_prepared_run_that_began_sending_is_finished_not_judged_again(tenant_app, emulator):
    """The first chat is sent, the second waits for the budget (its members' minute is spent); the
    schedule is edited meanwhile. The run that already went out in part is sent to the end."""
    from wecom_plugin.services.wecom import budget_for
    from wecom_plugin.wecom.budget import APPCHAT_SEND_MEMBER_MINUTE, member_key

    first, second = people(emulator, 2), people(emulator, 4)[2:]
    g1, c1 = governed_chat(tenant_app, first)
    g2, c2 = governed_chat(tenant_app, second)
    bulletin_id = create(tenant_app, text_doc(chats=[g1, g2]))
    make_due(tenant_app, bulletin_id, at=_soon(tenant_app, 30))
    assert tick(tenant_app) == 1
    run_worker(tenant_app)
    with tenant_app.app_context():
        budget = budget_for(db.engine, tenant_app.extensions["wecom_settings"])
        for userid in second:
            budget.exhaust(APPCHAT_SEND_MEMBER_MINUTE.name, member_key(userid))
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent", "pending"]
    assert len(chat_messages(emulator, c1)) == 1 and chat_messages(emulator, c2) == []

    with tenant_app.app_context():
        settings = tenant_app.extensions["wecom_settings"]
        doc = text_doc(chats=[g1, g2], times=("18:30", "18:31"))
        bulletins.save(db.session, doc, actor="user:test", settings=settings, bulletin_id=bulletin_id)
        db.session.execute(sa.text("DELETE FROM rate_counter WHERE bucket LIKE '%appchat.send.member_minute%'"))
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert len(chat_messages(emulator, c2)) == 1
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent", "sent"]
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]


def test_an_occurrence_job_retaken_after_its_time_does_not_send_what_it_prepared(tenant_app, emulator):
    """The early job queued the send, then its worker died before recording the job done; another
    worker retakes it after the time while the prepared send runs: one message."""
    group_id, chatid = governed_chat(tenant_app, people(emulator, 2))
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    when = make_due(tenant_app, bulletin_id, at=_soon(tenant_app, 2))
    assert tick(tenant_app) == 1
    run_worker(tenant_app)
    with tenant_app.app_context():
        early = db.session.scalars(sa.select(Job).where(Job.name == "bulletins.fire")).one()
        assert early.state == "done" and early.payload.get("early") is True
        db.session.execute(sa.update(Job).where(Job.id == early.id).values(state="ready", finished_at=None))
        db.session.commit()
    time.sleep(max(0.0, (when - _soon(tenant_app, 0)).total_seconds()) + 0.1)  # retaken after the time
    _both_at_once(tenant_app, emulator)
    assert len(chat_messages(emulator, chatid)) == 1
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent"]


def test_two_jobs_that_both_find_a_delivery_pending_send_it_once(tenant_app, emulator):
    """The delivery's claim, not the per-job steps, keeps two jobs listing one delivery (whatever brought
    them there) from both sending it."""
    from wecom_plugin.runtime.queue import enqueue

    group_id, chatid = governed_chat(tenant_app, people(emulator, 2))
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    make_due(tenant_app, bulletin_id, at=_soon(tenant_app, 30))
    assert tick(tenant_app) == 1
    run_worker(tenant_app)
    [delivery] = deliveries(tenant_app, bulletin_id)
    with tenant_app.app_context():
        db.session.execute(sa.delete(Job).where(Job.name == "bulletins.send"))
        for n in range(2):
            enqueue("bulletins.fire", {"deliveries": [delivery.id], "resend_of": delivery.id}, dedupe_key=f"x{n}")
        db.session.commit()
    _both_at_once(tenant_app, emulator)
    assert len(chat_messages(emulator, chatid)) == 1
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent"]


def _both_at_once(app, emulator) -> None:
    """Two workers, one job each, in threads, with every app-chat send slowed by the tenant (a latency
    fault) so both are in their send at once."""
    import threading

    from wecom_plugin.jobs.worker import Worker

    release_ready_jobs(app)
    emulator.admin("faults", action="latency", endpoint="appchat/send", seconds=1.0)
    try:
        workers = [Worker(app, batch_size=1, owner=f"w{n}") for n in range(2)]
        threads = [threading.Thread(target=w.run_once) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        emulator.admin("faults", method="DELETE")
    run_worker(app)
