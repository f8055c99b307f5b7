"""CallbackCrypto: WeCom's Vector A both ways (W1), strict decrypt checks, a wechatpy cross-check, and W10."""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wecom import (
    AES_KEY,
    CORP_ID,
    POST_ENCRYPT,
    POST_NONCE,
    POST_PLAINTEXT,
    POST_RANDOM,
    POST_SIGNATURE,
    POST_TIMESTAMP,
    TOKEN,
    URL_ECHOSTR,
    URL_NONCE,
    URL_PLAINTEXT,
    URL_RANDOM,
    URL_SIGNATURE,
    URL_TIMESTAMP,
    fixture,
    raw_aes,
    raw_aes_decrypt,
)
from wecom_plugin.errors import ConfigurationError
from wecom_plugin.wecom import safexml
from wecom_plugin.wecom.crypto import CallbackCrypto, CallbackCryptoError, aes_key_bytes, compute_signature

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def crypto() -> CallbackCrypto:
    return CallbackCrypto(TOKEN, AES_KEY, CORP_ID)


# --- W1: the official vector, byte for byte, both directions -------------------------------------
def test_vector_a_url_check_decrypts_to_the_published_plaintext(crypto):
    assert crypto.signature(URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR) == URL_SIGNATURE
    assert crypto.verify_signature(URL_SIGNATURE, URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR)
    assert crypto.decrypt(URL_ECHOSTR) == URL_PLAINTEXT


def test_vector_a_url_check_encrypts_to_the_published_echostr(crypto):
    assert crypto.encrypt_payload(URL_PLAINTEXT, random16=URL_RANDOM) == URL_ECHOSTR
    plain = raw_aes_decrypt(URL_ECHOSTR)
    assert plain[:16] == URL_RANDOM and plain[-1] == 7  # "random=c41b64491c2468d0, pad=7"


def test_vector_a_post_decrypts_to_the_published_plaintext(crypto):
    assert crypto.verify_signature(POST_SIGNATURE, POST_TIMESTAMP, POST_NONCE, POST_ENCRYPT)
    assert crypto.decrypt(POST_ENCRYPT) == POST_PLAINTEXT
    assert POST_PLAINTEXT == fixture("text.xml")


def test_vector_a_post_encrypts_to_the_published_ciphertext_and_signature(crypto):
    plain = raw_aes_decrypt(POST_ENCRYPT)
    assert plain[:16] == POST_RANDOM and plain[-1] == 30  # "(pad=30)"
    encrypted = crypto.encrypt_payload(POST_PLAINTEXT, random16=POST_RANDOM)
    assert encrypted == POST_ENCRYPT
    assert crypto.signature(POST_TIMESTAMP, POST_NONCE, encrypted) == POST_SIGNATURE


def test_signature_is_sha1_of_the_sorted_concatenation():
    parts = [TOKEN, POST_TIMESTAMP, POST_NONCE, POST_ENCRYPT]
    expected = hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()
    assert compute_signature(*parts) == expected == POST_SIGNATURE


def test_encrypt_builds_a_reply_envelope_that_verifies(crypto):
    xml = crypto.encrypt("<xml><Content><![CDATA[你好]]></Content></xml>", nonce="1372623149", timestamp=1409659813)
    fields = safexml.parse(xml.encode())
    assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert fields["TimeStamp"] == "1409659813" and fields["Nonce"] == "1372623149"
    assert crypto.verify_signature(fields["MsgSignature"], "1409659813", "1372623149", fields["Encrypt"])
    assert crypto.decrypt(fields["Encrypt"]).decode() == "<xml><Content><![CDATA[你好]]></Content></xml>"


@pytest.mark.parametrize("nonce, timestamp", [("a]]>b", "1"), ("<x>", "1"), ("n", "12a"), ("n", "")])
def test_encrypt_refuses_values_that_would_break_the_envelope(crypto, nonce, timestamp):
    with pytest.raises(ValueError):
        crypto.encrypt("x", nonce=nonce, timestamp=timestamp)


def test_random_prefix_is_fresh_each_time(crypto):
    assert crypto.encrypt_payload(b"same") != crypto.encrypt_payload(b"same")
    with pytest.raises(ValueError):
        crypto.encrypt_payload(b"x", random16=b"short")


def test_aligned_plaintext_gets_a_whole_block_of_padding(crypto):
    # 16 random + 4 length + 26 msg + 18 receive id = 64 bytes, already aligned: 32 bytes of 0x20 follow.
    msg = b"x" * (64 - 16 - 4 - len(CORP_ID))
    plain = raw_aes_decrypt(crypto.encrypt_payload(msg))
    assert len(plain) == 96 and plain[-32:] == bytes([32]) * 32
    assert crypto.decrypt(crypto.encrypt_payload(msg)) == msg


# --- strict decryption: every failure is the same exception ------------------------------------
def _body(msg: bytes, receive_id: bytes = CORP_ID.encode(), length: int | None = None) -> bytes:
    n = len(msg) if length is None else length
    return b"R" * 16 + n.to_bytes(4, "big") + msg + receive_id


def _pad(data: bytes) -> bytes:
    pad = 32 - len(data) % 32
    return data + bytes([pad]) * pad


BAD_CIPHERTEXTS = {
    "not base64": ("!!!!" * 8, "base64"),
    "base64 with whitespace": (POST_ENCRYPT[:40] + "\n" + POST_ENCRYPT[40:], "base64"),
    "non-ascii": ("é" * 44, "base64"),
    "bad base64 padding": (POST_ENCRYPT[:-2], "base64"),
    "empty": ("", "ciphertext_length"),
    "16 bytes only": (base64.b64encode(b"x" * 16).decode(), "ciphertext_length"),
    "pad byte 0": (raw_aes(_pad(_body(b"hello"))[:-1] + b"\x00"), "padding"),
    "pad byte 33": (raw_aes(_body(b"h" * 5)[:63].ljust(63, b"h") + b"\x21"), "padding"),
    "pad bytes differ": (raw_aes(_pad(_body(b"hello"))[:-2] + bytes([9, 7])[-2:]), "padding"),
    "length field past the end": (raw_aes(_pad(_body(b"hello", length=10_000))), "length_field"),
    "no room for a length field": (raw_aes(b"R" * 16 + bytes([16]) * 16), "length_field"),
}


@pytest.mark.parametrize("case", sorted(BAD_CIPHERTEXTS))
def test_malformed_ciphertexts_raise_one_exception_type(crypto, case):
    encrypted, reason = BAD_CIPHERTEXTS[case]
    with pytest.raises(CallbackCryptoError) as info:
        crypto.decrypt(encrypted)
    assert info.value.reason == reason
    assert str(info.value) == "callback crypto check failed"  # the same text whatever failed


def test_wrong_receive_id_is_refused(crypto):
    other = CallbackCrypto(TOKEN, AES_KEY, "wwOtherCorp")
    encrypted = other.encrypt_payload(b"<xml/>")
    assert crypto.unpack(encrypted) == (b"<xml/>", b"wwOtherCorp")
    with pytest.raises(CallbackCryptoError) as info:
        crypto.decrypt(encrypted)
    assert info.value.reason == "receive_id"
    assert str(info.value) == "callback crypto check failed"


def test_wrong_key_fails_closed(crypto):
    other = CallbackCrypto(TOKEN, base64.b64encode(os.urandom(32)).decode()[:-1], CORP_ID)
    failures = 0
    for _ in range(50):
        try:
            other.decrypt(crypto.encrypt_payload(b"<xml><a>1</a></xml>"))
        except CallbackCryptoError:
            failures += 1
    assert failures == 50


@pytest.mark.parametrize("bad", ["", "x" * 42, "x" * 44, "!" * 43, base64.b64encode(b"k" * 31).decode()[:43]])
def test_bad_encoding_aes_key_is_a_configuration_error(bad):
    with pytest.raises(ConfigurationError):
        aes_key_bytes(bad)


@pytest.mark.parametrize("signature", [POST_SIGNATURE.upper(), POST_SIGNATURE[:-1], POST_SIGNATURE + "0", "", "é"])
def test_verify_signature_is_exact(crypto, signature):
    assert not crypto.verify_signature(signature, POST_TIMESTAMP, POST_NONCE, POST_ENCRYPT)


def test_verify_signature_refuses_non_strings(crypto):
    assert not crypto.verify_signature(None, POST_TIMESTAMP, POST_NONCE, POST_ENCRYPT)  # type: ignore[arg-type]


# --- cross-check against wechatpy 1.8.18 on random messages ----------------------------------------
def _wechatpy(token: str, aes_key: str, corp_id: str):
    from wechatpy.enterprise.crypto import WeChatCrypto

    return WeChatCrypto(token, aes_key, corp_id)


def test_wechatpy_agrees_on_vector_a():
    theirs = _wechatpy(TOKEN, AES_KEY, CORP_ID)
    assert theirs.check_signature(URL_SIGNATURE, URL_TIMESTAMP, URL_NONCE, URL_ECHOSTR) == URL_PLAINTEXT.decode()


tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=32)
aes_keys = st.binary(min_size=32, max_size=32).map(lambda k: base64.b64encode(k).decode()[:-1])
corp_ids = st.from_regex(r"w[wx][0-9a-f]{16}", fullmatch=True)
messages = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
nonces = st.from_regex(r"[0-9]{1,10}", fullmatch=True)


@settings(max_examples=150, deadline=None, database=None)
@given(token=tokens, aes_key=aes_keys, corp_id=corp_ids, message=messages, nonce=nonces)
def test_wechatpy_decrypts_what_we_encrypt(token, aes_key, corp_id, message, nonce):
    ours = CallbackCrypto(token, aes_key, corp_id)
    xml = ours.encrypt(message.encode(), nonce=nonce, timestamp="1409659813")
    fields = safexml.parse(xml.encode())
    theirs = _wechatpy(token, aes_key, corp_id)
    assert theirs.decrypt_message(xml, fields["MsgSignature"], "1409659813", nonce) == message


@settings(max_examples=150, deadline=None, database=None)
@given(token=tokens, aes_key=aes_keys, corp_id=corp_ids, message=messages, nonce=nonces)
def test_we_decrypt_what_wechatpy_encrypts(token, aes_key, corp_id, message, nonce):
    theirs = _wechatpy(token, aes_key, corp_id)
    xml = theirs.encrypt_message(message, nonce, "1409659813")
    fields = safexml.parse(xml.encode())
    ours = CallbackCrypto(token, aes_key, corp_id)
    assert ours.signature("1409659813", nonce, fields["Encrypt"]) == fields["MsgSignature"]
    assert ours.verify_signature(fields["MsgSignature"], "1409659813", nonce, fields["Encrypt"])
    assert ours.decrypt(fields["Encrypt"]) == message.encode()


# --- W10: no ==/!= on secrets anywhere in the package ---------------------------------------------
# An operand is sensitive when one of its identifier words contains signature/token/secret/digest
# (msg_signature, access_token, app_secret, hexdigest, gettoken...), unless the next word says the
# name is metadata about the secret rather than the secret (gettoken_expires_in, token_type, SIGNATURE_HEADER).
SENSITIVE = ("signature", "token", "secret", "digest")
METADATA = frozenset({"expires", "expiry", "ttl", "type", "len", "length", "count", "kind", "mode", "url", "header"})
ALLOWED: set[tuple[str, int]] = set()  # allow-list: none


def _words(identifier: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", identifier)
    return [w for w in spaced.lower().split("_") if w]


def _is_sensitive(identifier: str) -> bool:
    words = _words(identifier)
    for i, word in enumerate(words):
        if any(stem in word for stem in SENSITIVE) and not (i + 1 < len(words) and words[i + 1] in METADATA):
            return True
    return False


def _names(node: ast.AST) -> set[str]:
    """Identifiers an operand *is* (a name, attribute, subscript or call of one), not ones it merely uses."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr} | _names(node.value)
    if isinstance(node, ast.Subscript):
        names = _names(node.value)
        if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            names.add(node.slice.value)
        return names
    if isinstance(node, ast.Call):
        return _names(node.func)
    if isinstance(node, ast.Await):
        return _names(node.value)
    return set()


def sensitive_comparisons(source: str, filename: str = "<src>") -> list[tuple[str, int, str]]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        for operand in [node.left, *node.comparators]:
            hits = sorted(n for n in _names(operand) if _is_sensitive(n))
            if hits:
                found.append((filename, node.lineno, hits[0]))
                break
    return found


@pytest.mark.parametrize(
    "snippet",
    [
        "ok = signature == expected",
        "if self.token != given: pass",
        "if expected_digest == hmac_digest(x): pass",
        "if request.args['msg_signature'] == sig: pass",
        "if compute_signature(a, b) != sig: pass",
        "if app_secret == other: pass",
        "if hashlib.sha1(data).hexdigest() != given: pass",
        "if accessToken == cached: pass",
        "if app.secret == secret: pass",
    ],
)
def test_the_secret_comparison_check_catches_offenders(snippet):
    assert sensitive_comparisons(snippet)


def test_the_secret_comparison_check_allows_lengths_none_checks_and_metadata():
    assert not sensitive_comparisons("ok = len(token) == 32 and token is not None and hmac.compare_digest(a, b)")
    assert not sensitive_comparisons("if f.gettoken_expires_in == 'full' or token_type != 'Bearer': pass")


def test_no_equality_comparison_on_signatures_tokens_secrets_or_digests():
    offenders = []
    for path in sorted((REPO / "wecom_plugin").rglob("*.py")):
        rel = str(path.relative_to(REPO))
        offenders += [
            hit for hit in sensitive_comparisons(path.read_text(encoding="utf-8"), rel) if hit[:2] not in ALLOWED
        ]
    assert not offenders, f"use hmac.compare_digest, not ==/!=: {offenders}"
