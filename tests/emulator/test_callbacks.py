"""Callback delivery (§7, §8, §14.3; brief: callbacks.py): every change reaches the right receiver as
the right XML, signed and encrypted (checked by a receiver decrypting with wechatpy); retries, faults,
URL verification, app events, passive replies and the delivery log."""

from __future__ import annotations

import threading
import time

import pytest
from wechatpy.enterprise.crypto import WeChatCrypto

from .callback_receiver import Answer


def drain(emulator, timeout=5):
    state = emulator.admin("callbacks/drain", timeout=timeout)
    assert state["idle"], state
    return state


def deliveries(emulator, **query):
    return emulator.admin("callbacks/deliveries", query=query)["deliveries"]


def only_event(receiver):
    assert [r.error for r in receiver.received] == [None] * len(receiver.received)
    [event] = receiver.events()
    return event


def a_user(emulator, i=0):
    return emulator.users()[i]


# ---- change_contact to the contact-sync receiver (minimised, post-2022 default) -------------------
def test_hire_sends_create_user_with_ids_only_to_the_contact_sync_receiver(emulator, receivers):
    contact, app = receivers("contact_sync"), receivers("app")
    emulator.admin(
        "directory/hire", userid="NewHire", name="新员工", department=[3], position="文员", mobile="13900000000"
    )
    drain(emulator)
    event = only_event(contact)
    assert event == {
        "ToUserName": emulator.corp_id, "FromUserName": "sys", "CreateTime": str(int(emulator.tenant.now())),
        "MsgType": "event", "Event": "change_contact", "ChangeType": "create_user", "UserID": "NewHire",
        "Department": "3",
    }  # fmt: skip
    assert app.received == []
    envelope = contact.received[0].envelope
    assert envelope["ToUserName"] == emulator.corp_id and envelope["AgentID"] is None  # no agent for the assistant
    [d] = deliveries(emulator)
    assert d["status"] == "delivered" and d["receiver"] == "contact_sync" and d["change_type"] == "create_user"
    assert [a["status"] for a in d["attempts"]] == [200]


def test_update_user_minimised_carries_userid_and_changed_department_only(emulator, receivers):
    contact = receivers()
    uid = a_user(emulator).userid
    emulator.admin("directory/move", userid=uid, department=[4, 5])
    emulator.admin("directory/disable", userid=uid)
    emulator.admin("directory/update", userid=uid, position="经理", mobile="13911112222")
    drain(emulator)
    moved, disabled, updated = contact.events()
    assert moved["ChangeType"] == "update_user" and moved["UserID"] == uid and moved["Department"] == "4,5"
    for e in (disabled, updated):
        assert {k for k in e if k not in ("ToUserName", "FromUserName", "CreateTime", "MsgType", "Event")} == {
            "ChangeType", "UserID",
        }  # fmt: skip


def test_minimised_update_user_can_be_limited_to_id_changes(emulator, receivers):
    contact = receivers()
    emulator.flags(contact_callback_minimal_update_user="ids_changed")
    uid = a_user(emulator).userid
    emulator.admin("directory/disable", userid=uid)
    emulator.admin("directory/move", userid=uid, department=[4])
    drain(emulator)
    [event] = contact.events()
    assert event["Department"] == "4"


def test_rename_sends_update_user_with_new_userid(emulator, receivers):
    contact = receivers()
    uid = a_user(emulator).userid
    emulator.admin("directory/rename", userid=uid, new_userid="renamed01")
    drain(emulator)
    event = only_event(contact)
    assert (event["ChangeType"], event["UserID"], event["NewUserID"]) == ("update_user", uid, "renamed01")


def test_depart_sends_delete_user(emulator, receivers):
    contact = receivers()
    uid = a_user(emulator, 3).userid
    emulator.admin("directory/depart", userid=uid)
    drain(emulator)
    event = only_event(contact)
    assert (event["ChangeType"], event["UserID"]) == ("delete_user", uid)


def test_departments_minimised_id_and_parent_only_and_update_party_only_on_a_parent_change(emulator, receivers):
    contact = receivers()
    dep = emulator.admin("directory/department", name="新门店", parentid=1)
    emulator.admin("directory/department/update", id=dep["id"], name="旗舰店")  # no event after 2022
    emulator.admin("directory/department/update", id=dep["id"], parentid=2)
    emulator.admin("directory/department/delete", id=dep["id"])
    drain(emulator)
    created, moved, deleted = contact.events()
    assert (created["ChangeType"], created["Id"], created["ParentId"]) == ("create_party", str(dep["id"]), "1")
    assert "Name" not in created and "Order" not in created
    assert (moved["ChangeType"], moved["ParentId"]) == ("update_party", "2") and "Name" not in moved
    assert (deleted["ChangeType"], deleted["Id"]) == ("delete_party", str(dep["id"]))


def test_tag_change_sends_update_tag_with_only_non_empty_items(emulator, receivers):
    contact = receivers()
    uid = a_user(emulator).userid
    emulator.admin("directory/tag", tagid=2, add_users=[uid], add_parties=[3])
    emulator.admin("directory/tag", tagid=2, tagname="新名字")  # a rename: no update_tag
    drain(emulator)
    event = only_event(contact)
    assert event["ChangeType"] == "update_tag" and event["TagId"] == "2"
    assert event["AddUserItems"] == uid and event["AddPartyItems"] == "3"
    assert "DelUserItems" not in event and "DelPartyItems" not in event
    assert "<ChangeType><![CDATA[update_tag]]></ChangeType>" in contact.received[0].xml  # CDATA as in the sample


def test_member_events_have_a_bare_change_type_as_in_the_official_sample(emulator, receivers):
    contact = receivers()
    emulator.admin("directory/hire", userid="bare", name="裸")
    drain(emulator)
    assert "<ChangeType>create_user</ChangeType>" in contact.received[0].xml


# ---- pre-2022 (full) payloads ---------------------------------------------------------------------
def test_pre_2022_contact_receiver_gets_every_field(emulator, receivers):
    contact = receivers()
    emulator.flags(contact_callback_pre_2022=True)
    emulator.admin("directory/hire", userid="Full", name="全量", department=[3], position="文员", mobile="13900000001")
    emulator.admin("directory/disable", userid="Full")
    dep = emulator.admin("directory/department", name="新部门", parentid=1, order=7)
    emulator.admin("directory/department/update", id=dep["id"], name="改名部门")
    drain(emulator)
    created, disabled, party, renamed = contact.events()
    assert created["Name"] == "全量" and created["Position"] == "文员" and created["Mobile"] == "13900000001"
    assert created["MainDepartment"] == "3" and created["Status"] == "1" and created["IsLeaderInDept"] == "0"
    assert disabled["Status"] == "2" and "Name" not in disabled  # only what changed
    assert party["Name"] == "新部门" and party["Order"] == "7"
    assert renamed["ChangeType"] == "update_party" and renamed["Name"] == "改名部门"


def test_update_events_can_carry_every_field(emulator, receivers):
    contact = receivers()
    emulator.flags(contact_callback_pre_2022=True, callback_update_fields="all")
    user = a_user(emulator)
    emulator.admin("directory/disable", userid=user.userid)
    drain(emulator)
    event = only_event(contact)
    assert event["Status"] == "2" and event["Name"] == user.name and event["Position"] == user.position


# ---- customer groups: change_external_chat --------------------------------------------------------
def test_customer_group_changes_reach_the_app_receiver(emulator, receivers):
    app, contact = receivers("app"), receivers("contact_sync")
    owner, other = (u.userid for u in emulator.users()[:2])
    group = emulator.admin("customer-groups", owner=owner, name="客户群")
    cid = group["chat_id"]
    emulator.admin(f"customer-groups/{cid}/members", add=[other, "wmExternal01"], join_scene=3)
    emulator.admin(f"customer-groups/{cid}/members", remove=["wmExternal01"], quit_scene=1)
    emulator.admin(f"customer-groups/{cid}", name="新群名")
    emulator.admin(f"customer-groups/{cid}", method="DELETE")
    drain(emulator)
    created, added, removed, renamed, dismissed = app.events()
    assert contact.received == []
    assert (created["Event"], created["ChangeType"], created["ChatId"]) == ("change_external_chat", "create", cid)
    assert added["UpdateDetail"] == "add_member" and added["JoinScene"] == "3" and added["MemChangeCnt"] == "2"
    assert added["MemChangeList"]["Item"] == [other, "wmExternal01"]
    assert added["LastMemVer"] != added["CurMemVer"] and removed["LastMemVer"] == added["CurMemVer"]
    assert removed["UpdateDetail"] == "del_member" and removed["QuitScene"] == "1"
    assert renamed["UpdateDetail"] == "change_name" and dismissed["ChangeType"] == "dismiss"
    assert app.received[0].envelope["AgentID"] == str(emulator.OUR)


def test_customer_group_events_skip_apps_outside_customer_contact_and_can_go_to_the_assistant(emulator, receivers):
    app, contact = receivers("app"), receivers("contact_sync")
    emulator.admin(f"apps/{emulator.OUR}", customer_contact=False)
    emulator.admin("customer-groups", owner=a_user(emulator).userid)
    emulator.flags(external_chat_receiver="contact_sync")
    emulator.admin("customer-groups", owner=a_user(emulator).userid)
    drain(emulator)
    assert app.received == [] and [e["ChangeType"] for e in contact.events()] == ["create"]


def test_api_transfers_send_no_change_external_chat(emulator, receivers):
    app = receivers("app")
    groups = emulator.post("externalcontact/groupchat/list", {"limit": 100})["group_chat_list"]
    assert groups
    drain(emulator)
    assert app.received == []


# ---- delivery, retries, timeouts ------------------------------------------------------------------
def test_delivery_happens_in_the_background_not_in_the_admin_request(emulator, receivers):
    contact = receivers()
    gate = threading.Event()
    contact.answer(Answer(wait=gate))
    started = time.monotonic()
    emulator.admin("directory/hire", userid="bg01", name="后台")
    assert time.monotonic() - started < 2  # the receiver is still blocked
    assert deliveries(emulator)[0]["status"] in ("queued", "sending")
    gate.set()
    drain(emulator)
    assert deliveries(emulator)[0]["status"] == "delivered"


def test_non_200_is_retried_until_200(emulator, receivers):
    contact = receivers()
    contact.answer(Answer(500), Answer(404))
    emulator.admin("directory/hire", userid="retry01", name="重试")
    drain(emulator)
    [d] = deliveries(emulator)
    assert [a["status"] for a in d["attempts"]] == [500, 404, 200] and d["status"] == "delivered"
    assert len({r.body for r in contact.received}) == 1  # the same request is sent again
    assert len({tuple(sorted(r.query.items())) for r in contact.received}) == 1


def test_three_retries_then_the_callback_is_lost(emulator, receivers):
    contact = receivers()
    contact.answer(*[Answer(503)] * 10)
    emulator.admin("directory/hire", userid="lost01", name="丢失")
    drain(emulator)
    [d] = deliveries(emulator)
    assert [a["status"] for a in d["attempts"]] == [503] * 4 and d["status"] == "failed"


def test_the_retry_count_is_a_flag(emulator, receivers):
    contact = receivers()
    emulator.flags(callback_retries=1)
    contact.answer(*[Answer(500)] * 10)
    emulator.admin("directory/hire", userid="lost02", name="丢失")
    drain(emulator)
    assert len(deliveries(emulator)[0]["attempts"]) == 2


def test_a_timeout_counts_as_a_failure_and_is_retried(emulator, receivers):
    contact = receivers()
    emulator.flags(callback_timeout=0.2)
    contact.answer(Answer(delay=0.6))
    emulator.admin("directory/hire", userid="slow01", name="慢")
    drain(emulator)
    [d] = deliveries(emulator)
    first, second = d["attempts"]
    assert first["status"] is None and "timeout" in first["error"] and second["status"] == 200
    assert d["status"] == "delivered"


def test_an_unreachable_receiver_fails_every_attempt(emulator, receivers):
    contact = receivers()
    contact.close()
    emulator.admin("directory/hire", userid="gone01", name="无")
    drain(emulator)
    [d] = deliveries(emulator)
    assert d["status"] == "failed" and len(d["attempts"]) == 4
    assert all("ConnectionError" in a["error"] for a in d["attempts"])


def test_retries_wait_the_retry_delay(emulator, receivers):
    contact = receivers()
    emulator.flags(callback_retry_delay=0.3)
    contact.answer(Answer(500))
    emulator.admin("directory/hire", userid="wait01", name="等")
    drain(emulator)
    first, second = contact.received
    assert second.at - first.at >= 0.28


# ---- faults ---------------------------------------------------------------------------------------
def _hire_many(emulator, n, prefix="f"):
    for i in range(n):
        emulator.admin("directory/hire", userid=f"{prefix}{i:02d}", name=f"员工{i}")


def test_drop_a_share_is_deterministic_by_seed(emulator, receivers):
    outcomes = []
    for _ in range(2):
        emulator.tenant.reset()
        contact = receivers()
        emulator.admin("callbacks/faults", action="drop", probability=0.5, seed=7)
        _hire_many(emulator, 20)
        drain(emulator)
        dropped = [d["summary"] for d in deliveries(emulator, status="dropped")]
        got = [e["UserID"] for e in contact.events()]
        assert 0 < len(dropped) < 20 and len(got) + len(dropped) == 20
        assert not {s.split()[-1] for s in dropped} & set(got)
        outcomes.append(got)
    assert outcomes[0] == outcomes[1]


def test_drop_can_target_a_change_type(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/faults", action="drop", change_type="delete_user")
    uid = a_user(emulator, 2).userid
    emulator.admin("directory/disable", userid=uid)
    emulator.admin("directory/depart", userid=uid)
    drain(emulator)
    assert [e["ChangeType"] for e in contact.events()] == ["update_user"]


def test_duplicate_sends_the_same_request_twice(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/faults", action="duplicate", times=1)
    emulator.admin("directory/hire", userid="dup01", name="重")
    emulator.admin("directory/hire", userid="dup02", name="复")
    drain(emulator)
    bodies = [r.body for r in contact.received]
    assert len(bodies) == 3 and bodies[0] == bodies[1] != bodies[2]
    assert [d["copy_of"] for d in deliveries(emulator)] == [None, 1, None]


def test_reorder_holds_a_callback_back_until_a_later_one_was_sent(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/faults", action="reorder", change_type="create_user", times=1)
    emulator.admin("directory/hire", userid="first01", name="先")
    emulator.admin("directory/disable", userid="first01")
    drain(emulator)
    assert [e["ChangeType"] for e in contact.events()] == ["update_user", "create_user"]


def test_held_callbacks_wait_for_release(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/faults", action="reorder", release_after=5)
    emulator.admin("directory/hire", userid="held01", name="扣")
    assert emulator.admin("callbacks/drain", timeout=0.3, release_held=False)["held"] == 1
    assert contact.received == []
    assert emulator.admin("callbacks/release", method="POST")["released"] == 1
    drain(emulator)
    assert len(contact.received) == 1


def test_delay_holds_a_callback_for_n_seconds_and_others_overtake_it(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/faults", action="delay", seconds=0.4, times=1)
    started = time.time()
    emulator.admin("directory/hire", userid="late01", name="迟")
    emulator.admin("directory/hire", userid="early01", name="早")
    drain(emulator)
    assert [e["UserID"] for e in contact.events()] == ["early01", "late01"]
    assert contact.received[1].at - started >= 0.38


def test_faults_can_be_listed_and_cleared(emulator, receivers):
    fault = emulator.admin("callbacks/faults", action="drop", receiver="app")
    assert emulator.admin("callbacks/faults")["faults"][0]["id"] == fault["id"]
    emulator.admin(f"callbacks/faults/{fault['id']}", method="DELETE")
    emulator.admin("callbacks/faults", action="delay", seconds=1)
    assert emulator.admin("callbacks/faults", method="DELETE")["cleared"] == 1
    assert "action" in emulator.admin("callbacks/faults", expect=400, action="explode")["error"]


def test_raw_xml_is_encrypted_for_the_receiver_and_raw_bodies_are_sent_verbatim(emulator, receivers):
    contact = receivers()
    emulator.admin("callbacks/raw", receiver="contact_sync", xml="<xml><Custom>1</Custom></xml>")
    emulator.admin("callbacks/raw", receiver="contact_sync", body="<xml>tampered</xml>", params={"msg_signature": "x"})
    drain(emulator)
    good, bad = contact.received
    assert good.xml == "<xml><Custom>1</Custom></xml>"
    assert bad.body == b"<xml>tampered</xml>" and bad.query == {"msg_signature": "x"} and bad.error


# ---- URL verification -----------------------------------------------------------------------------
def test_url_verification_succeeds_when_the_plaintext_comes_back(emulator, receivers):
    contact = receivers("contact_sync", configure=False)
    body = emulator.admin("callbacks/receivers", receiver="contact_sync", url=contact.url, token=contact.token,
                          aes_key=contact.aes_key)  # fmt: skip
    assert body["receiver"]["verified"] is True and body["receiver"]["verification"]["ok"] is True
    [query] = contact.verifications
    assert set(query) == {"msg_signature", "timestamp", "nonce", "echostr"}
    assert [r["id"] for r in emulator.admin("callbacks/receivers")["receivers"]] == ["contact_sync"]


@pytest.mark.parametrize(
    "answer, reason",
    [
        (Answer(200), "not exactly"),  # plaintext + "\n"
        (Answer(200, body=b'"wrong"'), "not exactly"),
        (Answer(500, body=b"x"), "HTTP 500"),
        (Answer(200, delay=0.5), "no answer within"),
    ],
)
def test_url_verification_failures_are_reported_and_nothing_is_saved(emulator, receivers, answer, reason):
    emulator.flags(callback_verify_timeout=0.2)
    app = receivers("app", configure=False)
    app.verify_answer = answer
    body = emulator.admin("callbacks/receivers", expect=400, receiver="app", url=app.url, token=app.token,
                          aes_key=app.aes_key)  # fmt: skip
    assert "40057" in body["error"] and reason in body["verification"]["error"]
    assert emulator.admin("callbacks/receivers")["receivers"] == []


def test_a_receiver_can_be_saved_without_passing_and_verified_later(emulator, receivers):
    app = receivers("app", configure=False)
    app.verify_answer = Answer(500, body=b"down")
    body = emulator.admin("callbacks/receivers", receiver="app", url=app.url, token=app.token, aes_key=app.aes_key,
                          require_verification=False)  # fmt: skip
    assert body["receiver"]["verified"] is False
    app.verify_answer = None
    rid = body["receiver"]["id"]
    assert emulator.admin(f"callbacks/receivers/{rid}/verify", method="POST")["verification"]["ok"] is True
    assert emulator.admin(f"callbacks/receivers/{rid}", method="DELETE")["deleted"] == rid


def test_receiver_configuration_is_validated(emulator):
    assert "url" in emulator.admin("callbacks/receivers", expect=400, receiver="app", url="ftp://x")["error"]
    assert "receiver" in emulator.admin("callbacks/receivers", expect=400, receiver="bot", url="http://x")["error"]
    bad_key = emulator.admin("callbacks/receivers", expect=400, receiver="app", url="http://127.0.0.1:1/", aes_key="x")
    assert "aes_key" in bad_key["error"]


def test_no_receiver_no_delivery(emulator):
    emulator.admin("directory/hire", userid="quiet01", name="静")
    assert deliveries(emulator) == []


def test_reset_forgets_receivers_and_deliveries(emulator, receivers):
    receivers()
    emulator.admin("directory/hire", userid="r01", name="甲")
    drain(emulator)
    emulator.admin("reset", method="POST")
    assert emulator.admin("callbacks/receivers")["receivers"] == [] and deliveries(emulator) == []


# ---- app events -----------------------------------------------------------------------------------
def test_a_member_text_message_reaches_the_app_receiver_like_vector_a(emulator, receivers):
    app, contact = receivers("app"), receivers("contact_sync")
    user = a_user(emulator)
    out = emulator.admin("callbacks/app/text", userid=user.userid.upper(), content="你好 <b>&")
    drain(emulator)
    event = only_event(app)
    assert event == {
        "ToUserName": emulator.corp_id, "FromUserName": user.userid, "CreateTime": str(int(emulator.tenant.now())),
        "MsgType": "text", "Content": "你好 <b>&", "MsgId": out["msgid"], "AgentID": str(emulator.OUR),
    }  # fmt: skip
    assert out["msgid"].isdigit() and contact.received == []
    assert app.received[0].xml.count("\n") == 7  # one element per line, as in the official sample


def test_only_active_members_in_the_visible_range_can_message_the_app(emulator, receivers):
    receivers("app")
    disabled = emulator.users(status=2)[0].userid
    assert "status 2" in emulator.admin("callbacks/app/text", expect=400, userid=disabled, content="x")["error"]
    outside = emulator.users()[0].userid
    emulator.admin(f"apps/{emulator.OUR}", visibility={"departments": [9999]})
    assert "visible range" in emulator.admin("callbacks/app/text", expect=400, userid=outside, content="x")["error"]


def test_enter_agent_event(emulator, receivers):
    app = receivers("app")
    emulator.admin("callbacks/app/enter", userid=a_user(emulator).userid)
    drain(emulator)
    event = only_event(app)
    assert event["Event"] == "enter_agent" and event["AgentID"] == str(emulator.OUR)


CARD = {
    "card_type": "button_interaction",
    "main_title": {"title": "VPN 账号申请", "desc": "申请人:张三"},
    "task_id": "req-42-v1",
    "button_selection": {"question_key": "dur", "title": "有效期", "selected_id": "7d",
                         "option_list": [{"id": "7d", "text": "7天"}, {"id": "30d", "text": "30天"}]},
    "button_list": [{"text": "同意", "style": 1, "key": "approve:42"},
                    {"text": "驳回", "style": 4, "key": "reject:42"}],
}  # fmt: skip


def _send_card(emulator, users, card=CARD):
    body = emulator.post("message/send", {"touser": "|".join(users), "msgtype": "template_card",
                                          "agentid": emulator.OUR, "template_card": card})  # fmt: skip
    assert body["errcode"] == 0, body
    return body


def test_card_click_sends_template_card_event_with_a_usable_response_code(emulator, receivers):
    app = receivers("app")
    a, b = (u.userid for u in emulator.users()[:2])
    _send_card(emulator, [a, b])
    click = emulator.admin("callbacks/app/card-click", userid=a, task_id="req-42-v1", key="approve:42")
    drain(emulator)
    event = only_event(app)
    assert event["Event"] == "template_card_event" and event["FromUserName"] == a
    assert (event["EventKey"], event["TaskId"], event["CardType"]) == ("approve:42", "req-42-v1", "button_interaction")
    assert event["ResponseCode"] == click["response_code"] and event["AgentID"] == str(emulator.OUR)
    assert event["SelectedItems"]["SelectedItem"] == {"QuestionKey": "dur", "OptionIds": {"OptionId": "7d"}}
    update = {"userids": [a], "agentid": emulator.OUR, "response_code": click["response_code"],
              "button": {"replace_name": "已同意"}}  # fmt: skip
    assert emulator.post("message/update_template_card", update)["errcode"] == 0
    assert "replaced" in emulator.admin("callbacks/app/card-click", expect=400, userid=a, task_id="req-42-v1",
                                        key="reject:42")["error"]  # fmt: skip
    emulator.admin("callbacks/app/card-click", userid=b, task_id="req-42-v1", key="reject:42", selected={"dur": "30d"})
    drain(emulator)
    second = app.events()[1]
    assert second["FromUserName"] == b and second["SelectedItems"]["SelectedItem"]["OptionIds"]["OptionId"] == "30d"


def test_card_click_is_validated(emulator, receivers):
    receivers("app")
    a = emulator.users()[0].userid
    outsider = emulator.users()[5].userid
    _send_card(emulator, [a])
    for payload, words in (
        ({"userid": a, "task_id": "nope", "key": "approve:42"}, "no template card"),
        ({"userid": a, "task_id": "req-42-v1", "key": "maybe"}, "no button"),
        ({"userid": outsider, "task_id": "req-42-v1", "key": "approve:42"}, "did not receive"),
        ({"userid": a, "task_id": "req-42-v1", "key": "approve:42", "selected": {"dur": "1y"}}, "no option"),
        ({"userid": a, "task_id": "req-42-v1", "key": "approve:42", "selected": {"x": "7d"}}, "no question"),
    ):
        assert words in emulator.admin("callbacks/app/card-click", expect=400, **payload)["error"]


def test_a_passive_update_button_reply_greys_the_clickers_buttons(emulator, receivers):
    app = receivers("app")
    a = emulator.users()[0].userid
    _send_card(emulator, [a])
    crypto = WeChatCrypto(app.token, app.aes_key, emulator.corp_id)
    reply = ("<xml><ToUserName><![CDATA[x]]></ToUserName><FromUserName><![CDATA[y]]></FromUserName>"
             "<CreateTime>1</CreateTime><MsgType><![CDATA[update_button]]></MsgType>"
             "<Button><ReplaceName><![CDATA[已处理]]></ReplaceName></Button></xml>")  # fmt: skip
    app.reply_for = lambda item: crypto.encrypt_message(reply, "12345", "1700000000").encode()
    emulator.admin("callbacks/app/card-click", userid=a, task_id="req-42-v1", key="approve:42")
    drain(emulator)
    [d] = deliveries(emulator)
    assert d["reply"]["applied"] == {"update_button": "已处理", "userid": a}
    assert "replaced" in emulator.admin("callbacks/app/card-click", expect=400, userid=a, task_id="req-42-v1",
                                        key="approve:42")["error"]  # fmt: skip


def test_a_click_without_an_app_receiver_still_mints_a_code(emulator):
    a = emulator.users()[0].userid
    _send_card(emulator, [a])
    click = emulator.admin("callbacks/app/card-click", userid=a, task_id="req-42-v1", key="approve:42")
    assert click["delivery"] is None and click["response_code"]


# ---- the delivery log -----------------------------------------------------------------------------
def test_the_delivery_log_filters_and_shows_one_delivery(emulator, receivers):
    receivers("contact_sync")
    receivers("app")
    emulator.admin("directory/hire", userid="log01", name="日志")
    emulator.admin("callbacks/app/enter", userid="log01")
    drain(emulator)
    assert [d["event"] for d in deliveries(emulator, receiver="app")] == ["enter_agent"]
    assert [d["event"] for d in deliveries(emulator, receiver="contact_sync")] == ["change_contact"]
    [first] = deliveries(emulator, change_type="create_user")
    one = emulator.admin(f"callbacks/deliveries/{first['id']}")
    assert one["plaintext"].startswith("<xml>") and "msg_signature" in one["query"] and one["body"].startswith("<xml>")
    assert deliveries(emulator, since=first["id"])[0]["event"] == "enter_agent"
    assert "body" not in deliveries(emulator, body=0)[0]
    emulator.admin("callbacks/deliveries/999", expect=404)


def test_timestamps_follow_the_tenant_clock_or_the_wall_clock(emulator, receivers):
    contact = receivers()
    emulator.admin("directory/hire", userid="ts01", name="时")
    emulator.flags(callback_timestamp="wall")
    emulator.admin("directory/hire", userid="ts02", name="钟")
    drain(emulator)
    tenant_time, wall_time = contact.received
    assert tenant_time.query["timestamp"] == str(int(emulator.tenant.now()))
    assert abs(int(wall_time.query["timestamp"]) - time.time()) < 60
    assert abs(int(wall_time.event["CreateTime"]) - time.time()) < 60


def test_parallel_workers_deliver_concurrently(emulator, receivers):
    contact = receivers()
    emulator.flags(callback_workers=4)
    gate = threading.Event()
    contact.answer(*[Answer(wait=gate)] * 4)
    _hire_many(emulator, 4, prefix="par")
    deadline = time.monotonic() + 5
    while len(contact.received) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(contact.received) == 4  # all four in flight at once
    gate.set()
    drain(emulator)


def test_a_replacement_card_with_replace_text_greys_the_buttons_and_one_without_does_not(emulator, receivers):
    receivers("app")
    a, b = (u.userid for u in emulator.users()[:2])
    _send_card(emulator, [a, b])
    for user, replace_text in ((a, "已同意"), (b, "")):
        click = emulator.admin("callbacks/app/card-click", userid=user, task_id="req-42-v1", key="approve:42")
        card = {**CARD, "main_title": {"title": "VPN 账号申请", "desc": "已处理"}}
        if replace_text:
            card["replace_text"] = replace_text
        update = {"userids": [user], "agentid": emulator.OUR, "response_code": click["response_code"],
                  "template_card": card}  # fmt: skip
        assert emulator.post("message/update_template_card", update)["errcode"] == 0
    assert "replaced" in emulator.admin("callbacks/app/card-click", expect=400, userid=a, task_id="req-42-v1",
                                        key="approve:42")["error"]  # fmt: skip
    emulator.admin("callbacks/app/card-click", userid=b, task_id="req-42-v1", key="approve:42")  # still clickable
