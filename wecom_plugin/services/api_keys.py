"""Machine API clients, their keys, and request authentication (no Flask here).

A client (the HR system, a script) has a name, space-separated scopes and at most TWO live keys:
rotation is "create the second key, switch the caller over, revoke the first". A key is a public
id ``wpk_`` + 16 hex characters and a secret of 32 random bytes (url-safe base64, 256 bits). The
secret is stored Fernet-encrypted with ``WECOM_PLUGIN_ENCRYPTION_KEY`` (HMAC verification needs
the secret itself) and is shown to the operator once, at creation.

A request authenticates in one of two ways; every comparison is constant-time
(:func:`hmac.compare_digest`):

* Bearer token::

      Authorization: Bearer <key_id>.<secret>

* HMAC signature (Stripe-style; the body is never sent with the secret)::

      X-WeCom-Plugin-Key: <key_id>
      X-WeCom-Plugin-Timestamp: <unix seconds, digits only>
      X-WeCom-Plugin-Signature: v1=<hex HMAC-SHA256(secret, b"<timestamp>.<METHOD>.<path>." + raw body)>

  The timestamp must be within ``API_HMAC_MAX_SKEW`` seconds (either side) of the DATABASE clock,
  so web hosts with skewed clocks agree. The signature header may carry several ``v1=`` values
  separated by spaces or commas; one match is enough. The signed string is the timestamp header
  exactly as sent, the upper-case HTTP method, the request path (no query string), each followed
  by a dot, then the body bytes exactly as sent (empty for a GET). Signing method and path means a
  captured request cannot be replayed against another endpoint within the time window.

A request that sends both schemes is refused. :func:`authenticate` returns an
:class:`Authenticated` or raises :class:`AuthenticationFailed` whose ``reason`` is for the audit
log only: callers answer every failure with the same response.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session

from wecom_plugin.models.api_clients import ApiClient, ApiKey
from wecom_plugin.models.dbtime import db_now

log = logging.getLogger("wecom_plugin.api_keys")

MAX_LIVE_KEYS = 2
KEY_ID_PREFIX = "wpk_"
KEY_ID_RE = re.compile(r"^wpk_[0-9a-f]{16}$")
CLIENT_NAME_RE = re.compile(r"^[\w.-]{1,100}$")
SCOPE_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,49}$")
TIMESTAMP_RE = re.compile(r"^[0-9]{1,15}$")
# last_used_at is informational: written at most once per this interval per key.
LAST_USED_RESOLUTION = timedelta(seconds=60)

KEY_HEADER = "X-WeCom-Plugin-Key"
TIMESTAMP_HEADER = "X-WeCom-Plugin-Timestamp"
SIGNATURE_HEADER = "X-WeCom-Plugin-Signature"
_MAX_SIGNATURES = 5
_MAX_SECRET_CHARS = 200


class ApiKeyError(ValueError):
    """An operator's request cannot be done; ``str()`` is a bilingual sentence saying why."""


class AuthenticationFailed(Exception):
    """A request did not authenticate.

    ``reason`` names the check that failed (audit log only, never the response). ``client_name``
    is set only when the caller proved possession of the key's secret (a stale timestamp, a
    revoked key, a disabled client); otherwise the attempt is not attributed to any client.
    """

    def __init__(self, reason: str, *, key_id: str | None = None, client_name: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id
        self.client_name = client_name


@dataclass(frozen=True)
class Authenticated:
    """The caller, once its key has verified."""

    client_id: int
    client_name: str
    scopes: frozenset[str]
    key_id: str
    scheme: str  # "bearer" | "hmac"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


# --- management ----------------------------------------------------------------------------------
def create_client(session: Session, name: str, scopes: list[str] | tuple[str, ...]) -> ApiClient:
    """Add a client (not committed). Raises :class:`ApiKeyError` for a bad or taken name or scope."""
    if not CLIENT_NAME_RE.match(name):
        raise ApiKeyError(
            f"客户端名称无效: {name!r}(1-100 个字母、数字、_ . -) / "
            f"invalid client name {name!r}: use 1-100 letters, digits, _ . -"
        )
    clean = normalize_scopes(scopes)
    if session.scalar(sa.select(ApiClient.id).where(ApiClient.name == name)) is not None:
        raise ApiKeyError(f"客户端 {name} 已存在 / client {name!r} already exists")
    client = ApiClient(name=name, scopes=" ".join(clean))
    session.add(client)
    session.flush()
    return client


def normalize_scopes(scopes: list[str] | tuple[str, ...]) -> list[str]:
    """Validated, de-duplicated, sorted scopes. Raises :class:`ApiKeyError` for a malformed one."""
    clean = sorted({s.strip() for s in scopes if s.strip()})
    for scope in clean:
        if not SCOPE_RE.match(scope):
            raise ApiKeyError(
                f"权限范围无效: {scope!r}(小写字母开头,可含 a-z 0-9 _ . : -) / "
                f"invalid scope {scope!r}: lowercase letter first, then a-z 0-9 _ . : -"
            )
    return clean


def get_client(session: Session, name: str) -> ApiClient:
    """The client called ``name``; raises :class:`ApiKeyError` when there is none."""
    client = session.scalar(sa.select(ApiClient).where(ApiClient.name == name))
    if client is None:
        raise ApiKeyError(f"没有名为 {name} 的客户端 / no API client named {name!r}")
    return client


def list_clients(session: Session) -> list[tuple[ApiClient, int]]:
    """Every client with its number of live keys, by name."""
    live = (
        sa.select(ApiKey.client_id, sa.func.count().label("live"))
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.client_id)
        .subquery()
    )
    rows = session.execute(
        sa.select(ApiClient, sa.func.coalesce(live.c.live, 0))
        .outerjoin(live, live.c.client_id == ApiClient.id)
        .order_by(ApiClient.name)
    ).all()
    return [(client, int(count)) for client, count in rows]


def list_keys(session: Session, client: ApiClient) -> list[ApiKey]:
    """The client's keys, live and revoked, oldest first."""
    return list(session.scalars(sa.select(ApiKey).where(ApiKey.client_id == client.id).order_by(ApiKey.id)))


def disable_client(session: Session, client: ApiClient) -> bool:
    """Disable the client (its keys stop working at once). False if it was already disabled."""
    if client.disabled_at is not None:
        return False
    client.disabled_at = db_now(session)
    session.flush()
    return True


def create_key(session: Session, client: ApiClient, *, encryption_key: bytes) -> tuple[str, str]:
    """Add a key to ``client`` (not committed); returns ``(key_id, plaintext secret)``.

    The plaintext exists only in the return value: show it once and drop it. Raises
    :class:`ApiKeyError` if the client is disabled or already has :data:`MAX_LIVE_KEYS` live keys.
    The client's row is locked first (PostgreSQL; SQLite transactions are serialized anyway), so
    two concurrent calls cannot both create a third key.
    """
    locked = session.scalar(sa.select(ApiClient).where(ApiClient.id == client.id).with_for_update())
    if locked is None:
        raise ApiKeyError(f"没有名为 {client.name} 的客户端 / no API client named {client.name!r}")
    if locked.disabled_at is not None:
        raise ApiKeyError(f"客户端 {client.name} 已停用 / client {client.name!r} is disabled")
    live = session.scalar(sa.select(sa.func.count()).where(ApiKey.client_id == client.id, ApiKey.revoked_at.is_(None)))
    if live >= MAX_LIVE_KEYS:
        raise ApiKeyError(
            f"客户端 {client.name} 已有 {MAX_LIVE_KEYS} 个有效密钥,请先吊销一个"
            f"(wecom-plugin keys revoke KEY_ID)/ client {client.name!r} already has {MAX_LIVE_KEYS} live keys; "
            "revoke one first (wecom-plugin keys revoke KEY_ID): that is how keys are rotated"
        )
    key_id = KEY_ID_PREFIX + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    session.add(
        ApiKey(client_id=client.id, key_id=key_id, secret_encrypted=_fernet(encryption_key).encrypt(secret.encode()))
    )
    session.flush()
    return key_id, secret


def get_key(session: Session, key_id: str) -> ApiKey:
    """The key with this public id; raises :class:`ApiKeyError` when there is none."""
    key = session.scalar(sa.select(ApiKey).where(ApiKey.key_id == key_id))
    if key is None:
        raise ApiKeyError(f"没有密钥 {key_id} / no API key {key_id!r}")
    return key


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key (it stops working at once). False if it was already revoked.

    Raises :class:`ApiKeyError` for an unknown key id.
    """
    key = get_key(session, key_id)
    if key.revoked_at is not None:
        return False
    key.revoked_at = db_now(session)
    session.flush()
    return True


# --- authentication ------------------------------------------------------------------------------
def authenticate(
    session: Session,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    max_skew: int,
    encryption_key: bytes,
) -> Authenticated:
    """Verify a request's credentials (see the module docstring for both schemes).

    ``now`` is the database clock (:func:`wecom_plugin.models.dbtime.db_now`); ``method`` and
    ``path`` are part of the HMAC signature. On success the key's ``last_used_at`` is
    updated (at most once a minute) in the caller's transaction. Raises
    :class:`AuthenticationFailed` for every kind of failure.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    authorization = lowered.get("authorization", "").strip()
    key_header = lowered.get(KEY_HEADER.lower(), "").strip()
    if authorization and key_header:
        raise AuthenticationFailed("both a bearer token and an HMAC signature were sent")
    if authorization:
        scheme = "bearer"
        key_id, presented = _parse_bearer(authorization)
        row = _load_key(session, key_id)
        secret = _stored_secret(row, key_id, encryption_key)
        if not hmac.compare_digest(secret, presented):
            raise AuthenticationFailed("bearer token does not match the key's secret", key_id=key_id)
    elif key_header:
        scheme = "hmac"
        key_id = key_header
        if not KEY_ID_RE.match(key_id):
            raise AuthenticationFailed("malformed key id in X-WeCom-Plugin-Key")
        timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "").strip()
        if not TIMESTAMP_RE.match(timestamp):
            raise AuthenticationFailed("missing or non-numeric X-WeCom-Plugin-Timestamp", key_id=key_id)
        candidates = _parse_signatures(lowered.get(SIGNATURE_HEADER.lower(), ""), key_id)
        row = _load_key(session, key_id)
        secret = _stored_secret(row, key_id, encryption_key)
        expected = hmac.new(secret, signing_string(timestamp, method, path, body), hashlib.sha256).hexdigest().encode()
        # Compare against every candidate (no early exit), so timing says nothing about which matched.
        matched = False
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise AuthenticationFailed("HMAC signature does not match the key's secret and body", key_id=key_id)
        skew = now.timestamp() - int(timestamp)
        if abs(skew) > max_skew:
            raise AuthenticationFailed(
                f"timestamp {skew:+.0f}s from the database clock (allowed ±{max_skew}s)",
                key_id=key_id,
                client_name=row[1].name if row is not None else None,
            )
    else:
        raise AuthenticationFailed("no credentials (no Authorization or X-WeCom-Plugin-Key header)")

    assert row is not None  # an unknown key id has failed the secret check above
    key, client = row
    if key.revoked_at is not None:
        raise AuthenticationFailed("key is revoked", key_id=key_id, client_name=client.name)
    if client.disabled_at is not None:
        raise AuthenticationFailed("client is disabled", key_id=key_id, client_name=client.name)
    session.execute(
        sa.update(ApiKey)
        .where(
            ApiKey.id == key.id,
            sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return Authenticated(
        client_id=client.id,
        client_name=client.name,
        scopes=frozenset(client.scopes.split()),
        key_id=key.key_id,
        scheme=scheme,
    )


def signing_string(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """What an HMAC signature covers: ``<timestamp>.<METHOD>.<path>.<body>``."""
    return f"{timestamp}.{method.upper()}.{path}.".encode() + body


def _parse_bearer(authorization: str) -> tuple[str, bytes]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("Authorization header is not a bearer token")
    key_id, dot, secret = token.strip().partition(".")
    if not dot or not KEY_ID_RE.match(key_id):
        raise AuthenticationFailed("malformed bearer token (expected <key_id>.<secret>)")
    if not secret or len(secret) > _MAX_SECRET_CHARS:
        raise AuthenticationFailed("malformed bearer token (secret missing or too long)", key_id=key_id)
    return key_id, _to_bytes(secret)


def _parse_signatures(header: str, key_id: str) -> list[bytes]:
    candidates = [
        _to_bytes(part.strip()[3:].lower())
        for part in header.replace(",", " ").split()
        if part.strip().lower().startswith("v1=")
    ]
    if not candidates:
        raise AuthenticationFailed("missing X-WeCom-Plugin-Signature (expected v1=<hex>)", key_id=key_id)
    if len(candidates) > _MAX_SIGNATURES:
        raise AuthenticationFailed("too many signatures in X-WeCom-Plugin-Signature", key_id=key_id)
    return candidates


def _load_key(session: Session, key_id: str) -> tuple[ApiKey, ApiClient] | None:
    row = session.execute(
        sa.select(ApiKey, ApiClient).join(ApiClient, ApiClient.id == ApiKey.client_id).where(ApiKey.key_id == key_id)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


# Compared against when the key id is unknown, so an unknown id costs about what a wrong secret
# does. Random per process and never stored or shown, so nobody can present it.
_DUMMY_SECRET = secrets.token_urlsafe(32).encode()


def _stored_secret(row: tuple[ApiKey, ApiClient] | None, key_id: str, encryption_key: bytes) -> bytes:
    """The key's plaintext secret, or a random one that can never match when the key is unknown."""
    if row is None:
        return _DUMMY_SECRET
    try:
        return _fernet(encryption_key).decrypt(row[0].secret_encrypted)
    except InvalidToken:
        # An operator problem, not a caller's: say so loudly (the caller only ever sees a 401).
        log.error(
            "stored secret of API key %s cannot be decrypted: WECOM_PLUGIN_ENCRYPTION_KEY is not the key "
            "it was created with (every process must share one key)",
            key_id,
        )
        raise AuthenticationFailed(
            "stored secret cannot be decrypted (was WECOM_PLUGIN_ENCRYPTION_KEY changed?)", key_id=key_id
        ) from None


def _to_bytes(value: str) -> bytes:
    # compare_digest refuses non-ASCII str; header text is compared as bytes instead.
    return value.encode("utf-8", "replace")


@lru_cache(maxsize=4)
def _fernet(encryption_key: bytes) -> Fernet:
    return Fernet(encryption_key)
