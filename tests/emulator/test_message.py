"""message/send and message/update_template_card (contract §4, §14.2, §14.4, §14.6; checklist §12.5)."""

from __future__ import annotations

import pytest


def _text(emulator, touser="", toparty="", totag="", as_=None, **extra):
    agent = as_ or emulator.OUR
    body = {"touser": touser, "toparty": toparty, "totag": totag, "msgtype": "text", "agentid": agent,
            "text": {"content": "hello"}, **extra}  # fmt: skip
    return emulator.post("message/send", body, as_=agent)


def _last(emulator, path="message"):
    return emulator.admin("messages", query={"path": path})["messages"][-1]


def _card(task_id="req-42-v1", **over):
    card = {
        "card_type": "button_interaction",
        "main_title": {"title": "VPN 账号申请", "desc": "申请人:张三"},
        "task_id": task_id,
        "button_list": [
            {"text": "同意", "style": 1, "key": "approve:42"},
            {"text": "驳回", "style": 4, "key": "reject:42"},
        ],
    }
    card.update(over)
    return card


def _send_card(emulator, users, card):
    body = {"touser": "|".join(users), "msgtype": "template_card", "agentid": emulator.OUR, "template_card": card}
    return emulator.post("message/send", body)


def test_send_text_to_users_delivers_and_returns_a_msgid(emulator):
    a, b = emulator.users()[:2]
    body = _text(emulator, f"{a.userid}|{b.userid}")
    assert body["errcode"] == 0 and body["invaliduser"] == "" and body["msgid"]
    assert _last(emulator)["delivered"] == [a.userid, b.userid]


def test_partly_invalid_recipients_are_echoed_lower_cased_with_errcode_0(emulator):
    a = emulator.users()[0]
    body = _text(emulator, f"{a.userid}|GhostUser|Nobody", toparty="9999", totag="777")
    assert body["errcode"] == 0
    assert body["invaliduser"] == "ghostuser|nobody"
    assert body["invalidparty"] == "9999" and body["invalidtag"] == "777"
    assert _last(emulator)["delivered"] == [a.userid]


def test_all_recipients_invalid_is_81013_with_the_echo(emulator):
    body = _text(emulator, "Ghost|nobody")
    assert body["errcode"] == 81013 and body["invaliduser"] == "ghost|nobody"
    assert "user & party & tag all invalid" in body["errmsg"]


def test_no_recipient_at_all_is_81013(emulator):
    assert _text(emulator)["errcode"] == 81013


def test_recipient_outside_the_app_visibility_is_invalid(emulator):
    store_dept = next(d.id for d in emulator.data.departments.values() if d.name == "门店运营部")
    store_member = next(iter(emulator.data.dept_members[store_dept]))
    finance = next(u for u in emulator.users() if emulator.data.departments[u.main_department].name == "财务部")
    body = _text(emulator, f"{store_member}|{finance.userid}", as_=emulator.STORE)
    assert body["errcode"] == 0 and body["invaliduser"] == finance.userid.lower()


def test_toparty_includes_sub_departments(emulator):
    it = next(d.id for d in emulator.data.departments.values() if d.name == "信息技术部")
    assert _text(emulator, toparty=str(it))["errcode"] == 0
    expected = {k for d in emulator.data.subtree(it) for k in emulator.data.dept_members[d]}
    msg = _last(emulator)
    assert {u.lower() for u in msg["delivered"]} | {u.lower() for u in msg["dropped"]} == expected


def test_totag_expands_tag_users_and_tag_departments(emulator):
    assert _text(emulator, totag="5")["errcode"] == 0
    ops = emulator.data.tags[5].parties[0]
    msg = _last(emulator)
    assert {u.lower() for u in msg["delivered"]} | {u.lower() for u in msg["dropped"]} == set(
        emulator.data.dept_members[ops]
    )


def test_touser_all_reaches_the_whole_visibility(emulator):
    assert _text(emulator, "@all", as_=emulator.STORE)["errcode"] == 0
    msg = _last(emulator)
    assert len(msg["delivered"]) + len(msg["dropped"]) < len(emulator.data.users)
    assert _text(emulator, "@all")["errcode"] == 0
    msg = _last(emulator)
    assert len(msg["delivered"]) + len(msg["dropped"]) == len(emulator.data.users)


def test_disabled_and_left_members_are_not_delivered(emulator):
    disabled = emulator.users(status=2)[0]
    left = emulator.users(status=5)[0]
    body = _text(emulator, f"{disabled.userid}|{left.userid}")
    assert body["errcode"] == 0 and body["invaliduser"] == ""
    assert _last(emulator)["dropped"] == {disabled.userid: "disabled", left.userid: "left"}


def test_agentid_must_be_the_token_app_40056(emulator):
    body = {
        "touser": emulator.users()[0].userid,
        "msgtype": "text",
        "agentid": emulator.OTHER,
        "text": {"content": "x"},
    }
    assert emulator.post("message/send", body)["errcode"] == 40056
    body["agentid"] = None
    assert emulator.post("message/send", body)["errcode"] == 41011


def test_duplicate_check_suppresses_an_identical_request_within_the_interval(emulator):
    uid = emulator.users()[0].userid
    first = _text(emulator, uid, enable_duplicate_check=1, duplicate_check_interval=600)
    second = _text(emulator, uid, enable_duplicate_check=1, duplicate_check_interval=600)
    assert first["errcode"] == second["errcode"] == 0 and first["msgid"] == second["msgid"]
    assert _last(emulator)["dropped"] == {uid: "duplicate"}
    emulator.advance(600)
    _text(emulator, uid, enable_duplicate_check=1, duplicate_check_interval=600)
    assert _last(emulator)["delivered"] == [uid]


def test_duplicate_check_interval_is_at_most_4_hours(emulator):
    uid = emulator.users()[0].userid
    assert _text(emulator, uid, enable_duplicate_check=1, duplicate_check_interval=14401)["errcode"] == 40058


def test_more_than_30_per_member_per_minute_are_dropped_silently(emulator):
    uid = emulator.users()[0].userid
    assert {_text(emulator, uid)["errcode"] for _ in range(31)} == {0}
    msgs = emulator.admin("messages", query={"userid": uid})["messages"]
    assert [m["drop_reason"] for m in msgs[-2:]] == [None, "member_per_minute"]


def test_more_than_1000_per_member_per_hour_are_dropped_silently(emulator):
    emulator.flags(message_member_per_hour=3)
    uid = emulator.users()[0].userid
    for _ in range(3):
        _text(emulator, uid)
        emulator.advance(61)
    _text(emulator, uid)
    assert emulator.admin("messages", query={"userid": uid})["messages"][-1]["drop_reason"] == "member_per_hour"


def test_app_daily_budget_is_members_times_200(emulator):
    emulator.flags(message_app_daily_per_account=0)
    uid = emulator.users()[0].userid
    assert _text(emulator, uid)["errcode"] == 0
    assert _last(emulator)["dropped"] == {uid: "app_per_day"}


def test_text_over_2048_bytes_is_truncated(emulator):
    uid = emulator.users()[0].userid
    body = {"touser": uid, "msgtype": "text", "agentid": emulator.OUR, "text": {"content": "字" * 700}}
    assert emulator.post("message/send", body)["errcode"] == 0
    assert _last(emulator)["content"]["content"] == "字" * 682


def test_news_does_not_support_safe_40074(emulator):
    uid = emulator.users()[0].userid
    news = {"articles": [{"title": "t", "url": "https://x"}]}
    body = {"touser": uid, "msgtype": "news", "agentid": emulator.OUR, "news": news, "safe": 1}
    assert emulator.post("message/send", body)["errcode"] == 40074


def test_safe_2_is_only_for_mpnews(emulator):
    uid = emulator.users()[0].userid
    body = {"touser": uid, "msgtype": "text", "agentid": emulator.OUR, "text": {"content": "x"}, "safe": 2}
    assert emulator.post("message/send", body)["errcode"] == 40058


def test_strict_safe_rejects_safe_where_undocumented(emulator):
    uid = emulator.users()[0].userid
    card = {"title": "t", "description": "d", "url": "https://x"}
    body = {"touser": uid, "msgtype": "textcard", "agentid": emulator.OUR, "textcard": card, "safe": 1}
    assert emulator.post("message/send", body)["errcode"] == 0
    emulator.flags(strict_safe=True)
    assert emulator.post("message/send", body)["errcode"] == 40058


def test_too_many_parties_is_82002(emulator):
    assert _text(emulator, toparty="|".join(str(i) for i in range(101)))["errcode"] == 82002


def test_button_card_returns_a_response_code_and_records_the_task(emulator):
    users = [u.userid for u in emulator.users()[:2]]
    body = _send_card(emulator, users, _card())
    assert body["errcode"] == 0 and body["response_code"]
    msg = _last(emulator)
    assert msg["task_id"] == "req-42-v1" and msg["delivered"] == users
    assert msg["content"]["button_list"][0]["key"] == "approve:42"


def test_task_id_cannot_be_reused_42014(emulator):
    users = [emulator.users()[0].userid]
    assert _send_card(emulator, users, _card())["errcode"] == 0
    assert _send_card(emulator, users, _card())["errcode"] == 42014
    assert _send_card(emulator, users, _card(task_id="bad id!"))["errcode"] == 42014


@pytest.mark.parametrize(
    ("override", "errcode"),
    [
        ({"card_type": "fancy"}, 42031),
        ({"button_list": []}, 42038),
        ({"button_list": [{"text": "a", "key": "k"}, {"text": "b", "key": "k"}]}, 42039),
        ({"main_title": {}}, 42033),
        ({"horizontal_content_list": [{"keyname": str(i), "value": "v"} for i in range(7)]}, 42035),
        ({"horizontal_content_list": [{"value": "v"}]}, 42027),
        ({"button_selection": {"question_key": "q", "option_list": []}}, 42037),
    ],
)
def test_template_card_validation(emulator, override, errcode):
    assert _send_card(emulator, [emulator.users()[0].userid], _card(**override))["errcode"] == errcode


def test_text_notice_card_needs_card_action_42045(emulator):
    card = {"card_type": "text_notice", "main_title": {"title": "通知"}}
    assert _send_card(emulator, [emulator.users()[0].userid], card)["errcode"] == 42045
    card["card_action"] = {"type": 1, "url": "https://example.com"}
    body = _send_card(emulator, [emulator.users()[0].userid], card)
    assert body["errcode"] == 0 and "response_code" not in body


def test_update_template_card_greys_buttons_once_per_response_code(emulator):
    users = [u.userid for u in emulator.users()[:2]]
    code = _send_card(emulator, users, _card())["response_code"]
    update = {
        "userids": users[:1],
        "agentid": emulator.OUR,
        "response_code": code,
        "button": {"replace_name": "已同意"},
    }
    body = emulator.post("message/update_template_card", update)
    assert body == {"errcode": 0, "errmsg": "ok", "invaliduser": []}
    assert _last(emulator)["updates"][0]["targets"] == users[:1]
    again = emulator.post("message/update_template_card", update)
    assert again["errcode"] == 42022 and again["invaliduser"] == []


def test_update_template_card_response_code_expires_after_72_hours(emulator):
    users = [emulator.users()[0].userid]
    code = _send_card(emulator, users, _card())["response_code"]
    emulator.advance(72 * 3600)
    update = {"atall": 1, "agentid": emulator.OUR, "response_code": code, "button": {"replace_name": "已处理"}}
    assert emulator.post("message/update_template_card", update)["errcode"] == 40058


def test_update_template_card_can_replace_the_whole_card(emulator):
    users = [emulator.users()[0].userid]
    code = _send_card(emulator, users, _card())["response_code"]
    new = _card(replace_text="已同意")
    update = {"atall": 1, "agentid": emulator.OUR, "response_code": code, "template_card": new}
    assert emulator.post("message/update_template_card", update)["errcode"] == 0
    assert _last(emulator)["updates"][0]["template_card"]["replace_text"] == "已同意"


def test_update_template_card_with_an_unknown_code_is_rejected(emulator):
    update = {"atall": 1, "agentid": emulator.OUR, "response_code": "nope", "button": {"replace_name": "x"}}
    assert emulator.post("message/update_template_card", update)["errcode"] == 40058
