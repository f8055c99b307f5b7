"""Quiet windows, confidentiality, size limits and send budgets, checked on what the sandbox tenant
actually delivered to members (real HTTP), not on what the plugin meant to send."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from tests.bulletins.support import (
    ROBOT_KEY,
    bulletin,
    chat_messages,
    create,
    deliveries,
    make_due,
    quiet_around_now,
    release_ready_jobs,
    robot_messages,
    run_worker,
    runs,
    text_doc,
    tick,
)
from tests.groups.check_support import governed_chat, people
from tests.groups.check_support import rows as all_rows
from wecom_plugin.extensions import db
from wecom_plugin.models.bulletins import Bulletin
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.models.ops import AuditEvent
from wecom_plugin.services import bulletins

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize("policy", ["defer", "urgent", "skip"])
def test_a_quiet_window_defers_sends_urgently_or_skips(tenant_app, emulator, policy):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members, name="夜间值班群")
    window = quiet_around_now(tenant_app, group_id)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], quiet_policy=policy))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    [delivery] = deliveries(tenant_app, bulletin_id)
    if policy == "defer":
        assert delivery.state == "deferred" and window in delivery.reason
        assert chat_messages(emulator, chatid) == []  # nothing reached the members inside the window
        assert delivery.due_at.astimezone(SHANGHAI).strftime("%H:%M") == window.split("-")[1]
        assert delivery.deadline_at - delivery.due_at == timedelta(minutes=10)  # grace counted from the end
        # Time passes: the window is over (the send re-checks the windows, so a still-quiet moment
        # would defer it again).
        with tenant_app.app_context():
            db.session.get(GovernedGroup, group_id).quiet_windows = []
            db.session.commit()
        assert release_ready_jobs(tenant_app) == 1
        run_worker(tenant_app)
        [delivery] = deliveries(tenant_app, bulletin_id)
        assert delivery.state == "sent"
        assert len(chat_messages(emulator, chatid)) == 1
    elif policy == "urgent":
        assert delivery.state == "sent" and "紧急" in delivery.reason
        assert len(chat_messages(emulator, chatid)) == 1
        events = all_rows(tenant_app, AuditEvent, AuditEvent.action == "bulletins.urgent_in_quiet")
        assert len(events) == 1 and events[0].detail["window"] == window
    else:
        assert delivery.state == "skipped"
        assert chat_messages(emulator, chatid) == []
        assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]


def test_a_confidential_bulletin_arrives_with_safe_and_is_refused_where_it_cannot(tenant_app, emulator):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    bulletin_id = create(tenant_app, text_doc(chats=[group_id], users=[members[0]], confidential=True))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    received = [m for m in emulator.data.messages.values() if m.path in ("appchat", "message")]
    assert sorted(m.path for m in received) == ["appchat", "message"]
    assert all(m.safe == 1 for m in received)
    # A robot cannot keep a message confidential: the bulletin is refused at save, with the reason.
    with pytest.raises(bulletins.BulletinError) as refused:
        create(
            tenant_app,
            text_doc(name="保密机器人", robots=[{"name": "r", "key": ROBOT_KEY}], confidential=True),
        )
    assert "robot" in str(refused.value).lower() or "机器人" in str(refused.value)
    # So is a bulletin to a group registered as confidential that is not itself confidential.
    with tenant_app.app_context():
        db.session.get(GovernedGroup, group_id).confidentiality = "confidential"
        db.session.commit()
    with pytest.raises(bulletins.BulletinError, match="保密"):
        create(tenant_app, text_doc(name="普通通报", chats=[group_id]))


def test_a_message_over_the_size_limit_is_refused_at_save_and_failed_at_send_never_truncated(tenant_app, emulator):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members, name="短名")
    doc = text_doc(chats=[group_id])
    # 1,980 bytes of text: fits with this group's name, not with a 50-character one, which the save-time
    # trial render assumes, so the bulletin is refused before it could ever fail.
    doc["message"]["content"] = "{{ group_name }}" + "字" * 660
    with pytest.raises(bulletins.BulletinError, match="2048|2,048"):
        create(tenant_app, doc)
    # A definition stored before a limit changed (written straight to the table here) is checked
    # again on the real render at send time: failed with the reason, nothing sent, nothing cut.
    doc["message"]["content"] = "字" * 100
    bulletin_id = create(tenant_app, doc)
    with tenant_app.app_context():
        row = db.session.get(Bulletin, bulletin_id)
        row.message = {**row.message, "content": "字" * 700}
        db.session.commit()
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    [delivery] = deliveries(tenant_app, bulletin_id)
    assert delivery.state == "failed" and ("2048" in delivery.reason or "2,048" in delivery.reason)
    assert chat_messages(emulator, chatid) == []


def test_the_robot_budget_paces_sends_so_wecom_drops_nothing(tenant_app, emulator):
    members = people(emulator, 2)
    group_id, chatid = governed_chat(tenant_app, members)
    emulator.admin("robots", chatid=chatid, key=ROBOT_KEY, name="值班机器人")
    robot = {"name": "值班机器人", "key": ROBOT_KEY}
    ids = [create(tenant_app, text_doc(name=f"通报{i}", robots=[robot])) for i in range(22)]
    with tenant_app.app_context():
        when = db_now(db.session) - timedelta(seconds=1)
    for bulletin_id in ids:
        make_due(tenant_app, bulletin_id, at=when)
    assert tick(tenant_app) == 22
    run_worker(tenant_app, rounds=60)
    sent = [d for d in deliveries(tenant_app) if d.state == "sent"]
    waiting = [d for d in deliveries(tenant_app) if d.state == "pending"]
    # 20 a minute per robot, 90 % headroom: 18 now; the rest wait for the next window, not dropped.
    assert len(sent) + len(waiting) == 22 and len(sent) <= 18 and len(waiting) >= 4
    assert len(robot_messages(emulator)) == len(sent)
    assert not emulator.requests(endpoint="webhook/send", errcode=45009)
    # Waiting for our own budget is not a misfire: their deadlines moved past the window's end.
    assert all(d.deadline_at > d.due_at + timedelta(minutes=10) for d in waiting)
    assert all(bulletin(tenant_app, i).state == "active" for i in ids)


def test_a_chat_never_read_by_the_member_check_still_takes_its_members_from_the_budget(tenant_app, emulator):
    """No chat_member rows yet (the member check has not read the chat): the send reads the chat's
    members from WeCom first, so the person-times budget counts them (it once counted nobody)."""
    from wecom_plugin.models.api_clients import RateCounter
    from wecom_plugin.models.groups import ChatMember
    from wecom_plugin.wecom.budget import CORP, bucket

    members = people(emulator, 4)
    group_id, chatid = governed_chat(tenant_app, members)
    with tenant_app.app_context():
        assert db.session.scalars(sa.select(ChatMember).where(ChatMember.group_id == group_id)).all() == []
    bulletin_id = create(tenant_app, text_doc(chats=[group_id]))
    make_due(tenant_app, bulletin_id)
    tick(tenant_app)
    run_worker(tenant_app)
    assert [d.state for d in deliveries(tenant_app, bulletin_id)] == ["sent"]
    with tenant_app.app_context():  # every window (the send may straddle a minute boundary)
        spent = db.session.scalar(
            sa.select(sa.func.sum(RateCounter.count)).where(
                RateCounter.bucket == bucket("appchat.send.corp_minute", CORP)
            )
        )
    assert spent == len(emulator.data.chats[chatid].members) >= 4
