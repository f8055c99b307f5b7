"""The callback receiver pipeline (contract §7.1–7.4, reliability §1.3 and §3.2).

:func:`open_callback` (encrypted POST) runs, in exactly this order:

1. cap the body at :data:`MAX_BODY_BYTES` (64 KiB);
2. refuse ``<!DOCTYPE`` / ``<!ENTITY``;
3. parse the envelope (:mod:`safexml`) and take ``Encrypt`` only (``ToUserName``/``AgentID`` are
   optional and ignored: the signature does not cover them, §7.5);
4. verify ``msg_signature`` in constant time against **every** configured key pair (rotation: up to
   two ``CallbackKey``s are tried, always all of them, so which one matched is not observable);
5. check the timestamp is within ``max_skew`` seconds of ``now`` (0 turns the check off);
6. decrypt with the matching pair (if both pairs share a token, each matching pair is tried);
7. check the receive id is the corp id;
8. parse the decrypted XML with the same safe parser, then type it (:mod:`events`).

:func:`verify_url` (the GET URL check, §7.1) runs 1, 4–7 on ``echostr`` and returns its plaintext,
which the caller sends back as the whole body within 1 s (no quotes, BOM or newline).

Every failure, whatever the cause or input, raises :class:`CallbackRejected` with one public message;
``reason`` (one of :data:`REASONS`) is for the security log only, so the answer is no oracle. Answer
it with one fixed 4xx. A misconfigured key pair is not the sender's fault: it raises
:class:`~wecom_plugin.errors.ConfigurationError` (settings validation makes it unreachable).

WeCom retries a callback it got no 200 for within 5 s, three more times (§7.4); dedupe by
:attr:`Callback.dedupe_key` before acting, and act later: answer 200 first.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from wecom_plugin.errors import PermanentError
from wecom_plugin.settings import CallbackKey
from wecom_plugin.wecom import safexml
from wecom_plugin.wecom.crypto import CallbackCrypto, CallbackCryptoError
from wecom_plugin.wecom.events import Event, parse_event

MAX_BODY_BYTES = safexml.MAX_BYTES  # 64 KiB; Flask's MAX_CONTENT_LENGTH should say the same
MAX_PARAM_CHARS = 4096  # msg_signature, timestamp, nonce, echostr: WeCom's are < 200 characters
PUBLIC_MESSAGE = "invalid callback"
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

#: Every value ``CallbackRejected.reason`` takes.
REASONS = frozenset(
    {
        "no_keys",
        "body_too_large",
        "missing_param",
        "bad_param",
        "dtd_or_entity",
        "envelope_xml",
        "no_encrypt",
        "signature",
        "timestamp",
        "decrypt",
        "receive_id",
        "inner_xml",
    }
)


class CallbackRejected(PermanentError):
    """A callback failed a check. ``str()`` is :data:`PUBLIC_MESSAGE` for every cause; ``reason`` says which."""

    public_message = PUBLIC_MESSAGE

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(PUBLIC_MESSAGE)
        self.reason = reason
        self.detail = detail  # e.g. which XML check failed; logs only


@dataclass(frozen=True)
class Callback:
    """One authentic, fresh, decrypted callback.

    Attributes:
        event: the typed event (:class:`~wecom_plugin.wecom.events.UnknownEvent` for unknown kinds).
        raw: the decrypted plaintext bytes, exactly as WeCom sent them.
        fields: the plaintext parsed by :func:`safexml.parse`.
        dedupe_key: ``"msgid:<MsgId>"`` for messages (WeCom's own id, §7.4); otherwise
            ``"sha256:<hex of raw>"``. change_contact and most events carry no id, and WeCom's advice
            (FromUserName + CreateTime) collides when several changes share a second; a retry re-sends
            the same plaintext under fresh encryption, so the plaintext hash names the delivery, and two
            distinct changes differ in some field.
        key_index: which configured key pair verified it (0 = first); >0 means the old pair is still in use.
        timestamp: the signed ``timestamp`` query parameter.
    """

    event: Event
    raw: bytes
    fields: Mapping[str, Any] = field(hash=False)
    dedupe_key: str
    key_index: int
    timestamp: int


def _param(query: Mapping[str, str], name: str) -> str:
    try:
        value = query.get(name)
    except (TypeError, AttributeError):
        raise CallbackRejected("missing_param", name) from None
    if value is None or value == "":
        raise CallbackRejected("missing_param", name)
    if not isinstance(value, str) or len(value) > MAX_PARAM_CHARS:
        raise CallbackRejected("bad_param", name)
    return value


def _now_seconds(now: float | datetime) -> float:
    return now.timestamp() if isinstance(now, datetime) else float(now)


def _authenticate(
    query: Mapping[str, str],
    encrypted: str,
    keys: Sequence[CallbackKey],
    corp_id: str,
    now: float | datetime,
    max_skew: int,
) -> tuple[bytes, int, int]:
    """Steps 4–7: signature (all pairs), freshness, decrypt, receive id → (plaintext, key index, timestamp)."""
    cryptos = [CallbackCrypto(key.token, key.aes_key, corp_id) for key in keys]
    if not cryptos:
        raise CallbackRejected("no_keys")
    signature, timestamp, nonce = (_param(query, name) for name in ("msg_signature", "timestamp", "nonce"))
    # 4: every pair is checked, with no early exit, so timing does not tell which one matched.
    matches = [crypto.verify_signature(signature, timestamp, nonce, encrypted) for crypto in cryptos]
    if not any(matches):
        raise CallbackRejected("signature")
    # 5
    if not _TIMESTAMP.fullmatch(timestamp):
        raise CallbackRejected("bad_param", "timestamp")
    sent_at = int(timestamp)
    skew = _now_seconds(now) - sent_at
    if max_skew > 0 and abs(skew) > max_skew:
        raise CallbackRejected("timestamp", f"skew {skew:+.0f}s")
    # 6 and 7, with each pair whose signature matched (pairs may share a token during rotation).
    failure = CallbackRejected("decrypt")
    for index, crypto in enumerate(cryptos):
        if not matches[index]:
            continue
        try:
            msg, receive_id = crypto.unpack(encrypted)
        except CallbackCryptoError as exc:
            failure = CallbackRejected("decrypt", exc.reason)
            continue
        if crypto.is_receive_id(receive_id):
            return msg, index, sent_at
        failure = CallbackRejected("receive_id", f"{len(receive_id)} bytes")
    raise failure


def verify_url(
    query: Mapping[str, str],
    keys: Sequence[CallbackKey],
    corp_id: str,
    now: float | datetime,
    max_skew: int,
) -> bytes:
    """The GET URL check (§7.1): verify ``echostr`` and return its plaintext, byte for byte.

    ``query`` holds the URL-decoded parameters ``msg_signature``, ``timestamp``, ``nonce``, ``echostr``.
    ``now`` is unix seconds or an aware datetime; ``max_skew`` is in seconds, 0 = no freshness check.

    Raises:
        CallbackRejected: for every failure.
    """
    echostr = _param(query, "echostr")  # 1: bounded by MAX_PARAM_CHARS
    plaintext, _, _ = _authenticate(query, echostr, keys, corp_id, now, max_skew)
    return plaintext


def open_callback(
    query: Mapping[str, str],
    body: bytes,
    keys: Sequence[CallbackKey],
    corp_id: str,
    now: float | datetime,
    max_skew: int,
) -> Callback:
    """Authenticate, decrypt and parse one encrypted callback POST (steps 1–8 of the module docstring).

    Raises:
        CallbackRejected: for every failure, whatever the input.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise CallbackRejected("bad_param", "body")
    body = bytes(body)
    if len(body) > MAX_BODY_BYTES:  # 1
        raise CallbackRejected("body_too_large")
    try:
        safexml.refuse_declarations(body)  # 2
    except safexml.XmlRejected as exc:
        raise CallbackRejected("dtd_or_entity", exc.reason) from None
    try:
        envelope = safexml.parse(body)  # 3
    except safexml.XmlRejected as exc:
        raise CallbackRejected("envelope_xml", exc.reason) from None
    encrypted = envelope.get("Encrypt")
    if not isinstance(encrypted, str) or not encrypted:
        raise CallbackRejected("no_encrypt")
    plaintext, key_index, sent_at = _authenticate(query, encrypted, keys, corp_id, now, max_skew)  # 4-7
    try:
        fields = safexml.parse(plaintext)  # 8
    except safexml.XmlRejected as exc:
        raise CallbackRejected("inner_xml", exc.reason) from None
    msg_id = fields.get("MsgId")
    if isinstance(msg_id, str) and msg_id.strip():
        dedupe_key = f"msgid:{msg_id.strip()}"
    else:
        dedupe_key = "sha256:" + hashlib.sha256(plaintext).hexdigest()
    return Callback(
        event=parse_event(fields),
        raw=plaintext,
        fields=fields,
        dedupe_key=dedupe_key,
        key_index=key_index,
        timestamp=sent_at,
    )
