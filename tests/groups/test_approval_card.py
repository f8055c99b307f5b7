"""The approver's interactive card, end to end over real HTTP: the plugin sends the card to the sandbox
tenant, a member clicks in the tenant, the tenant posts the encrypted template_card_event to the
plugin's live receiver, the worker decides and updates the card (contract §14.2-§14.4)."""

from __future__ import annotations

import threading
import time

import pytest
from werkzeug.serving import make_server

from tests.groups.registry_helpers import group, request, rows, setup_app
from wecom_plugin.emulator import events as tenant_events
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.groups import GroupVersion
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.models.jobs import Job
from wecom_plugin.models.ops import AuditEvent
from wecom_plugin.services import approval_card
from wecom_plugin.services import group_registry as registry

TOKEN, AES_KEY = "CardToken42", "c" * 43
LEADER, SECOND = "weikaian", "fanwenjia"  # 开发组's leader; a GROUP_APPROVERS member (综合办公室)
SECOND_CONFIGURED = "FanWenJia"  # GROUP_APPROVERS spells it differently: WeCom compares userids case-insensitively
OUTSIDER = "shitonglu"  # in 开发组, not an approver


class Live:
    """The plugin's web server on a real port (the tenant posts the app's callbacks to it) and a worker."""

    def __init__(self, app, emulator) -> None:
        self.app, self.emulator = app, emulator
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.worker = Worker(app)
        url = f"http://127.0.0.1:{self.server.port}/wecom/callback"
        emulator.admin("callbacks/receivers", receiver="app", url=url, token=TOKEN, aes_key=AES_KEY)

    def settle(self, rounds: int = 50) -> None:
        """Deliver every pending callback, then run the worker until no job is due."""
        self.emulator.admin("callbacks/drain", method="POST")
        for _ in range(rounds):
            if self.worker.run_once() == 0:
                return
        raise AssertionError("the worker did not become idle")

    def click(self, userid: str, key: str, task_id: str) -> dict:
        return self.emulator.admin("callbacks/app/card-click", userid=userid, key=key, task_id=task_id)

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join()


@pytest.fixture
def live(make_app, db_url, emulator):
    emulator.flags(callback_timestamp="wall")  # the receiver checks freshness against the real clock
    keys = {"WECOM_CALLBACK_TOKEN": TOKEN, "WECOM_CALLBACK_AES_KEY": AES_KEY}
    app = setup_app(make_app, db_url, emulator, GROUP_APPROVERS=SECOND_CONFIGURED, **keys)
    plugin = Live(app, emulator)
    yield plugin
    plugin.close()


def cards(emulator, userid: str) -> list[dict]:
    return [m for m in emulator.admin("messages", query={"userid": userid})["messages"]
            if m["msgtype"] == "template_card"]  # fmt: skip


def texts(emulator, userid: str) -> list[str]:
    return [m["content"]["content"] for m in emulator.admin("messages", query={"userid": userid})["messages"]
            if m["msgtype"] == "text" and m["delivered"]]  # fmt: skip


def shown(emulator, userid: str, task_id: str) -> dict:
    """The card ``userid`` sees now: the last replacement aimed at them, else the card as sent."""
    [card] = [c for c in cards(emulator, userid) if c["task_id"] == task_id]
    current = card["content"]
    for update in card["updates"]:
        if userid in update["targets"] and update["template_card"]:
            current = update["template_card"]
    return current


def versions(app, group_id: int, action: str) -> list[GroupVersion]:
    return rows(app, GroupVersion, GroupVersion.group_id == group_id, GroupVersion.action == action)


def audits(app, action: str) -> list[AuditEvent]:
    return sorted(rows(app, AuditEvent, AuditEvent.action == action), key=lambda a: a.id)


def requested(live) -> tuple[int, str]:
    """A request from 开发组, its card sent; returns (group id, task id)."""
    group_id = request(live.app)
    live.settle()
    [sent] = versions(live.app, group_id, "approval_card_sent")
    return group_id, sent.after["task_id"]


def test_the_approvers_get_one_card_with_the_request_and_two_buttons(live, emulator):
    group_id, task_id = requested(live)
    [send] = emulator.requests(endpoint="message/send")
    assert send["body"]["touser"] == f"{LEADER}|{SECOND_CONFIGURED}" and "safe" not in send["body"]
    assert approval_card.TASK_RE.match(task_id) and task_id.startswith(f"grp{group_id}v1_")
    for userid in (LEADER, SECOND):
        [card] = cards(emulator, userid)
        content = card["content"]
        assert card["task_id"] == task_id and card["delivered"]
        assert content["card_type"] == "button_interaction"
        assert content["main_title"]["title"] == "申请建群：开发组工作群"
        assert "用途：开发组日常协作" in content["sub_title_text"] and "代码评审" in content["sub_title_text"]
        items = {i["keyname"]: i["value"] for i in content["horizontal_content_list"]}
        assert items["群主"].endswith(f"（{LEADER}）") and "leiting" in items["群管理员"]
        assert items["申请部门"] == "开发组" and items["登记编号"] == f"#{group_id}"
        buttons = [(b["text"], b["key"]) for b in content["button_list"]]
        assert buttons == [("同意", f"approve:{group_id}"), ("驳回", f"reject:{group_id}")]
    [mark] = versions(live.app, group_id, "approval_card")
    assert mark.after["approvers"] == [LEADER, SECOND_CONFIGURED] and mark.after["content_version"] == 1
    # The job ran once; running the send again (a retry, a second worker) sends nothing.
    with live.app.app_context():
        assert approval_card.send_card(live.app, group_id)["skipped"] == "already sent"
    assert len(emulator.requests(endpoint="message/send")) == 1


def test_the_approvers_click_approves_creates_the_chat_and_updates_every_card(live, emulator):
    group_id, task_id = requested(live)
    live.click(LEADER, f"approve:{group_id}", task_id)
    live.settle()
    g = group(live.app, group_id)
    assert (g.status, g.decided_by) == ("active", LEADER)  # approved, and the chat created (enforce mode)
    assert emulator.admin(f"chats/{g.chatid}")["owner"] == LEADER
    [approved] = versions(live.app, group_id, "approved")
    assert (approved.actor, approved.reason) == (f"wecom:{LEADER}", "同意 (via card)")
    for userid in (LEADER, SECOND):
        card = shown(emulator, userid, task_id)
        assert card["replace_text"] == "已同意" and "已同意" in card["main_title"]["desc"]
        items = {i["keyname"]: i["value"] for i in card["horizontal_content_list"]}
        assert items["审批结果"] == "已同意" and items["审批人"].endswith(f"（{LEADER}）")
    [update] = emulator.requests(endpoint="message/update_template_card")
    assert update["body"]["userids"] == [LEADER, SECOND_CONFIGURED]
    [updated] = audits(live.app, "groups.approval_card.update")
    assert updated.outcome == "success" and updated.detail["card"] == "已同意"


def test_a_rejection_by_card_records_the_card_as_the_reason_and_creates_nothing(live, emulator):
    group_id, task_id = requested(live)
    live.click(SECOND, f"reject:{group_id}", task_id)  # spelled as the tenant spells it, not as configured
    live.settle()
    g = group(live.app, group_id)
    assert (g.status, g.decided_by) == ("rejected", SECOND)
    [rejected] = versions(live.app, group_id, "rejected")
    assert (rejected.actor, rejected.reason) == (f"wecom:{SECOND}", "驳回 (via card)")
    assert rows(live.app, Job, Job.name == "groups.create_chat") == []
    assert emulator.requests(endpoint="appchat/create") == []
    for userid in (LEADER, SECOND):
        assert shown(emulator, userid, task_id)["replace_text"] == "已驳回"
    [update] = emulator.requests(endpoint="message/update_template_card")
    assert update["body"]["userids"] == [LEADER, SECOND_CONFIGURED]  # the clicker once, whatever the case


def test_a_click_by_someone_who_is_not_an_approver_decides_nothing(live, emulator):
    group_id, task_id = requested(live)
    # WeCom sends the card only to approvers: a click from anyone else is a forged or misrouted callback.
    xml = tenant_events.template_card_event_xml(
        emulator.corp_id, OUTSIDER, int(time.time()), event="template_card_event", event_key=f"approve:{group_id}",
        task_id=task_id, card_type="button_interaction", response_code="forged", agentid=emulator.OUR,
    )  # fmt: skip
    for _ in range(2):  # twice: one reply
        emulator.admin("callbacks/raw", receiver="app", xml=xml)
        xml = xml.replace("forged", "forged2")  # a second click: another event
        live.settle()
    g = group(live.app, group_id)
    assert (g.status, g.decided_by) == ("requested", None)
    assert versions(live.app, group_id, "approved") == []
    denied = audits(live.app, "groups.approval_card.click")
    assert [(a.actor, a.outcome) for a in denied] == [(f"wecom:{OUTSIDER}", "denied")] * 2
    [reply] = [t for t in texts(emulator, OUTSIDER) if "审批人" in t]
    assert reply.startswith("您不是建群申请「开发组工作群」") and "未生效" in reply
    assert emulator.requests(endpoint="message/update_template_card") == []
    # The real approver still decides.
    live.click(LEADER, f"approve:{group_id}", task_id)
    live.settle()
    assert group(live.app, group_id).status == "active"


def test_duplicate_and_concurrent_clicks_make_one_decision(live, emulator):
    group_id, task_id = requested(live)
    emulator.admin("callbacks/faults", action="duplicate", copies=3)  # WeCom's retries of one click
    live.click(LEADER, f"approve:{group_id}", task_id)
    live.click(LEADER, f"approve:{group_id}", task_id)  # a double click: a second event, a second code
    live.click(SECOND, f"reject:{group_id}", task_id)  # the other approver, before any card was updated
    live.settle()
    inbox = rows(live.app, CallbackInbox)
    assert len(inbox) == 3 and sum(r.deliveries for r in inbox) > 3  # the copies folded into their rows
    assert all(r.state == "handled" for r in inbox)
    assert len(versions(live.app, group_id, "approved")) == 1 and versions(live.app, group_id, "rejected") == []
    assert group(live.app, group_id).status == "active"
    clicks = audits(live.app, "groups.approval_card.click")
    assert [(a.actor, a.outcome) for a in clicks] == [
        (f"wecom:{LEADER}", "success"), (f"wecom:{LEADER}", "noop"), (f"wecom:{SECOND}", "noop")
    ]  # fmt: skip
    assert len(emulator.requests(endpoint="message/update_template_card")) == 3  # one per code
    for userid in (LEADER, SECOND):
        card = shown(emulator, userid, task_id)
        assert card["replace_text"] == "已同意" and LEADER in card["main_title"]["desc"]
    jobs = rows(live.app, Job, Job.name.like("groups.approval_card%"))
    assert all(j.state == ClaimState.DONE for j in jobs), [(j.name, j.last_error) for j in jobs]


def test_a_click_after_a_decision_made_elsewhere_shows_that_decision(live, emulator):
    group_id, task_id = requested(live)
    with live.app.app_context():
        registry.decide(db.session, group_id, approve=False, actor_userid=LEADER, reason="重复建群")
        db.session.commit()
    live.click(SECOND, f"approve:{group_id}", task_id)
    live.settle()
    g = group(live.app, group_id)
    assert (g.status, g.decided_by) == ("rejected", LEADER)
    [rejected] = versions(live.app, group_id, "rejected")
    assert (rejected.actor, rejected.reason) == (f"user:{LEADER}", "重复建群")
    card = shown(emulator, SECOND, task_id)
    assert card["replace_text"] == "已驳回" and LEADER in card["main_title"]["desc"]
    [update] = emulator.requests(endpoint="message/update_template_card")
    assert update["body"]["userids"] == [SECOND]  # only the clicker's card: only their code


def test_a_card_for_an_edited_request_is_stale_and_a_new_card_is_sent(live, emulator):
    group_id, old_task = requested(live)
    with live.app.app_context():
        registry.update_group(db.session, group_id, {"purpose": "开发组日常协作与发布值班"}, actor="user:leiting")
        db.session.commit()
    live.click(LEADER, f"approve:{group_id}", old_task)
    live.settle()
    assert group(live.app, group_id).status == "requested"  # not approved on what the card showed
    assert shown(emulator, LEADER, old_task)["replace_text"] == "已失效"
    new_cards = [c for c in cards(emulator, LEADER) if c["task_id"] != old_task]
    [new] = new_cards
    assert "发布值班" in new["content"]["sub_title_text"] and new["task_id"].startswith(f"grp{group_id}v")
    live.click(LEADER, f"approve:{group_id}", new["task_id"])
    live.settle()
    assert group(live.app, group_id).status == "active"


def test_long_texts_are_clipped_to_the_cards_limits(live, emulator):
    name = "超长群名" * 12  # 48 characters (the registry allows 50)
    group_id = request(live.app, name=name, purpose="用途" * 150, content_scope="范围" * 150)
    live.settle()
    [card] = cards(emulator, LEADER)
    content = card["content"]
    assert len(content["main_title"]["title"]) == 36 and content["main_title"]["title"].endswith("…")
    assert len(content["main_title"]["desc"]) <= 44 and len(content["sub_title_text"]) <= 160
    assert all(len(i["keyname"]) <= 5 and len(i["value"]) <= 30 for i in content["horizontal_content_list"])
    assert len(content["horizontal_content_list"]) <= 6
    assert card["task_id"].startswith(f"grp{group_id}v1_")


def test_a_used_response_code_counts_as_done_and_an_unknown_one_is_recorded(live, emulator):
    group_id, task_id = requested(live)
    click = live.click(LEADER, f"approve:{group_id}", task_id)
    live.settle()
    with live.app.app_context():
        again = approval_card.update_card(live.app, group_id, task_id, click["response_code"], [LEADER])
        assert again["updated"] is True  # 42022: an earlier attempt used it
        bogus = approval_card.update_card(live.app, group_id, task_id, "not-a-code", [LEADER])
        assert bogus["updated"] is False and bogus["errcode"] == 40058
    assert [a.outcome for a in audits(live.app, "groups.approval_card.update")] == ["success", "success", "failure"]


def test_a_request_decided_before_its_card_went_out_sends_no_card(live, emulator):
    group_id = request(live.app)
    with live.app.app_context():
        registry.decide(db.session, group_id, approve=True, actor_userid=LEADER, reason="当面同意")
        db.session.commit()
    live.settle()
    assert cards(emulator, LEADER) == [] and versions(live.app, group_id, "approval_card") == []
    [job] = rows(live.app, Job, Job.name == "groups.approval_card")
    assert job.state == ClaimState.DONE and job.result["skipped"] == "status approved"


# --- approvers are who they are now, not who they were at the request --------------------------------
def _raw_click(emulator, userid: str, key: str, task_id: str, code: str) -> None:
    xml = tenant_events.template_card_event_xml(
        emulator.corp_id, userid, int(time.time()), event="template_card_event", event_key=key,
        task_id=task_id, card_type="button_interaction", response_code=code, agentid=emulator.OUR,
    )  # fmt: skip
    emulator.admin("callbacks/raw", receiver="app", xml=xml)


def test_a_leader_who_left_since_the_request_decides_nothing(live, emulator):
    import sqlalchemy as sa

    from wecom_plugin.models.directory import Person

    group_id, task_id = requested(live)
    live.click(LEADER, f"approve:{group_id}", task_id)  # queued in the tenant, not delivered yet
    with live.app.app_context():  # meanwhile the mirror learns the leader left
        db.session.execute(sa.update(Person).where(Person.userid_folded == LEADER).values(status=5))
        db.session.commit()
    live.settle()
    g = group(live.app, group_id)
    assert (g.status, g.decided_by) == ("requested", None)
    assert [a.outcome for a in audits(live.app, "groups.approval_card.click")] == ["denied"]


def test_moving_a_request_to_another_department_moves_the_decision_to_its_leader(live, emulator):
    import sqlalchemy as sa

    from wecom_plugin.models.directory import Department, Person

    group_id, old_task = requested(live)
    with live.app.app_context():
        found = None
        for dep_id, leaders in db.session.execute(sa.select(Department.id, Department.leaders)).all():
            for leader in leaders or []:
                person = db.session.scalar(sa.select(Person).where(Person.userid_folded == leader.casefold()))
                if dep_id != 8 and person is not None and person.status == 1 and leader.casefold() not in (
                    LEADER, SECOND):  # fmt: skip
                    found = (dep_id, person.userid)
                    break
            if found:
                break
        assert found, "the seed has another department with an active leader"
        dep, new_leader = found
        registry.update_group(db.session, group_id, {"department_id": dep}, actor="user:leiting")
        db.session.commit()
    live.settle()  # the edit sends the new department's approvers a new card
    new_task = versions(live.app, group_id, "approval_card_sent")[-1].after["task_id"]
    assert new_task != old_task and [c["task_id"] for c in cards(emulator, new_leader)] == [new_task]
    live.click(LEADER, f"approve:{group_id}", old_task)  # the old card: decides nothing
    live.settle()
    assert group(live.app, group_id).status == "requested"
    _raw_click(emulator, LEADER, f"approve:{group_id}", new_task, "old-leader")  # no longer an approver
    live.settle()
    assert group(live.app, group_id).status == "requested"
    _raw_click(emulator, new_leader, f"approve:{group_id}", new_task, "new-leader")
    live.settle()
    g = group(live.app, group_id)
    assert g.decided_by == new_leader and g.status in ("approved", "active")


@pytest.mark.parametrize(
    "task_id", ["grp2147483648v1_0123456789ab", "grp9999999999v1_0123456789ab", "grp１v1_0123456789ab"]
)
def test_a_task_id_naming_an_impossible_group_is_a_quiet_no_op(live, emulator, task_id):
    group_id, _task = requested(live)
    _raw_click(emulator, LEADER, "approve:2147483648", task_id, f"c{len(task_id)}")
    live.settle()
    assert [r.state for r in rows(live.app, CallbackInbox)] == ["handled"]
    assert not rows(live.app, Job, Job.state == ClaimState.DEAD)
    assert group(live.app, group_id).status == "requested"
