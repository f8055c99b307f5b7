"""Firing: an occurrence due now reaches every target once, through the clock and the worker, and
what the members receive is what the bulletin says (read back from the sandbox tenant)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.bulletins.support import (
    ROBOT_KEY,
    chat_messages,
    create,
    deliveries,
    make_due,
    robot_messages,
    run_worker,
    runs,
    text_doc,
    tick,
)
from tests.groups.check_support import governed_chat, people

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_an_occurrence_reaches_chat_robot_and_users_once(tenant_app, emulator):
    members = people(emulator, 3)
    group_id, chatid = governed_chat(tenant_app, members, name="研发部工作群")
    emulator.admin("robots", chatid=chatid, key=ROBOT_KEY, name="值班机器人")
    bulletin_id = create(
        tenant_app,
        text_doc(chats=[group_id], robots=[{"name": "值班机器人", "key": ROBOT_KEY}], users=[members[1]]),
    )
    when = make_due(tenant_app, bulletin_id)
    assert tick(tenant_app) == 1
    assert tick(tenant_app) == 0  # the occurrence is materialised once
    run_worker(tenant_app)

    local = when.astimezone(SHANGHAI)
    expected_title = f"{local.year}年{local.month}月{local.day}日"
    sent = chat_messages(emulator, chatid)
    assert len([m for m in sent if m.path == "appchat"]) == 1
    chat_message = next(m for m in sent if m.path == "appchat")
    assert expected_title in chat_message.content["content"]
    assert "研发部工作群：请查收。" in chat_message.content["content"]
    assert len(robot_messages(emulator)) == 1
    user_messages = [m for m in emulator.data.messages.values() if m.path == "message"]
    assert len(user_messages) == 1

    rows = deliveries(tenant_app, bulletin_id)
    assert sorted(r.target for r in rows) == [f"chat:{group_id}", "message:0", "robot:值班机器人"]
    assert {r.state for r in rows} == {"sent"}
    assert all(r.sent_at is not None and r.scheduled_at == when for r in rows)
    assert next(r for r in rows if r.target == "message:0").msgid == user_messages[0].msgid
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]

    # A second worker pass and another tick change nothing.
    tick(tenant_app)
    run_worker(tenant_app)
    assert len(deliveries(tenant_app, bulletin_id)) == 3
    assert len(robot_messages(emulator)) == 1


def test_a_worker_picking_the_job_up_after_grace_records_missed_and_alerts(tenant_app, emulator):
    from tests.groups.check_support import rows as all_rows
    from wecom_plugin.models.ops import Alert

    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], misfire_grace_minutes=1))
    make_due(tenant_app, bulletin_id, ago=30)
    assert tick(tenant_app) == 1
    # The worker comes late: the job waits beyond the grace counted from the scheduled time.
    emulator_now = datetime.now(UTC)
    with tenant_app.app_context():
        import sqlalchemy as sa

        from wecom_plugin.extensions import db
        from wecom_plugin.models.bulletins import BulletinDelivery

        # No delivery exists yet: move the scheduled time back by rewriting the job's payload instead.
        from wecom_plugin.models.jobs import Job

        job = db.session.scalars(sa.select(Job).where(Job.name == "bulletins.fire")).one()
        late = (datetime.fromisoformat(job.payload["scheduled_at"]) - timedelta(minutes=5)).isoformat()
        job.payload = {**job.payload, "scheduled_at": late}
        db.session.commit()
        assert db.session.scalars(sa.select(BulletinDelivery)).all() == []
    run_worker(tenant_app)
    assert emulator_now  # the clock of the test host is not what decides
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["missed"]
    assert chat_messages(emulator, chatid) == []
    assert [r.state for r in runs(tenant_app, bulletin_id)] == ["missed"]
    assert any(a.key == f"bulletin.missed:{bulletin_id}" for a in all_rows(tenant_app, Alert))


def first_year_without_data() -> int:
    from wecom_plugin.domain.workdays import WorkdayCalendar

    year = datetime.now(UTC).year
    while WorkdayCalendar().has_data(year):
        year += 1
    return year


def fire_at(app, bulletin_id: int, when: datetime) -> None:
    """Enqueue the occurrence as the clock would (the clock's own path is covered above)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import enqueue

    with app.app_context():
        enqueue("bulletins.fire", {"bulletin_id": bulletin_id, "scheduled_at": when.isoformat()})
        db.session.commit()


def test_a_workday_bulletin_in_a_year_without_official_data_is_held_and_alerted(tenant_app, emulator):
    from tests.groups.check_support import rows as all_rows
    from wecom_plugin.models.ops import Alert

    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], rule={"rule": "workdays"}))
    year = first_year_without_data()
    monday = next(datetime(year, 1, d, 9, 0, tzinfo=SHANGHAI) for d in range(4, 11) if date(year, 1, d).weekday() == 0)
    fire_at(tenant_app, bulletin_id, monday.astimezone(UTC))
    run_worker(tenant_app)
    [run] = runs(tenant_app, bulletin_id)
    assert run.state == "held" and str(year) in run.reason
    assert deliveries(tenant_app, bulletin_id) == []
    assert chat_messages(emulator, chatid) == []
    assert any(a.key == f"bulletin.held:{bulletin_id}" for a in all_rows(tenant_app, Alert))


def test_with_the_weekdays_fallback_the_same_day_is_sent_and_says_why(make_app, db_url, emulator):
    from tests.groups.check_support import sync

    app = make_app(
        DATABASE_URL=db_url, **emulator.plugin_settings(), CUSTOMER_GROUP_HANDOVER="off", CALENDAR_FALLBACK="weekdays"
    )
    sync(app)
    members = people(emulator, 2)
    group_id, chatid = governed_chat(app, members)
    bulletin_id = create(app, text_doc(chats=[group_id], rule={"rule": "workdays"}))
    year = first_year_without_data()
    monday = next(datetime(year, 1, d, 9, 0, tzinfo=SHANGHAI) for d in range(4, 11) if date(year, 1, d).weekday() == 0)
    fire_at(app, bulletin_id, monday.astimezone(UTC))
    run_worker(app)
    assert [d.state for d in deliveries(app, bulletin_id)] == ["sent"]
    assert len([m for m in chat_messages(emulator, chatid) if m.path == "appchat"]) == 1
    [run] = runs(app, bulletin_id)
    assert run.state == "done" and "CALENDAR_FALLBACK=weekdays" in run.reason
