"""gettoken and token validity (contract §1; checklist §12.1)."""

from __future__ import annotations


def _gettoken(emulator, corpid=None, secret=None):
    params = {}
    if corpid is not False:
        params["corpid"] = corpid or emulator.corp_id
    if secret is not False:
        params["corpsecret"] = secret or emulator.secret()
    return emulator.get("gettoken", as_=None, **params)


def test_gettoken_returns_token_and_7200_expiry(emulator):
    body = _gettoken(emulator)
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    assert body["expires_in"] == 7200
    assert 0 < len(body["access_token"]) <= 512


def test_gettoken_returns_the_same_token_while_valid(emulator):
    first = _gettoken(emulator)["access_token"]
    emulator.advance(7000)
    assert _gettoken(emulator)["access_token"] == first


def test_gettoken_issues_a_new_token_after_expiry(emulator):
    first = _gettoken(emulator)["access_token"]
    emulator.advance(7200)
    assert _gettoken(emulator)["access_token"] != first


def test_tokens_are_per_secret(emulator):
    assert emulator.token(emulator.OUR) != emulator.token(emulator.OTHER) != emulator.token("contact_sync")


def test_expired_token_answers_42001(emulator):
    token = emulator.token()
    emulator.advance(7200)
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 42001


def test_expired_token_errcode_can_be_40014(emulator):
    emulator.flags(expired_token_errcode=40014)
    token = emulator.token()
    emulator.advance(7201)
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 40014


def test_early_invalidation_answers_40014_and_gettoken_then_issues_a_new_token(emulator):
    token = emulator.token()
    assert emulator.admin("tokens/invalidate", agentid=emulator.OUR)["invalidated"] == [f"app:{emulator.OUR}"]
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 40014
    fresh = emulator.token(fresh=True)
    assert fresh != token
    assert emulator.get("department/simplelist", access_token=fresh)["errcode"] == 0


def test_early_invalidation_can_answer_42001(emulator):
    token = emulator.token()
    emulator.admin("tokens/invalidate", errcode=42001)
    assert emulator.get("department/simplelist", access_token=token)["errcode"] == 42001


def test_unknown_token_answers_40014(emulator):
    assert emulator.get("department/simplelist", access_token="not-a-token")["errcode"] == 40014


def test_missing_token_answers_41001(emulator):
    assert emulator.get("department/simplelist", as_=None)["errcode"] == 41001


def test_gettoken_with_wrong_corpid_answers_40013(emulator):
    assert _gettoken(emulator, corpid="wwffffffffffffffff")["errcode"] == 40013


def test_gettoken_with_unknown_secret_answers_40001(emulator):
    assert _gettoken(emulator, secret="x" * 43)["errcode"] == 40001


def test_gettoken_with_another_corps_secret_answers_40091(emulator):
    foreign = next(iter(emulator.data.foreign_secrets))
    assert _gettoken(emulator, secret=foreign)["errcode"] == 40091


def test_gettoken_without_corpid_or_secret_answers_41002_41004(emulator):
    assert _gettoken(emulator, corpid=False)["errcode"] == 41002
    assert _gettoken(emulator, secret=False)["errcode"] == 41004


def test_gettoken_is_not_trusted_ip_checked(emulator):
    emulator.caller_ip("203.0.113.9")
    body = _gettoken(emulator)
    assert body["errcode"] == 0
    assert emulator.get("department/simplelist", access_token=body["access_token"])["errcode"] == 60020


def test_gettoken_blocks_an_ip_after_too_many_failures_in_an_hour(emulator):
    emulator.flags(gettoken_failures_per_hour=3)
    for _ in range(3):
        assert _gettoken(emulator, secret="bad")["errcode"] == 40001
    assert _gettoken(emulator)["errcode"] == 45009
    emulator.advance(3601)
    assert _gettoken(emulator)["errcode"] == 0


def test_gettoken_expires_in_can_report_the_remaining_lifetime(emulator):
    emulator.flags(gettoken_expires_in="remaining")
    _gettoken(emulator)
    emulator.advance(1000)
    assert _gettoken(emulator)["expires_in"] == 6200


def test_gettoken_can_issue_a_new_token_on_every_call(emulator):
    emulator.flags(gettoken_same_token_while_valid=False)
    first = _gettoken(emulator)["access_token"]
    second = _gettoken(emulator)["access_token"]
    assert first != second
    assert emulator.get("department/simplelist", access_token=first)["errcode"] == 0
