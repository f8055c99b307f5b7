"""auth/getuserinfo and OAuth codes (contract §9.3)."""

from __future__ import annotations


def _code(emulator, **spec):
    return emulator.admin("oauth/code", **spec)["code"]


def test_a_code_exchanges_for_the_userid_exactly_once(emulator):
    user = emulator.users()[2]
    code = _code(emulator, userid=user.userid)
    assert emulator.get("auth/getuserinfo", code=code) == {"errcode": 0, "errmsg": "ok", "userid": user.userid}
    assert emulator.get("auth/getuserinfo", code=code)["errcode"] == 40029


def test_a_code_expires_after_5_minutes(emulator):
    code = _code(emulator, userid=emulator.users()[2].userid)
    emulator.advance(300)
    assert emulator.get("auth/getuserinfo", code=code)["errcode"] == 40029


def test_an_unknown_or_missing_code_is_rejected(emulator):
    assert emulator.get("auth/getuserinfo", code="nope")["errcode"] == 40029
    assert emulator.get("auth/getuserinfo")["errcode"] == 41008


def test_a_member_outside_the_app_visibility_is_50002(emulator):
    finance = next(u for u in emulator.users() if emulator.data.departments[u.main_department].name == "财务部")
    code = _code(emulator, userid=finance.userid)
    assert emulator.get("auth/getuserinfo", as_=emulator.STORE, code=code)["errcode"] == 50002


def test_a_redirect_domain_other_than_the_trusted_domain_is_50001(emulator):
    code = _code(emulator, userid=emulator.users()[0].userid, redirect_domain="evil.example.com")
    assert emulator.get("auth/getuserinfo", code=code)["errcode"] == 50001
    ok = _code(emulator, userid=emulator.users()[0].userid, redirect_domain="wecom-plugin.example.com")
    assert emulator.get("auth/getuserinfo", code=ok)["errcode"] == 0


def test_a_non_member_gets_an_openid(emulator):
    code = _code(emulator, openid="oAbc123", external_userid="wmXYZ")
    assert emulator.get("auth/getuserinfo", code=code) == {
        "errcode": 0,
        "errmsg": "ok",
        "openid": "oAbc123",
        "external_userid": "wmXYZ",
    }


def test_privateinfo_scope_returns_a_user_ticket_for_the_detail(emulator):
    user = emulator.users()[2]
    code = _code(emulator, userid=user.userid, scope="snsapi_privateinfo")
    ticket = emulator.get("auth/getuserinfo", code=code)["user_ticket"]
    detail = emulator.post("auth/getuserdetail", {"user_ticket": ticket})
    assert detail["userid"] == user.userid and detail["mobile"] == user.mobile
    emulator.advance(1800)
    assert emulator.post("auth/getuserdetail", {"user_ticket": ticket})["errcode"] == 40058


def test_the_legacy_user_getuserinfo_answers_capitalised_keys(emulator):
    user = emulator.users()[2]
    code = _code(emulator, userid=user.userid)
    body = emulator.get("user/getuserinfo", code=code)
    assert body["UserId"] == user.userid and body["DeviceId"] == ""


def test_getuserinfo_is_exempt_from_the_frequency_limit(emulator):
    emulator.flags(basic_per_minute=1)
    for _ in range(3):
        assert emulator.get("auth/getuserinfo", code="nope")["errcode"] == 40029
