"""Order of checks on data APIs: token → trusted IP → permission → validation (contract §11, §12.2)."""

from __future__ import annotations


def test_token_is_checked_before_trusted_ip(emulator):
    emulator.caller_ip("203.0.113.1")
    assert emulator.get("user/get", access_token="bogus", userid="x")["errcode"] == 40014


def test_post_2022_app_from_an_untrusted_ip_gets_60020(emulator):
    token = emulator.token()
    emulator.caller_ip("203.0.113.1")
    body = emulator.get("user/get", access_token=token, userid="x")
    assert body["errcode"] == 60020
    assert "not allow to access from your ip" in body["errmsg"]
    assert "from ip: 203.0.113.1" in body["errmsg"]


def test_message_send_is_trusted_ip_checked_too(emulator):
    token = emulator.token()
    emulator.caller_ip("203.0.113.1")
    assert emulator.post("message/send", {}, access_token=token)["errcode"] == 60020


def test_pre_2022_app_is_not_trusted_ip_checked(emulator):
    token = emulator.token(emulator.OTHER)
    emulator.caller_ip("203.0.113.1")
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 0


def test_trusted_ip_list_accepts_cidr_entries_and_changes_at_run_time(emulator):
    token = emulator.token()
    emulator.caller_ip("10.1.2.3")
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 60020
    emulator.admin(f"apps/{emulator.OUR}", trusted_ips=["10.1.0.0/16"])
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 0


def test_contact_sync_secret_is_trusted_ip_checked(emulator):
    token = emulator.token("contact_sync")
    emulator.caller_ip("203.0.113.1")
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 60020


def test_trusted_ip_is_checked_before_permission(emulator):
    token = emulator.token("contact_sync")
    emulator.caller_ip("203.0.113.1")
    assert emulator.post("appchat/create", {}, access_token=token)["errcode"] == 60020


def test_permission_is_checked_before_validation(emulator):
    assert emulator.post("appchat/create", {"bad": 1}, as_="contact_sync")["errcode"] == 48002


def test_root_scope_is_checked_before_validation(emulator):
    assert emulator.post("appchat/create", {"bad": 1}, as_=emulator.STORE)["errcode"] == 60011


def test_caller_ip_is_the_tcp_peer(emulator):
    emulator.get("department/simplelist")
    assert emulator.requests(endpoint="department/simplelist")[0]["ip"] == "127.0.0.1"


def test_per_api_frequency_limit_answers_45009(emulator):
    emulator.flags(basic_per_minute=3)
    codes = [emulator.get("tag/list")["errcode"] for _ in range(4)]
    assert codes == [0, 0, 0, 45009]
    assert emulator.get("department/simplelist")["errcode"] == 0
    emulator.advance(61)
    assert emulator.get("tag/list")["errcode"] == 0


def test_concurrency_limit_answers_45033(emulator):
    emulator.token()
    emulator.flags(max_concurrency=0)
    assert emulator.get("tag/list")["errcode"] == 45033
