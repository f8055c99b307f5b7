"""API clients and keys: the service (no Flask request) and the ``api-clients`` / ``keys`` CLI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from cryptography.fernet import Fernet
from flask.cli import ScriptInfo

from wecom_plugin.cli import cli
from wecom_plugin.extensions import db
from wecom_plugin.models import ApiClient, ApiKey, AuditEvent
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.services import api_keys
from wecom_plugin.services.api_keys import ApiKeyError, AuthenticationFailed


@pytest.fixture
def ctx(app):
    """An app context; yields (session, encryption key)."""
    with app.app_context():
        yield db.session, app.extensions["wecom_settings"].encryption_key


def _auth(session, key, headers, body=b"", now=None, max_skew=300):
    return api_keys.authenticate(
        session,
        method="POST",
        path="/api/v1/echo",
        headers=headers,
        body=body,
        now=now or db_now(session),
        max_skew=max_skew,
        encryption_key=key,
    )


def _sign(secret: str, timestamp: str, body: bytes, method: str = "POST", path: str = "/api/v1/echo") -> str:
    signed = f"{timestamp}.{method}.{path}.".encode() + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


# --- service ------------------------------------------------------------------------------------------
def test_a_key_has_a_public_id_and_a_256_bit_secret_stored_encrypted(ctx):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", ["test"])
    key_id, secret = api_keys.create_key(session, client, encryption_key=enc)
    session.commit()
    assert re.fullmatch(r"wpk_[0-9a-f]{16}", key_id)
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32
    stored = session.scalar(sa.select(ApiKey).where(ApiKey.key_id == key_id))
    assert secret.encode() not in stored.secret_encrypted
    assert Fernet(enc).decrypt(stored.secret_encrypted) == secret.encode()


def test_at_most_two_live_keys_and_revoking_frees_a_slot(ctx):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", [])
    first, _ = api_keys.create_key(session, client, encryption_key=enc)
    api_keys.create_key(session, client, encryption_key=enc)
    with pytest.raises(ApiKeyError, match="revoke one first"):
        api_keys.create_key(session, client, encryption_key=enc)
    assert api_keys.revoke_key(session, first) is True
    assert api_keys.revoke_key(session, first) is False  # already revoked
    api_keys.create_key(session, client, encryption_key=enc)
    live = [k for k in api_keys.list_keys(session, client) if k.revoked_at is None]
    assert len(live) == 2
    assert api_keys.list_clients(session)[0][1] == 2


def test_a_disabled_client_gets_no_new_key(ctx):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", [])
    assert api_keys.disable_client(session, client) is True
    assert api_keys.disable_client(session, client) is False
    with pytest.raises(ApiKeyError, match="disabled"):
        api_keys.create_key(session, client, encryption_key=enc)


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [
        ("", [], "invalid client name"),
        ("has space", [], "invalid client name"),
        ("x" * 101, [], "invalid client name"),
        ("hr", ["Upper"], "invalid scope"),
        ("hr", ["ok", "two words"], "invalid scope"),
    ],
)
def test_bad_names_and_scopes_are_refused(ctx, name, scopes, message):
    session, _ = ctx
    with pytest.raises(ApiKeyError, match=message):
        api_keys.create_client(session, name, scopes)


def test_duplicate_client_and_unknown_names_are_refused(ctx):
    session, _ = ctx
    api_keys.create_client(session, "hr", ["test", "test", "people.read"])
    assert session.scalar(sa.select(ApiClient.scopes)) == "people.read test"
    with pytest.raises(ApiKeyError, match="already exists"):
        api_keys.create_client(session, "hr", [])
    with pytest.raises(ApiKeyError, match="no API client"):
        api_keys.get_client(session, "nobody")
    with pytest.raises(ApiKeyError, match="no API key"):
        api_keys.revoke_key(session, "wpk_0000000000000000")


def test_authenticate_is_usable_without_flask_and_uses_the_given_clock(ctx):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", ["test"])
    key_id, secret = api_keys.create_key(session, client, encryption_key=enc)
    now = db_now(session)
    ts = str(int(now.timestamp()))
    body = b"payload"
    # Header names in any case (a plain dict, not werkzeug's Headers).
    headers = {
        "x-wecom-plugin-key": key_id,
        "X-WECOM-PLUGIN-TIMESTAMP": ts,
        "X-WeCom-Plugin-Signature": _sign(secret, ts, body),
    }
    caller = _auth(session, enc, headers, body, now=now)
    assert (caller.client_name, caller.key_id, caller.scheme, caller.scopes) == ("hr", key_id, "hmac", {"test"})
    # The signature covers method and path: it cannot be replayed against another endpoint.
    with pytest.raises(AuthenticationFailed, match="signature does not match"):
        api_keys.authenticate(
            session, method="POST", path="/api/v1/offboard", headers=headers, body=body, now=now,
            max_skew=300, encryption_key=enc,
        )  # fmt: skip
    with pytest.raises(AuthenticationFailed, match="signature does not match"):
        api_keys.authenticate(
            session, method="PUT", path="/api/v1/echo", headers=headers, body=body, now=now,
            max_skew=300, encryption_key=enc,
        )  # fmt: skip
    # The same signature, judged by a clock 10 minutes later, is stale.
    with pytest.raises(AuthenticationFailed, match="timestamp") as stale:
        _auth(session, enc, headers, body, now=now + timedelta(minutes=10))
    assert stale.value.client_name == "hr"
    with pytest.raises(AuthenticationFailed, match="non-numeric"):
        _auth(session, enc, {**headers, "X-WeCom-Plugin-Timestamp": "1e9"}, body, now=now)
    with pytest.raises(AuthenticationFailed, match="non-numeric"):
        _auth(session, enc, {**headers, "X-WeCom-Plugin-Timestamp": "١٢٣"}, body, now=now)  # Arabic-Indic digits


def test_non_ascii_credentials_are_a_clean_failure(ctx):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", [])
    key_id, secret = api_keys.create_key(session, client, encryption_key=enc)
    with pytest.raises(AuthenticationFailed, match="does not match") as bad_token:
        _auth(session, enc, {"Authorization": f"Bearer {key_id}.密钥{secret[2:]}"})
    assert bad_token.value.client_name is None
    ts = str(int(db_now(session).timestamp()))
    headers = {"X-WeCom-Plugin-Key": key_id, "X-WeCom-Plugin-Timestamp": ts, "X-WeCom-Plugin-Signature": "v1=签名"}
    with pytest.raises(AuthenticationFailed, match="signature does not match"):
        _auth(session, enc, headers)


def test_a_key_encrypted_under_another_encryption_key_fails_and_is_logged(ctx, caplog):
    session, enc = ctx
    client = api_keys.create_client(session, "hr", [])
    key_id, secret = api_keys.create_key(session, client, encryption_key=Fernet.generate_key())
    with pytest.raises(AuthenticationFailed, match="cannot be decrypted"):
        _auth(session, enc, {"Authorization": f"Bearer {key_id}.{secret}"})
    assert "WECOM_PLUGIN_ENCRYPTION_KEY" in caplog.text
    assert secret not in caplog.text


# --- CLI ----------------------------------------------------------------------------------------------
def _run(app, *args: str):
    return app.test_cli_runner().invoke(cli, list(args))


def _audit(app) -> list[tuple[str, str, str, str | None]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(AuditEvent.actor, AuditEvent.action, AuditEvent.outcome, AuditEvent.target).order_by(
                AuditEvent.id
            )
        ).all()
        return [tuple(r) for r in rows]


def test_cli_client_and_key_lifecycle_end_to_end(app, caplog):
    caplog.set_level(logging.DEBUG)
    result = _run(app, "api-clients", "create", "hr", "--scope", "test", "--scope", "people.read")
    assert result.exit_code == 0, result.output
    assert "created API client hr" in result.output

    result = _run(app, "keys", "create", "hr")
    assert result.exit_code == 0, result.output
    key_id = re.search(r"key id: (wpk_[0-9a-f]{16})", result.output).group(1)
    secret = re.search(r"secret:\s+(\S+)", result.output).group(1)
    assert "shown only this once" in result.output
    assert f"Bearer token:   {key_id}.{secret}" in result.output

    # The printed credentials work over HTTP.
    response = app.test_client().get("/api/v1/whoami", headers={"Authorization": f"Bearer {key_id}.{secret}"})
    assert response.status_code == 200
    assert response.get_json()["client"] == "hr"

    second = _run(app, "keys", "create", "hr")
    assert second.exit_code == 0
    third = _run(app, "keys", "create", "hr")
    assert third.exit_code == 1
    assert "already has 2 live keys" in third.output
    assert "Traceback" not in third.output

    listing = _run(app, "keys", "list", "hr")
    assert listing.exit_code == 0
    assert key_id in listing.output
    assert secret not in listing.output
    assert listing.output.count(" live") == 2

    clients = _run(app, "api-clients", "list")
    assert re.search(r"hr\s+active\s+live keys 2/2\s+scopes: people.read test", clients.output), clients.output

    assert _run(app, "keys", "revoke", key_id).exit_code == 0
    again = _run(app, "keys", "revoke", key_id)
    assert again.exit_code == 0
    assert "already revoked" in again.output
    assert (
        app.test_client().get("/api/v1/whoami", headers={"Authorization": f"Bearer {key_id}.{secret}"}).status_code
        == 401
    )

    assert _run(app, "api-clients", "disable", "hr").exit_code == 0
    assert "disabled" in _run(app, "api-clients", "list").output

    rows = [row for row in _audit(app) if row[0] == "cli"]
    assert [(actor, action, outcome) for actor, action, outcome, _ in rows] == [
        ("cli", "api.client.create", "success"),
        ("cli", "api.key.create", "success"),
        ("cli", "api.key.create", "success"),
        ("cli", "api.key.create", "denied"),
        ("cli", "api.key.revoke", "success"),
        ("cli", "api.key.revoke", "noop"),
        ("cli", "api.client.disable", "success"),
    ]
    assert [target for *_, target in rows] == [
        "api_client:hr",
        f"key:{key_id}",
        f"key:{re.search(r'key id: (wpk_[0-9a-f]{16})', second.output).group(1)}",
        "api_client:hr",
        f"key:{key_id}",
        f"key:{key_id}",
        "api_client:hr",
    ]
    assert secret not in caplog.text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("api-clients", "create", "bad name"), "invalid client name"),
        (("api-clients", "create", "hr2", "--scope", "BAD"), "invalid scope"),
        (("api-clients", "disable", "nobody"), "no API client named 'nobody'"),
        (("keys", "create", "nobody"), "no API client named 'nobody'"),
        (("keys", "list", "nobody"), "no API client named 'nobody'"),
        (("keys", "revoke", "wpk_0000000000000000"), "no API key"),
    ],
)
def test_cli_bad_input_is_one_clear_line(sqlite_app, args, message):
    result = _run(sqlite_app, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.startswith("Error: ")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_duplicate_client(sqlite_app):
    assert _run(sqlite_app, "api-clients", "create", "hr").exit_code == 0
    result = _run(sqlite_app, "api-clients", "create", "hr")
    assert result.exit_code == 1
    assert "already exists" in result.output


def test_every_command_has_help(sqlite_app):
    for group, commands in (
        ("api-clients", ("create", "list", "disable")),
        ("keys", ("create", "revoke", "list", "generate")),
    ):
        for command in commands:
            result = _run(sqlite_app, group, command, "--help")
            assert result.exit_code == 0
            # The docstring's first line is there (more than the bare usage line).
            assert len([line for line in result.output.splitlines() if line.strip()]) >= 3, (group, command)


def _check_generated(output: str) -> None:
    values = dict(line.split("=", 1) for line in output.strip().splitlines())
    assert set(values) == {"SECRET_KEY", "WECOM_PLUGIN_ENCRYPTION_KEY"}
    assert len(values["SECRET_KEY"]) >= 43
    Fernet(values["WECOM_PLUGIN_ENCRYPTION_KEY"].encode())  # a valid Fernet key, or this raises


def test_keys_generate_never_builds_the_app():
    def no_app():
        raise AssertionError("keys generate must not build the app")

    first = CliRunner().invoke(cli, ["keys", "generate"], obj=ScriptInfo(create_app=no_app))
    second = CliRunner().invoke(cli, ["keys", "generate"], obj=ScriptInfo(create_app=no_app))
    assert first.exit_code == 0, first.output
    _check_generated(first.output)
    assert first.output != second.output  # fresh random values each time


def test_keys_generate_works_with_no_configuration_at_all(tmp_path):
    script = Path(sys.executable).with_name("wecom-plugin")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "wecom_plugin"]
    result = subprocess.run(
        [*command, "keys", "generate"],
        env={"PATH": os.environ.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    _check_generated(result.stdout)
