"""The response envelope (contract §0, checklist §12.9)."""

from __future__ import annotations

import re

SUFFIX = re.compile(
    r", hint: \[[^\]]+\], from ip: 127\.0\.0\.1, more info at https://open\.work\.weixin\.qq\.com/devtool/query\?e=(\d+)$"
)


def test_business_errors_answer_http_200(emulator):
    resp = emulator.http.get(emulator.url + "user/get", params={"access_token": "nope", "userid": "x"})
    assert resp.status_code == 200
    assert resp.json()["errcode"] == 40014


def test_error_errmsg_carries_hint_ip_and_more_info_suffix(emulator):
    body = emulator.get("user/get", userid="nobody")
    assert body["errcode"] == 60111
    m = SUFFIX.search(body["errmsg"])
    assert m and m.group(1) == "60111"
    assert body["errmsg"].startswith("invalid string value `nobody`. userid not found")


def test_error_body_echoes_the_empty_list_field(emulator):
    body = emulator.get("department/list", id=999)
    assert body["errcode"] == 60003
    assert body["department"] == []
    emulator.caller_ip("198.51.100.7")
    body = emulator.post("externalcontact/groupchat/list", {"limit": 10})
    assert body["errcode"] == 60020 and body["group_chat_list"] == []
    assert "from ip: 198.51.100.7" in body["errmsg"]


def test_error_headers_echo_the_errcode(emulator):
    resp = emulator.http.get(emulator.url + "user/get", params={"access_token": emulator.token(), "userid": "nobody"})
    assert resp.headers["Error-Code"] == "60111"
    assert "userid not found" in resp.headers["Error-Msg"]


def test_invalid_json_body_warns_and_reads_as_empty(emulator):
    body = emulator.post("appchat/create", raw=b'{"name": "x", "userlist": [')
    assert body["errcode"] == 86006
    assert body["errmsg"].startswith("Warning: wrong json format. ")


def test_mistyped_field_is_ignored_and_success_carries_the_warning(emulator):
    chat = emulator.our_chats()[0]
    body = emulator.post("appchat/update", {"chatid": chat.chatid, "add_user_list": "notalist"})
    assert body == {"errcode": 0, "errmsg": "ok. Warning: wrong json format. "}


def test_numeric_strings_are_accepted_for_integers(emulator):
    user = emulator.users()[0]
    body = emulator.post(
        "message/send",
        {"touser": user.userid, "msgtype": "text", "agentid": str(emulator.OUR), "text": {"content": "x"}, "safe": "0"},
    )
    assert body["errcode"] == 0 and body["errmsg"] == "ok"


def test_unknown_endpoint_answers_99999(emulator):
    body = emulator.get("user/delete", userid="x")
    assert body["errcode"] == 99999
    assert "not implemented" in body["errmsg"]
    assert emulator.requests(endpoint="user/delete")[0]["errcode"] == 99999


def test_wrong_method_answers_99999(emulator):
    assert emulator.get("appchat/create")["errcode"] == 99999


def test_paths_outside_cgi_bin_are_404(emulator):
    assert emulator.http.get(emulator.base_url + "/other").status_code == 404


def test_userids_are_case_insensitive_and_the_stored_spelling_is_returned(emulator):
    user = next(u for u in emulator.users() if u.userid != u.userid.lower())
    body = emulator.get("user/get", userid=user.userid.swapcase())
    assert body["errcode"] == 0 and body["userid"] == user.userid


def test_media_upload_success_has_empty_errmsg(emulator):
    body = emulator.upload(b"hello world", "file")
    assert body["errcode"] == 0 and body["errmsg"] == ""


def test_hostile_input_in_errmsg_does_not_break_the_response(emulator):
    body = emulator.get("user/get", userid="a\r\nX-Injected: 1")
    assert body["errcode"] == 40003
    resp = emulator.http.get(emulator.url + "user/get", params={"access_token": emulator.token(), "userid": "a\nb"})
    assert "X-Injected" not in resp.headers and "\n" not in resp.headers["Error-Msg"]


def test_a_created_chat_is_findable_in_the_request_log(emulator):
    ids = [u.userid for u in emulator.users()[:2]]
    chatid = emulator.post("appchat/create", {"userlist": ids})["chatid"]
    assert [e["endpoint"] for e in emulator.requests(chatid=chatid)] == ["appchat/create"]
