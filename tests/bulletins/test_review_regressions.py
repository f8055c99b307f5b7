"""Regressions found by an independent review of the bulletin feature: each failed before its fix."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from tests.bulletins.support import (
    ROBOT_KEY,
    chat_messages,
    create,
    deliveries,
    make_due,
    quiet_around_now,
    release_ready_jobs,
    run_worker,
    runs,
    text_doc,
    tick,
)
from tests.groups.check_support import governed_chat, people
from wecom_plugin.extensions import db
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.jobs import Job, JobStep
from wecom_plugin.services import bulletin_delivery, bulletins

SHANGHAI = ZoneInfo("Asia/Shanghai")


# 1. A delivery that WAS sent (step done) is recorded "missed" (= "not sent") when the holder that
#    sent it could not record it and the job is picked up again after grace; the operator may then
#    resend it: a duplicate reaches the chat.
def test_review_sent_delivery_is_never_recorded_missed(tenant_app, emulator, monkeypatch):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    make_due(tenant_app, bulletin_id)
    assert tick(tenant_app) == 1

    # The holder sends, then fails to record 'sent' (a DB blip on that commit, or killed right then).
    real_record = bulletin_delivery._Sender._record
    monkeypatch.setattr(bulletin_delivery._Sender, "_record", lambda self, d, result: 1 / 0)
    from wecom_plugin.jobs.worker import Worker

    Worker(tenant_app).run_once()
    monkeypatch.setattr(bulletin_delivery._Sender, "_record", real_record)
    assert len([m for m in chat_messages(emulator, chatid) if m.path == "appchat"]) == 1
    with tenant_app.app_context():
        assert [s.state for s in db.session.scalars(sa.select(JobStep))] == ["done"]
        # The retry comes after the grace (backoff, outage, no worker for a while).
        db.session.execute(sa.update(BulletinDelivery).values(deadline_at=db_now(db.session) - timedelta(seconds=1)))
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    [d] = deliveries(tenant_app, bulletin_id)
    # It was sent (the step says done, the chat has it); "missed" tells the operator it was NOT sent,
    # and resend() accepts a missed delivery: the operator's resend duplicates the message.
    if d.state == "missed":
        with tenant_app.app_context():
            bulletin_delivery.resend(db.session, d.id, actor="user:ops", reason="record says missed")
            db.session.commit()
        run_worker(tenant_app)
    assert len([m for m in chat_messages(emulator, chatid) if m.path == "appchat"]) == 1, d.state


# 2. _push_deadlines grows the grace on every budget wait: grace is re-derived as deadline - due,
#    which already includes the previous pushes. 5 waits of 60 s at the same moment should give
#    now + 60 s + 10 min, not now + 5 min + 10 min.
def test_review_push_deadlines_does_not_inflate_the_grace(tenant_app, emulator):
    members = people(emulator, 2)
    group_id, _chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    with tenant_app.app_context():
        now = db_now(db.session)
        run = bulletin_delivery.RUN
        run_id = db.session.execute(
            sa.insert(run)
            .values(bulletin_id=bulletin_id, scheduled_at=now, state="running", reason="", version=1, created_at=now)
            .returning(run.c.id)
        ).scalar_one()
        db.session.execute(
            sa.insert(bulletin_delivery.DELIVERY).values(
                delivery_id="x" * 32,
                run_id=run_id,
                bulletin_id=bulletin_id,
                target=f"chat:{group_id}",
                attempt=1,
                state="pending",
                scheduled_at=now,
                due_at=now,
                deadline_at=now + timedelta(minutes=10),
                reason="",
                updated_at=now,
            )
        )
        db.session.commit()
        for _ in range(5):
            bulletin_delivery._push_deadlines(run_id, 60, 600)
        d = db.session.scalars(sa.select(BulletinDelivery)).one()
        late_by = (d.deadline_at - db_now(db.session)).total_seconds()
    assert late_by <= 60 + 600 + 5, late_by


# 3. More than 100 departments are accepted at save (MAX_TARGET_ITEMS = 1000), but message/send takes
#    at most 100 a call and the sender does not chunk them: the ValueError is raised inside run_step,
#    so the delivery ends "unknown" (alerted "may have been sent") although no request left.
def test_review_more_than_100_departments_are_chunked_or_refused(tenant_app, emulator):
    with tenant_app.app_context():
        now = db_now(db.session)
        for i in range(101):
            db.session.add(
                __import__("wecom_plugin.models.directory", fromlist=["Department"]).Department(
                    id=900000 + i, name=f"d{i}", parent_id=1, updated_at=now
                )
            )
        db.session.commit()
    doc = text_doc()
    doc["targets"] = {"departments": [900000 + i for i in range(101)]}
    try:
        bulletin_id = create(tenant_app, doc)
    except bulletins.BulletinError:
        return  # refused at save: fine
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    release_ready_jobs(tenant_app)  # the retry after backoff
    run_worker(tenant_app)
    sent_requests = emulator.requests(endpoint="message/send")
    states = [d.state for d in deliveries(tenant_app, bulletin_id)]
    assert not (states == ["unknown"] and not sent_requests), (states, len(sent_requests))


# 4. A schedule that has no occurrence within two years (a start date three years ahead, or a cron
#    day that never exists) passes validation, then _sync_schedule's next_after raises SpecError,
#    which is not a BulletinError: the API answers 500.
@pytest.mark.parametrize(
    "schedule",
    [
        {"times": ["09:00"], "days": {"rule": "every_day"}, "start": f"{datetime.now(UTC).year + 3}-01-01"},
        {"days": {"rule": "cron", "expr": "0 9 31 2 *"}},
    ],
)
def test_review_unreachable_schedule_is_a_400_not_a_500(tenant_app, emulator, schedule):
    from wecom_plugin.services import api_keys

    members = people(emulator, 2)
    group_id, _chatid = governed_chat(tenant_app, members)
    with tenant_app.app_context():
        client = api_keys.create_client(db.session, "reviewer", ["bulletins"])
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=tenant_app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
    doc = text_doc(chats=[group_id])
    doc["schedule"] = schedule
    response = tenant_app.test_client().post(
        "/api/v1/bulletins",
        data=json.dumps(doc, ensure_ascii=False),
        headers={"Authorization": f"Bearer {key_id}.{secret}", "Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:300]


# 5. Pausing a bulletin does not stop the deferred part of an occurrence opened before the pause.
def test_review_pause_stops_deferred_deliveries(tenant_app, emulator):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    quiet_around_now(tenant_app, group_id)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], quiet_policy="defer"))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["deferred"]
    with tenant_app.app_context():
        bulletins.set_state(db.session, bulletin_id, "paused", actor="user:ops", reason="wrong text, stop it")
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert chat_messages(emulator, chatid) == [], "a paused bulletin was still sent"


# 6. A chat removed from the bulletin's targets still receives the deferred part of an occurrence
#    (robots removed meanwhile are checked in _plan, chats are not).
def test_review_chat_removed_from_targets_gets_no_deferred_send(tenant_app, emulator):
    members = people(emulator, 3)
    group_id, chatid = governed_chat(tenant_app, members[:2], name="错发的群")
    other_id, _other_chat = governed_chat(tenant_app, [members[0], members[2]], name="正确的群")
    quiet_around_now(tenant_app, group_id)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id, other_id], quiet_policy="defer"))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    with tenant_app.app_context():
        bulletins.save(
            db.session,
            {"targets": {"chats": [other_id]}},
            actor="user:ops",
            settings=tenant_app.extensions["wecom_settings"],
            bulletin_id=bulletin_id,
        )
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert chat_messages(emulator, chatid) == [], "the chat removed from the bulletin still got it"


# 7. One robot whose stored key cannot be decrypted (key rotation, a hand-edited row) raises out of
#    _plan, outside run_step: the whole job retries and goes dead, and every LATER target of the same
#    occurrence (here the users) is never sent; the deliveries stay "pending" and the run "running"
#    forever.
def test_review_one_broken_target_does_not_block_the_others(tenant_app, emulator):
    members = people(emulator, 3)
    group_id, chatid = governed_chat(tenant_app, members[:2])
    emulator.admin("robots", chatid=chatid, key=ROBOT_KEY, name="值班机器人")
    bulletin_id = create(tenant_app, text_doc(robots=[{"name": "值班机器人", "key": ROBOT_KEY}], users=[members[2]]))
    with tenant_app.app_context():
        row = db.session.get(Bulletin, bulletin_id)
        row.targets = {**row.targets, "robots": [{**row.targets["robots"][0], "key_enc": "not-a-fernet-token"}]}
        db.session.commit()
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    for _ in range(10):  # every retry (backoff skipped)
        run_worker(tenant_app)
        release_ready_jobs(tenant_app)
    states = {d.target: d.state for d in deliveries(tenant_app, bulletin_id)}
    user_messages = [m for m in emulator.data.messages.values() if m.path == "message"]
    assert states.get("message:0") == "sent" and len(user_messages) == 1, (
        states,
        [r.state for r in runs(tenant_app, bulletin_id)],
    )


# 8. cron: Vixie cron treats a day field starting with "*" (e.g. "*/2") as unrestricted, so
#    "0 9 */2 * 1" means odd days that are Mondays. Here it means odd days OR Mondays.
def test_review_cron_star_step_day_field_follows_vixie():
    from wecom_plugin.domain import cron

    c = cron.parse("0 9 */2 * 1")
    assert not c.matches_day(date(2026, 3, 3))  # Tuesday the 3rd: not a Monday


# 9. message/send's per-app daily cap (accounts x 200 person-times, budget.message_app_day) is never
#    taken from the budget: beyond it WeCom drops recipients silently and the delivery says "sent".
#    (The tenant's cap is lowered to 1 per account to reach it in a test: 60 members -> 60 a day.)
def test_review_message_app_daily_cap_is_budgeted(tenant_app, emulator):
    """The app's daily cap (accounts × 200 person-times) is taken from the budget: once it is spent,
    the send waits for the next day instead of reaching WeCom, which would drop it silently."""
    from wecom_plugin.services.wecom import budget_for
    from wecom_plugin.wecom.budget import message_app_day

    users = people(emulator, 5)
    bulletin_id = create(tenant_app, text_doc(users=users))
    with tenant_app.app_context():
        from wecom_plugin.models.directory import Person

        accounts = db.session.scalar(sa.select(sa.func.count()).select_from(Person).where(Person.status != 5))
        db.session.rollback()  # the budget writes on its own connection
        budget_for(db.engine, tenant_app.extensions["wecom_settings"], extra=[message_app_day(accounts)]).exhaust(
            "message.app_day"
        )
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["pending"]
    assert not emulator.requests(endpoint="message/send")
    with tenant_app.app_context():
        job = db.session.scalars(sa.select(Job).where(Job.name == "bulletins.fire")).one()
        assert job.state == "ready" and job.due_at > db_now(db.session)  # back when the day's budget renews


# 10. Bulletin ids are reused on SQLite (INTEGER PRIMARY KEY without AUTOINCREMENT: deleting the newest
#     bulletin frees its id). Everything in flight that names the old id by number (queued fire jobs'
#     bulletin_id, deferred deliveries, runs, "bulletin:<id>" occurrences) then acts on the NEW
#     bulletin: here the deleted bulletin's deferred part sends the new bulletin's text into the old
#     bulletin's chat, which the new bulletin never targeted.
def test_review_deleted_bulletins_id_is_not_inherited(tenant_app, emulator):
    members = people(emulator, 3)
    old_chat_group, old_chatid = governed_chat(tenant_app, members[:2], name="旧通报的群")
    new_chat_group, _new_chatid = governed_chat(tenant_app, [members[0], members[2]], name="新通报的群")
    quiet_around_now(tenant_app, old_chat_group)
    old_id = create(tenant_app, text_doc("旧通报", chats=[old_chat_group], quiet_policy="defer"))
    make_due(tenant_app, old_id)
    tick(tenant_app)
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, old_id)] == ["deferred"]
    with tenant_app.app_context():
        bulletins.delete(db.session, old_id, actor="user:ops")
        db.session.commit()
    doc = text_doc("新通报", chats=[new_chat_group])
    doc["message"]["content"] = "新通报的内容，只发给新通报的群"
    new_id = create(tenant_app, doc)
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    leaked = [
        m for m in chat_messages(emulator, old_chatid) if "新通报的内容" in json.dumps(m.content, ensure_ascii=False)
    ]
    assert not leaked, f"new bulletin {new_id} (old was {old_id}) was sent into the old bulletin's chat"


# 11. set_state() ignores the rowcount of its compare-and-set: when an edit commits between its read
#     and its UPDATE (PostgreSQL, READ COMMITTED), the pause is silently not applied, yet it is audited
#     as "bulletins.pause" and the caller is told nothing. (SQLite's BEGIN IMMEDIATE serialises it.)
def test_review_pause_racing_an_edit_is_applied_or_refused(tenant_app, emulator):
    from sqlalchemy.orm import Session

    from wecom_plugin.models.ops import AuditEvent

    members = people(emulator, 2)
    group_id, _chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    with tenant_app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("PostgreSQL only")
        # set_state() has read the bulletin (kept in the session's identity map, as inside set_state)
        seen = bulletins.get(db.session, bulletin_id)
        with Session(db.engine) as other:  # an edit commits meanwhile
            bulletins.save(
                other,
                {"misfire_grace_minutes": 5},
                actor="user:editor",
                settings=tenant_app.extensions["wecom_settings"],
                bulletin_id=bulletin_id,
            )
            other.commit()
        refused = False
        try:
            bulletins.set_state(db.session, bulletin_id, "paused", actor="user:ops")
            db.session.commit()
        except bulletins.BulletinError:
            refused = True
            db.session.rollback()
        state = db.session.get(Bulletin, bulletin_id).state
        audited = db.session.scalars(sa.select(AuditEvent.action).where(AuditEvent.action == "bulletins.pause")).all()
    assert seen is not None
    assert refused or state == "paused", (state, audited)


# 12. Preview with an extreme "from" (a valid ISO date) is a 500 (OverflowError in _parse_from/explain).
@pytest.mark.parametrize("start", ["0001-01-01", "9999-12-31"])
def test_review_preview_extreme_from_is_a_400(tenant_app, emulator, start):
    from wecom_plugin.services import api_keys

    members = people(emulator, 2)
    group_id, _chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    with tenant_app.app_context():
        client = api_keys.create_client(db.session, "reviewer", ["bulletins"])
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=tenant_app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
    response = tenant_app.test_client().get(
        f"/api/v1/bulletins/{bulletin_id}/preview?from={start}",
        headers={"Authorization": f"Bearer {key_id}.{secret}"},
    )
    assert response.status_code < 500
