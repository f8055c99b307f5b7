"""Notices and jobs: one digest per admin per run for several chats, removed members told why and how
to get back, name-rule reminders, the daily schedule, the worker applying chats at most once."""

from __future__ import annotations

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import sync_code_schedules
from wecom_plugin.models import Job, Schedule
from wecom_plugin.models.directory import Person
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services.membership_check import run_check

from . import check_support
from .check_support import (
    changes,
    chat_members,
    messages_to,
    people,
    run_worker,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


def test_the_admin_gets_one_digest_for_several_chats_and_removed_members_are_told(tenant_app, emulator):
    admin, a, b, c, d, e = people(emulator, 6)
    first, chat1 = make_governed(tenant_app, [admin, a, b], required=[admin, a], owner=admin, name="一群")
    second, chat2 = make_governed(tenant_app, [admin, c, d], required=[admin, c, e], owner=admin, name="二群")
    set_mode(tenant_app, "enforce")
    report = run_check(tenant_app, trigger="test")
    run_worker(tenant_app)
    assert b.casefold() not in chat_members(emulator, chat1) and e.casefold() in chat_members(emulator, chat2)
    assert len(updates(emulator, chat1)) == 1 and len(updates(emulator, chat2)) == 1
    [digest] = messages_to(emulator, admin)
    text = digest["content"]["content"] if isinstance(digest.get("content"), dict) else str(digest)
    assert f"群成员检查 #{report.check_id}" in text and "一群" in text and "二群" in text
    [told] = messages_to(emulator, b)
    body = str(told)
    assert "一群" in body and "不在本群成员范围内" in body and admin in body
    # A retried run of the notify jobs sends nothing again.
    with tenant_app.app_context():
        db.session.execute(
            sa.update(Job).where(Job.name == "groups.notify").values(state="ready", due_at=sa.func.now())
        )
        db.session.commit()
    run_worker(tenant_app)
    assert len(messages_to(emulator, admin)) == 1 and len(messages_to(emulator, b)) == 1


def test_a_placeholder_name_is_told_first_then_removed_after_the_grace(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(tenant_app, [a, b, c])
    with tenant_app.app_context():
        db.session.execute(sa.update(Person).where(Person.userid_folded == c.casefold()).values(name="测试1"))
        db.session.commit()
    set_mode(tenant_app, "enforce")
    first = run_check(tenant_app, trigger="test")
    assert [w["userid"] for w in first.groups[0]["warnings"]] == [c] and first.groups[0]["removals"] == []
    [warn] = changes(tenant_app, gid, action="warn")
    assert warn.state == "observed"
    run_worker(tenant_app)
    assert "实名提醒" in str(messages_to(emulator, c))
    # Still flagged the next day: the same row (the grace runs from the first telling).
    run_check(tenant_app, trigger="test")
    assert [w.id for w in changes(tenant_app, gid, action="warn")] == [warn.id]
    # After the grace period: removed.
    with tenant_app.app_context():
        db.session.execute(sa.text("UPDATE chat_change SET created_at = :t WHERE id = :i"),
                           {"t": warn.created_at.replace(year=warn.created_at.year - 1), "i": warn.id})  # fmt: skip
        db.session.commit()
    later = run_check(tenant_app, trigger="test")
    assert [(r["userid"], r["reason"]) for r in later.groups[0]["removals"]] == [(c, "not_real_name")]


def test_the_daily_check_is_scheduled_at_the_configured_time(make_app):
    for value, expected in ((None, "07:00"), ("06:30", "06:30")):
        app = make_app(**({"MEMBER_CHECK_TIME": value} if value else {}))
        with app.app_context():
            sync_code_schedules(db.session, app.extensions["wecom_settings"])
            db.session.commit()
            schedule = db.session.scalars(sa.select(Schedule).where(Schedule.key == "groups.check")).one()
            assert schedule.job_name == "groups.check" and schedule.spec == {"kind": "daily", "times": [expected]}
            assert schedule.payload == {"trigger": "schedule"}


def test_the_check_job_runs_in_the_worker_and_steps_aside_while_another_runs(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    make_governed(tenant_app, [a, b, c], required=[a, b])
    with tenant_app.app_context():
        enqueue("groups.check", {"trigger": "schedule"})
        db.session.commit()
    run_worker(tenant_app)
    with tenant_app.app_context():
        [job] = db.session.scalars(sa.select(Job).where(Job.name == "groups.check")).all()
        assert job.state == "done" and job.result["state"] == "completed", job.last_error
        db.session.execute(sa.text("UPDATE membership_check SET state = 'running'"))
        enqueue("groups.check", {"trigger": "schedule"})
        db.session.commit()
    run_worker(tenant_app)
    with tenant_app.app_context():
        second = db.session.scalars(sa.select(Job).where(Job.name == "groups.check").order_by(Job.id)).all()[-1]
        assert "still running" in second.result["skipped"]


def test_the_apply_job_sends_once_and_a_retry_rereads_first(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(tenant_app, [a, b, c], required=[a, b])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    run_worker(tenant_app)
    assert len(updates(emulator, chatid)) == 1
    # The job runs again (a takeover after a crash): the re-read finds the change done, no second update.
    from wecom_plugin.models.groups import ChatChange

    with tenant_app.app_context():
        db.session.execute(sa.update(ChatChange).where(ChatChange.group_id == gid).values(state="pending"))
        enqueue("groups.apply", {"group_id": gid})
        db.session.commit()
    run_worker(tenant_app)
    assert len(updates(emulator, chatid)) == 1
    assert {ch.state for ch in changes(tenant_app, gid, action="remove")} == {"skipped"}
