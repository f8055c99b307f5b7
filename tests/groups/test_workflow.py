"""Creating an approved group's chat in the sandbox tenant: members, welcome, 备案 notice, retries
after a timeout, the kill switch, adoption (86008), archiving and review reminders."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.groups.registry_helpers import OFFICE, group, request, rows, setup_app, today
from wecom_plugin.errors import PermanentError
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.groups import ChatMember, GroupVersion
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import governance_switches as switches
from wecom_plugin.services import group_registry as registry
from wecom_plugin.services import group_workflow as workflow
from wecom_plugin.services.wecom import client_for
from wecom_plugin.wecom.errors import WeComNetworkError


@pytest.fixture
def gov(make_app, db_url, emulator):
    return setup_app(make_app, db_url, emulator)


def approve(app, group_id: int, by: str = "weikaian") -> str:
    with app.app_context():
        registry.decide(db.session, group_id, approve=True, actor_userid=by, reason="同意")
        db.session.commit()
    [job] = rows(app, Job, Job.name == "groups.create_chat")
    return job.payload["chatid"]


def texts(emulator, userid: str) -> list[str]:
    return [m["content"]["content"] for m in emulator.admin("messages", query={"userid": userid})["messages"]
            if m["msgtype"] == "text" and m["delivered"]]  # fmt: skip


def test_approval_creates_the_chat_welcomes_the_members_and_tells_the_general_office(gov, emulator):
    group_id = request(gov, confidentiality="confidential")
    chatid = approve(gov, group_id)
    Worker(gov).run_once()
    [job] = rows(gov, Job, Job.name == "groups.create_chat")
    assert job.state == ClaimState.DONE, job.last_error
    chat = emulator.admin(f"chats/{chatid}")
    assert chat["owner"] == "weikaian" and chat["creator"] == emulator.OUR
    assert sorted(m.lower() for m in chat["userlist"]) == ["leiting", "shitonglu", "weikaian"]
    g = group(gov, group_id)
    assert (g.status, g.chatid, g.first_check_at) == ("active", chatid, None)
    assert {m.userid_folded for m in rows(gov, ChatMember, ChatMember.group_id == group_id)} == {
        "leiting", "shitonglu", "weikaian"
    }  # fmt: skip
    for member in ("leiting", "shitonglu", "weikaian"):
        [welcome] = [t for t in texts(emulator, member) if "欢迎加入" in t]
        assert welcome.index("群成员一律实名制") < welcome.index("Real names only")
        assert "开发组日常协作" in welcome and "22:00-07:00" in welcome and "保密" in welcome
    for office in OFFICE:
        assert any("【群聊备案】" in t and chatid in t for t in texts(emulator, office))
    [created] = rows(gov, GroupVersion, GroupVersion.group_id == group_id, GroupVersion.action == "chat_created")
    assert created.before == {"status": "approved", "chatid": None} and created.after["status"] == "active"


def test_a_timeout_after_wecom_created_the_chat_does_not_create_a_second_one(gov, emulator):
    group_id = request(gov)
    chatid = approve(gov, group_id)
    emulator.admin("faults", action="timeout_after_apply", endpoint="appchat/create", seconds=5, times=1)
    with gov.app_context():
        impatient = client_for(gov, timeout=(1.0, 0.5))
        with pytest.raises(WeComNetworkError):
            workflow.create_chat(gov, group_id, chatid=chatid, client=impatient)
        db.session.rollback()
    assert group(gov, group_id).status == "approved"  # WeCom has the chat; we did not hear back
    Worker(gov).run_once()  # the job's run: appchat/get finds it
    assert emulator.requests(endpoint="appchat/get", chatid=chatid)  # it looked before creating
    assert [c.chatid for c in emulator.our_chats() if c.name == "开发组工作群"] == [chatid]
    assert group(gov, group_id).status == "active"


def test_the_kill_switch_holds_creation_without_spending_an_attempt(gov, emulator):
    group_id = request(gov)
    approve(gov, group_id)
    with gov.app_context():
        switches.set_kill_switch(db.session, "user:fanwenjia", True, "observe")
        db.session.commit()
    Worker(gov).run_once()
    [job] = rows(gov, Job, Job.name == "groups.create_chat")
    assert job.state == ClaimState.READY and job.attempts == 0 and "kill switch" in job.last_error
    assert emulator.requests(endpoint="appchat/create") == []
    assert group(gov, group_id).status == "approved"


def test_a_chat_that_would_have_too_few_members_is_not_created_and_the_reason_is_stored(gov, emulator):
    group_id = request(gov, admins=[], rule_doc={}, owner="weikaian")
    chatid = approve(gov, group_id)
    with gov.app_context(), pytest.raises(PermanentError, match="86006"):
        workflow.create_chat(gov, group_id, chatid=chatid)
    assert emulator.requests(endpoint="appchat/create") == []
    [failed] = rows(gov, GroupVersion, GroupVersion.group_id == group_id, GroupVersion.action == "create_failed")
    assert "2" in failed.reason and group(gov, group_id).status == "approved"


def test_adopting_a_chat_another_app_created_is_refused_with_the_migration_path(gov, emulator):
    group_id = request(gov)
    other = emulator.other_chats()[0].chatid
    with gov.app_context():
        with pytest.raises(registry.RegistryError) as info:
            registry.adopt(db.session, group_id, other, actor="user:fanwenjia")
        db.session.rollback()
    message = str(info.value)
    assert "86008" in message and "迁移" in message and "migration" in message
    g = group(gov, group_id)
    assert (g.chatid, g.status, g.version) == (None, "requested", 1)
    with gov.app_context():
        notice = registry.migration_notice(db.session.get(registry.GovernedGroup, group_id))
    assert notice.startswith("【群迁移通知】") and "开发组工作群" in notice and "[Group migration]" in notice


def test_adopting_our_own_chat_activates_an_approved_group_and_the_creation_job_stands_down(gov, emulator):
    group_id = request(gov)
    approve(gov, group_id)
    ours = emulator.our_chats()[0].chatid
    with gov.app_context():
        g = registry.adopt(db.session, group_id, ours, actor="user:fanwenjia")
        db.session.commit()
        assert (g.status, g.chatid, g.first_check_at) == ("active", ours, None)
    Worker(gov).run_once()
    [job] = rows(gov, Job, Job.name == "groups.create_chat")
    assert job.state == ClaimState.DONE and "skipped" in job.result
    assert emulator.requests(endpoint="appchat/create") == []


def test_archiving_posts_a_notice_into_the_chat(gov, emulator):
    group_id = request(gov)
    chatid = approve(gov, group_id)
    Worker(gov).run_once()
    with gov.app_context():
        registry.archive(db.session, group_id, actor="user:fanwenjia", reason="项目结束")
        db.session.commit()
    Worker(gov).run_once()
    last = emulator.admin(f"chats/{chatid}")["messages"][-1]
    assert "【群归档通知】" in last["content"]["content"] and "项目结束" in last["content"]["content"]
    assert group(gov, group_id).status == "archived"


def test_due_reviews_remind_the_office_and_the_admins_once_per_review_date(gov, emulator):
    group_id = request(gov)
    approve(gov, group_id)
    worker = Worker(gov)
    worker.run_once()
    due = today(gov) - timedelta(days=1)
    with gov.app_context():
        # The review date has come (set directly: the registry refuses past dates).
        db.session.execute(sa.update(registry.GROUP).where(registry.GROUP.c.id == group_id).values(review_date=due))
        db.session.commit()
        assert [g.id for g in registry.due_reviews(db.session, today(gov))] == [group_id]
    from wecom_plugin.runtime.queue import enqueue

    for _ in range(2):  # two daily runs, one reminder
        with gov.app_context():
            enqueue("groups.review_reminders", {})
            db.session.commit()
        while worker.run_once():
            pass
    for userid in (*OFFICE, "leiting"):
        reminders = [t for t in texts(emulator, userid) if "【群聊复核提醒】" in t]
        assert len(reminders) == 1, userid
    with gov.app_context():
        g = registry.confirm_review(
            db.session, group_id, actor="user:fanwenjia", next_review_date=(due + timedelta(days=200)).isoformat()
        )
        db.session.commit()
        assert g.review_date == due + timedelta(days=200)
