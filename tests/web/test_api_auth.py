"""Machine API authentication over HTTP: bearer and HMAC, the 401 matrix, scopes, rate limit."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from wecom_plugin.extensions import db
from wecom_plugin.models import ApiKey, AuditEvent, RateCounter
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.services import api_keys
from wecom_plugin.web.api_auth import require_api_client

REQUEST_ID = "fixed-request-id-0001"


# --- helpers ---------------------------------------------------------------------------------------
def make_client(app, name: str, scopes=("test",)) -> None:
    with app.app_context():
        api_keys.create_client(db.session, name, list(scopes))
        db.session.commit()


def make_key(app, name: str) -> tuple[str, str]:
    with app.app_context():
        client = api_keys.get_client(db.session, name)
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
        return key_id, secret


def revoke(app, key_id: str) -> None:
    with app.app_context():
        assert api_keys.revoke_key(db.session, key_id)
        db.session.commit()


def disable(app, name: str) -> None:
    with app.app_context():
        assert api_keys.disable_client(db.session, api_keys.get_client(db.session, name))
        db.session.commit()


def db_epoch(app) -> int:
    """The database clock in whole seconds, rounded: signing at round(now) +/- N keeps a
    half-second margin either side of the boundary being tested."""
    with app.app_context():
        return round(db_now(db.session).timestamp())


def audit_rows(app, action: str = "api.auth") -> list[AuditEvent]:
    with app.app_context():
        rows = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        rows = list(rows)
        db.session.expunge_all()
        return rows


def bearer(key_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key_id}.{secret}", "X-Request-ID": REQUEST_ID}


def signed(
    key_id: str, secret: str, timestamp: int | str, body: bytes, method: str = "POST", path: str = "/api/v1/echo"
) -> dict[str, str]:
    message = f"{timestamp}.{method}.{path}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {
        "X-WeCom-Plugin-Key": key_id,
        "X-WeCom-Plugin-Timestamp": str(timestamp),
        "X-WeCom-Plugin-Signature": f"v1={digest}",
        "X-Request-ID": REQUEST_ID,
    }


def flip_last_char(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


@pytest.fixture
def setup(app):
    """Client ``hr`` (scope test) with one key, client ``other`` (no scopes) with one key."""
    make_client(app, "hr", ["test", "people.read"])
    make_client(app, "other", [])
    hr_key = make_key(app, "hr")
    other_key = make_key(app, "other")
    return app, hr_key, other_key


# --- success -------------------------------------------------------------------------------------------
def test_both_live_keys_work_with_bearer_and_hmac(setup):
    app, first, _ = setup
    second = make_key(app, "hr")  # rotation: the second live key
    http = app.test_client()
    for key_id, secret in (first, second):
        response = http.get("/api/v1/whoami", headers=bearer(key_id, secret))
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {
            "client": "hr",
            "scopes": ["people.read", "test"],
            "key_id": key_id,
            "auth": "bearer",
        }

        body = json.dumps({"userid": "zhangsan", "名字": "张三"}, ensure_ascii=False).encode()
        response = http.post("/api/v1/echo", data=body, headers=signed(key_id, secret, db_epoch(app), body))
        assert response.status_code == 200, response.get_json()
        assert response.get_json() == {"sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}

        response = http.get(
            "/api/v1/whoami", headers=signed(key_id, secret, db_epoch(app), b"", "GET", "/api/v1/whoami")
        )
        assert response.status_code == 200
        assert response.get_json()["auth"] == "hmac"
        assert response.headers["X-RateLimit-Limit"] == str(app.extensions["wecom_settings"].api_rate_limit_per_minute)
    assert audit_rows(app) == []

    with pytest.raises(api_keys.ApiKeyError, match="already has 2 live keys"):
        make_key(app, "hr")


def test_after_revoking_the_old_key_the_new_one_still_works(setup):
    app, first, _ = setup
    second = make_key(app, "hr")
    revoke(app, first[0])
    http = app.test_client()
    assert http.get("/api/v1/whoami", headers=bearer(*first)).status_code == 401
    assert http.get("/api/v1/whoami", headers=bearer(*second)).status_code == 200
    third = make_key(app, "hr")  # one slot is free again
    assert http.get("/api/v1/whoami", headers=bearer(*third)).status_code == 200


@pytest.mark.parametrize("offset", [-299, 299])
def test_timestamps_inside_the_window_are_accepted(setup, offset):
    app, (key_id, secret), _ = setup
    body = b'{"ok": true}'
    headers = signed(key_id, secret, db_epoch(app) + offset, body)
    response = app.test_client().post("/api/v1/echo", data=body, headers=headers)
    assert response.status_code == 200, response.get_json()


def test_several_signatures_in_the_header_one_valid_is_enough(setup):
    app, (key_id, secret), _ = setup
    headers = signed(key_id, secret, db_epoch(app), b"", "GET", "/api/v1/whoami")
    headers["X-WeCom-Plugin-Signature"] = f"v1={'0' * 64} {headers['X-WeCom-Plugin-Signature']}"
    assert app.test_client().get("/api/v1/whoami", headers=headers).status_code == 200


def test_last_used_at_is_recorded(setup):
    app, (key_id, secret), _ = setup
    assert app.test_client().get("/api/v1/whoami", headers=bearer(key_id, secret)).status_code == 200
    with app.app_context():
        key = db.session.scalar(sa.select(ApiKey).where(ApiKey.key_id == key_id))
        assert key.last_used_at is not None
        assert abs((db_now(db.session) - key.last_used_at).total_seconds()) < 60


# --- the 401 matrix ----------------------------------------------------------------------------------
def test_every_authentication_failure_is_the_same_401_and_one_audit_row(setup, caplog):
    app, (key_id, secret), (other_id, other_secret) = setup
    revoked_id, revoked_secret = make_key(app, "hr")
    revoke(app, revoked_id)
    make_client(app, "gone", ["test"])
    disabled_id, disabled_secret = make_key(app, "gone")
    disable(app, "gone")

    body = b'{"userid": "zhangsan"}'
    now = db_epoch(app)
    good = signed(key_id, secret, now, body)
    cases: dict[str, tuple[dict[str, str], bytes, str]] = {
        "no header": ({"X-Request-ID": REQUEST_ID}, body, "no credentials"),
        "wrong token of equal length": (bearer(key_id, flip_last_char(secret)), body, "does not match"),
        "bearer with another client's key id": (bearer(other_id, secret), body, "does not match"),
        "bearer without a dot": (
            {"Authorization": f"Bearer {key_id}{secret}", "X-Request-ID": REQUEST_ID},
            body,
            "malformed",
        ),
        "basic auth": ({"Authorization": "Basic aHI6aHI=", "X-Request-ID": REQUEST_ID}, body, "not a bearer"),
        "unknown key id": (bearer("wpk_0000000000000000", secret), body, "does not match"),
        "expired timestamp (now-301s)": (signed(key_id, secret, now - 301, body), body, "timestamp"),
        "future timestamp (now+301s)": (signed(key_id, secret, now + 301, body), body, "timestamp"),
        "tampered body": (good, body.replace(b"zhangsan", b"lisi0000"), "signature does not match"),
        "non-numeric timestamp": (
            {**good, "X-WeCom-Plugin-Timestamp": "yesterday"},
            body,
            "non-numeric",
        ),
        "missing signature": (
            {k: v for k, v in good.items() if k != "X-WeCom-Plugin-Signature"},
            body,
            "missing X-WeCom-Plugin-Signature",
        ),
        "client B's key id with client A's signature": (
            {**good, "X-WeCom-Plugin-Key": other_id},
            body,
            "signature does not match",
        ),
        "revoked key (bearer)": (bearer(revoked_id, revoked_secret), body, "revoked"),
        "revoked key (hmac)": (signed(revoked_id, revoked_secret, now, body), body, "revoked"),
        "disabled client": (bearer(disabled_id, disabled_secret), body, "disabled"),
        "both schemes": ({**good, **bearer(key_id, secret)}, body, "both"),
    }
    http = app.test_client()
    reference = None
    caplog.set_level(logging.DEBUG)
    for name, (headers, sent_body, reason) in cases.items():
        before = len(audit_rows(app))
        response = http.post("/api/v1/echo", data=sent_body, headers=headers)
        assert response.status_code == 401, name
        if reference is None:
            reference = response.get_data()
            assert response.get_json()["request_id"] == REQUEST_ID
            assert response.get_json()["message_en"] == "unauthorized"
        assert response.get_data() == reference, name
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="wecom-plugin"'
        rows = audit_rows(app)
        assert len(rows) == before + 1, name
        assert rows[-1].outcome == "denied"
        assert reason in rows[-1].reason, (name, rows[-1].reason)
        for secret_value in (secret, other_secret, revoked_secret, disabled_secret):
            assert secret_value not in response.get_data(as_text=True)
            assert secret_value not in (rows[-1].reason or "") + (rows[-1].target or "") + json.dumps(rows[-1].detail)

    assert set(json.loads(reference)) == {"error", "message_zh", "message_en", "request_id"}
    for secret_value in (secret, other_secret, revoked_secret, disabled_secret):
        assert secret_value not in caplog.text
    assert "api request denied" in caplog.text  # the log did capture the failures


def test_failures_are_attributed_only_once_the_secret_is_proven(setup):
    app, (key_id, secret), _ = setup
    http = app.test_client()
    now = db_epoch(app)
    assert http.get("/api/v1/whoami", headers=bearer(key_id, flip_last_char(secret))).status_code == 401
    assert (
        http.get("/api/v1/whoami", headers=signed(key_id, secret, now - 400, b"", "GET", "/api/v1/whoami")).status_code
        == 401
    )
    wrong_secret, stale = audit_rows(app)
    assert (wrong_secret.actor, wrong_secret.target) == ("api:unknown", f"key:{key_id}")
    assert (stale.actor, stale.target) == ("api:hr", f"key:{key_id}")
    assert stale.request_id == REQUEST_ID
    assert stale.detail == {"method": "GET", "path": "/api/v1/whoami"}


def test_a_key_without_the_scope_gets_403_and_one_audit_row(setup):
    app, _, (other_id, other_secret) = setup
    http = app.test_client()
    body = b"{}"
    for headers in (bearer(other_id, other_secret), signed(other_id, other_secret, db_epoch(app), body)):
        response = http.post("/api/v1/echo", data=body, headers=headers)
        assert response.status_code == 403
        assert response.get_json()["message_en"] == "forbidden"
        assert other_secret not in response.get_data(as_text=True)
    rows = audit_rows(app)
    assert [(r.actor, r.outcome) for r in rows] == [("api:other", "denied")] * 2
    assert "missing scope 'test'" in rows[0].reason
    # whoami needs no scope: the same key is valid there.
    assert http.get("/api/v1/whoami", headers=bearer(other_id, other_secret)).status_code == 200


# --- rate limit -----------------------------------------------------------------------------------------
def _wait_for_fresh_window(app) -> None:
    """Sleep past a minute boundary that is about to arrive, so the test stays in one window."""
    second = db_now_seconds(app) % 60
    if second > 50:
        time.sleep(60 - second + 0.2)


def db_now_seconds(app) -> float:
    with app.app_context():
        return db_now(db.session).timestamp()


def test_the_rate_limit_is_shared_by_two_app_instances_on_one_database(make_app, db_url):
    # Like two gunicorn workers (or hosts) of one deployment: same database, same encryption key.
    shared = {"API_RATE_LIMIT_PER_MINUTE": "3", "WECOM_PLUGIN_ENCRYPTION_KEY": Fernet.generate_key().decode()}
    first_app = make_app(DATABASE_URL=db_url, **shared)
    second_app = make_app(DATABASE_URL=db_url, **shared)
    make_client(first_app, "hr", ["test"])
    key = make_key(first_app, "hr")
    make_client(first_app, "other", ["test"])
    other_key = make_key(first_app, "other")
    _wait_for_fresh_window(first_app)

    one, two = first_app.test_client(), second_app.test_client()
    statuses = [c.get("/api/v1/whoami", headers=bearer(*key)) for c in (one, two, one)]
    assert [r.status_code for r in statuses] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in statuses] == ["2", "1", "0"]

    limited = two.get("/api/v1/whoami", headers=bearer(*key))
    assert limited.status_code == 429
    assert limited.get_json()["message_en"] == "too many requests"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert one.get("/api/v1/whoami", headers=bearer(*key)).status_code == 429
    # Another client has its own budget.
    assert two.get("/api/v1/whoami", headers=bearer(*other_key)).status_code == 200
    with first_app.app_context():
        counts = dict(db.session.execute(sa.select(RateCounter.bucket, RateCounter.count)).all())
    assert sorted(counts.values()) == [1, 5]


def test_the_count_survives_a_request_that_fails(make_app):
    app = make_app()

    def boom():
        raise RuntimeError("view failed after authentication")

    app.add_url_rule("/api/v1/boom", "boom", require_api_client()(boom))
    make_client(app, "hr", ["test"])
    key = make_key(app, "hr")
    assert app.test_client().get("/api/v1/boom", headers=bearer(*key)).status_code == 500
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.sum(RateCounter.count))) == 1


def test_repeated_failures_from_one_address_are_throttled_and_stop_growing_the_audit_log(setup):
    from wecom_plugin.web.api_auth import AUTH_FAILURES_PER_MINUTE

    app, (key_id, secret), _ = setup
    http = app.test_client()
    _wait_for_fresh_window(app)
    codes = [
        http.get("/api/v1/whoami", headers=bearer(key_id, flip_last_char(secret))).status_code
        for _ in range(AUTH_FAILURES_PER_MINUTE + 3)
    ]
    assert codes[:AUTH_FAILURES_PER_MINUTE] == [401] * AUTH_FAILURES_PER_MINUTE
    assert codes[AUTH_FAILURES_PER_MINUTE:] == [429] * 3
    assert len(audit_rows(app)) == AUTH_FAILURES_PER_MINUTE
