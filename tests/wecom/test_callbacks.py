"""The receiver pipeline: known answers (W1), tamper matrix (W2), freshness (W3), rotation (W8), order, fuzz."""

from __future__ import annotations

import base64
import hashlib
import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.wecom import (
    AES_KEY,
    CORP_ID,
    KEY,
    POST_BODY,
    POST_PLAINTEXT,
    POST_QUERY,
    POST_TIMESTAMP,
    TOKEN,
    URL_PLAINTEXT,
    URL_QUERY,
    URL_TIMESTAMP,
    envelope,
    fixture,
    raw_aes,
    sign_raw,
    signed,
)
from wecom_plugin.settings import CallbackKey
from wecom_plugin.wecom import callbacks
from wecom_plugin.wecom.callbacks import (
    MAX_BODY_BYTES,
    PUBLIC_MESSAGE,
    REASONS,
    Callback,
    CallbackRejected,
    open_callback,
    verify_url,
)
from wecom_plugin.wecom.crypto import CallbackCrypto
from wecom_plugin.wecom.events import TextMessage, UserDeleted

NOW = int(POST_TIMESTAMP)
SKEW = 300
OTHER_KEY = CallbackKey("otherToken42", base64.b64encode(b"o" * 32).decode()[:-1])


def accept(query, body, keys=(KEY,), now=NOW, max_skew=SKEW) -> Callback:
    return open_callback(query, body, keys, CORP_ID, now, max_skew)


def reject(query, body, keys=(KEY,), now=NOW, max_skew=SKEW) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as info:
        open_callback(query, body, keys, CORP_ID, now, max_skew)
    assert info.value.reason in REASONS
    assert str(info.value) == PUBLIC_MESSAGE and info.value.args == (PUBLIC_MESSAGE,)
    return info.value


# --- W1 ------------------------------------------------------------------------------------------
def test_vector_a_post_opens_to_the_published_message():
    callback = accept(POST_QUERY, POST_BODY)
    assert callback.raw == POST_PLAINTEXT == fixture("text.xml")
    assert type(callback.event) is TextMessage and callback.event.content == "hello"
    assert callback.fields["MsgId"] == "4561255354251345929"
    assert callback.dedupe_key == "msgid:4561255354251345929"
    assert callback.key_index == 0 and callback.timestamp == NOW


def test_vector_a_url_check_returns_the_echostr_plaintext_exactly():
    assert verify_url(URL_QUERY, (KEY,), CORP_ID, int(URL_TIMESTAMP), SKEW) == URL_PLAINTEXT


@pytest.mark.parametrize("plaintext", [b"1616140317555161061", "回声 echo ✓".encode(), b" trailing\n", b"x" * 500])
def test_url_verification_round_trip(plaintext):
    crypto = CallbackCrypto(TOKEN, AES_KEY, CORP_ID)
    echostr = crypto.encrypt_payload(plaintext)
    query = {**sign_raw(echostr, timestamp="1700000000", nonce="42"), "echostr": echostr}
    assert verify_url(query, (KEY,), CORP_ID, 1700000000, SKEW) == plaintext


def test_envelope_without_to_user_or_agent_id_is_fine():
    crypto = CallbackCrypto(TOKEN, AES_KEY, CORP_ID)
    encrypted = crypto.encrypt_payload(fixture("delete_user.xml"))
    body = f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    assert type(accept(sign_raw(encrypted), body).event) is UserDeleted


def test_passive_reply_envelope_is_accepted_as_a_body():
    crypto = CallbackCrypto(TOKEN, AES_KEY, CORP_ID)
    body = crypto.encrypt(fixture("delete_user.xml"), nonce="7", timestamp=NOW).encode()
    encrypted = body.split(b"<![CDATA[")[1].split(b"]]>")[0].decode()
    assert type(accept(sign_raw(encrypted, nonce="7"), body).event) is UserDeleted


# --- dedupe keys -----------------------------------------------------------------------------------
def test_events_without_an_id_dedupe_on_the_plaintext_hash():
    plaintext = fixture("delete_user.xml")
    first = accept(*signed(plaintext))
    retry = accept(*signed(plaintext))  # WeCom's retry: same plaintext, fresh random prefix
    assert first.dedupe_key == retry.dedupe_key == "sha256:" + hashlib.sha256(plaintext).hexdigest()
    other = accept(*signed(plaintext.replace(b"zhangsan", b"lisi")))
    assert other.dedupe_key != first.dedupe_key


# --- W2: tamper matrix -----------------------------------------------------------------------------
def _flip(text: str, at: int | None = None) -> str:
    i = len(text) // 2 if at is None else at
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1 :]


def _encrypt_field(body: bytes) -> str:
    return body.split(b"<Encrypt><![CDATA[")[1].split(b"]]>")[0].decode()


def _drop(query: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in query.items() if k != name}


def _bad_pad_encrypt() -> str:
    body = b"R" * 16 + (5).to_bytes(4, "big") + b"hello" + CORP_ID.encode()  # 43 bytes
    return raw_aes(body + bytes([21]) * 20 + b"\x07")  # last byte says 7 but the bytes before it differ


def _tamper_cases() -> dict[str, tuple[dict[str, str], bytes, str]]:
    q, body = dict(POST_QUERY), POST_BODY
    encrypted = _encrypt_field(body)
    wrong_corp = CallbackCrypto(TOKEN, AES_KEY, "wwOtherCorp000001").encrypt_payload(POST_PLAINTEXT)
    same_token_other_key = CallbackCrypto(TOKEN, OTHER_KEY.aes_key, CORP_ID).encrypt_payload(POST_PLAINTEXT)
    other_token_and_key = CallbackCrypto(OTHER_KEY.token, OTHER_KEY.aes_key, CORP_ID).encrypt_payload(POST_PLAINTEXT)
    other_signer = CallbackCrypto(OTHER_KEY.token, OTHER_KEY.aes_key, CORP_ID)
    return {
        "msg_signature changed": ({**q, "msg_signature": _flip(q["msg_signature"])}, body, "signature"),
        "msg_signature dropped": (_drop(q, "msg_signature"), body, "missing_param"),
        "msg_signature empty": ({**q, "msg_signature": ""}, body, "missing_param"),
        "timestamp changed": ({**q, "timestamp": str(NOW + 1)}, body, "signature"),
        "timestamp dropped": (_drop(q, "timestamp"), body, "missing_param"),
        "nonce changed": ({**q, "nonce": q["nonce"] + "0"}, body, "signature"),
        "nonce dropped": (_drop(q, "nonce"), body, "missing_param"),
        "Encrypt changed": (q, body.replace(encrypted.encode(), _flip(encrypted).encode()), "signature"),
        "Encrypt dropped": (q, b"<xml><ToUserName>wx5823bf96d3bd56c7</ToUserName></xml>", "no_encrypt"),
        "Encrypt empty": (q, envelope(""), "no_encrypt"),
        "non-numeric timestamp, signed": (sign_raw(encrypted, timestamp="14O9659813"), body, "bad_param"),
        "non-numeric timestamp": ({**q, "timestamp": "yesterday"}, body, "signature"),
        "bad base64, signed": (sign_raw("%%%bad%%%"), envelope("%%%bad%%%"), "decrypt"),
        "bad base64": (q, envelope("%%%bad%%%"), "signature"),
        "wrong pad byte, signed": (sign_raw(_bad_pad_encrypt()), envelope(_bad_pad_encrypt()), "decrypt"),
        "wrong ReceiveId, signed": (sign_raw(wrong_corp), envelope(wrong_corp), "receive_id"),
        "wrong AES key, right token": (sign_raw(same_token_other_key), envelope(same_token_other_key), "decrypt"),
        "wrong token and key": (
            {**q, "msg_signature": other_signer.signature(POST_TIMESTAMP, q["nonce"], other_token_and_key)},
            envelope(other_token_and_key),
            "signature",
        ),
        "empty body": (q, b"", "envelope_xml"),
        "not xml": (q, b"hello", "envelope_xml"),
        "no query at all": ({}, body, "missing_param"),
    }


TAMPER = _tamper_cases()


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_callbacks_are_rejected_identically(case):
    query, body, reason = TAMPER[case]
    rejected = reject(query, body)
    assert rejected.reason == reason, rejected.detail


def test_every_tamper_case_gives_the_same_public_answer():
    answers = set()
    for query, body, _ in TAMPER.values():
        with pytest.raises(CallbackRejected) as info:
            accept(query, body)
        answers.add((type(info.value), str(info.value), info.value.args, info.value.public_message))
    assert answers == {(CallbackRejected, PUBLIC_MESSAGE, (PUBLIC_MESSAGE,), PUBLIC_MESSAGE)}


@pytest.mark.parametrize(
    "change",
    ["msg_signature", "timestamp", "nonce", "echostr", "drop msg_signature", "drop echostr", "drop nonce"],
)
def test_tampered_url_checks_are_rejected(change):
    query = dict(URL_QUERY)
    if change.startswith("drop "):
        del query[change[5:]]
    else:
        query[change] = _flip(query[change], 3)
    with pytest.raises(CallbackRejected) as info:
        verify_url(query, (KEY,), CORP_ID, int(URL_TIMESTAMP), SKEW)
    assert str(info.value) == PUBLIC_MESSAGE


def test_url_check_with_a_stale_timestamp_is_rejected():
    with pytest.raises(CallbackRejected) as info:
        verify_url(URL_QUERY, (KEY,), CORP_ID, int(URL_TIMESTAMP) + 301, SKEW)
    assert info.value.reason == "timestamp"


@pytest.mark.parametrize("junk", [None, 42, b"bytes", ["list"], "x" * 5000])
def test_non_string_or_huge_parameters_are_rejected(junk):
    assert reject({**POST_QUERY, "nonce": junk}, POST_BODY).reason in {"bad_param", "missing_param"}


def test_no_configured_keys_rejects():
    assert reject(POST_QUERY, POST_BODY, keys=()).reason == "no_keys"


def test_query_that_is_not_a_mapping_is_rejected():
    assert reject(None, POST_BODY).reason == "missing_param"  # type: ignore[arg-type]
    assert reject(POST_QUERY, "a str body").reason == "bad_param"  # type: ignore[arg-type]


# --- W3: freshness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [-299, 0, 299, -300, 300])
def test_fresh_callbacks_are_accepted(offset):
    assert accept(POST_QUERY, POST_BODY, now=NOW + offset).timestamp == NOW


@pytest.mark.parametrize("offset", [-301, 301, -86400, 10**9])
def test_stale_or_future_callbacks_are_rejected(offset):
    assert reject(POST_QUERY, POST_BODY, now=NOW + offset).reason == "timestamp"


def test_now_may_be_an_aware_datetime():
    now = datetime.fromtimestamp(NOW + 299, UTC)
    assert accept(POST_QUERY, POST_BODY, now=now).timestamp == NOW
    assert reject(POST_QUERY, POST_BODY, now=datetime.fromtimestamp(NOW + 301, UTC)).reason == "timestamp"


def test_max_skew_zero_turns_the_check_off():
    assert accept(POST_QUERY, POST_BODY, now=NOW + 10 * 365 * 86400, max_skew=0).timestamp == NOW


# --- W8: key rotation ------------------------------------------------------------------------------
def test_rotation_accepts_either_pair_and_stops_accepting_a_removed_one():
    new, old = OTHER_KEY, KEY
    assert accept(POST_QUERY, POST_BODY, keys=(new, old)).key_index == 1  # signed with the old pair
    fresh = signed(fixture("delete_user.xml"), key=new)
    assert accept(*fresh, keys=(new, old)).key_index == 0
    assert accept(*fresh, keys=(old, new)).key_index == 1
    assert reject(POST_QUERY, POST_BODY, keys=(new,)).reason == "signature"  # old pair removed
    assert accept(*fresh, keys=(new,)).key_index == 0


def test_rotation_of_the_aes_key_alone_under_the_same_token():
    new = CallbackKey(TOKEN, OTHER_KEY.aes_key)
    assert accept(POST_QUERY, POST_BODY, keys=(new, KEY)).key_index == 1  # first pair's decrypt fails, second's works
    assert accept(*signed(fixture("delete_user.xml"), key=new), keys=(new, KEY)).key_index == 0
    assert reject(POST_QUERY, POST_BODY, keys=(new,)).reason == "decrypt"


def test_every_pair_is_checked_even_when_the_first_matches(monkeypatch):
    calls = []
    original = CallbackCrypto.verify_signature

    def counting(self, *args):
        calls.append(self.token)
        return original(self, *args)

    monkeypatch.setattr(CallbackCrypto, "verify_signature", counting)
    accept(POST_QUERY, POST_BODY, keys=(KEY, OTHER_KEY))
    assert calls == [TOKEN, OTHER_KEY.token]


# --- the order of the checks is the issue's ------------------------------------------------------
def test_size_cap_comes_first():
    body = b"<!DOCTYPE x>" + b" " * MAX_BODY_BYTES
    assert reject({}, body).reason == "body_too_large"


def test_declarations_are_refused_before_the_signature_is_looked_at():
    assert reject({}, b"<!DOCTYPE xml><xml><Encrypt>x</Encrypt></xml>").reason == "dtd_or_entity"


def test_signature_comes_before_freshness_and_freshness_before_decryption():
    assert reject({**POST_QUERY, "nonce": "1"}, POST_BODY, now=NOW + 10_000).reason == "signature"
    query = sign_raw("%%%bad%%%", timestamp=str(NOW))
    assert reject(query, envelope("%%%bad%%%"), now=NOW + 10_000).reason == "timestamp"


def test_decrypted_xml_is_parsed_with_the_same_safe_parser():
    for inner, detail in [
        (b"<xml><a>", "malformed"),
        (b"<!DOCTYPE x><xml/>", "dtd_or_entity"),
        (b"\xff\xfe", "malformed"),
    ]:
        rejected = reject(*signed(inner))
        assert (rejected.reason, rejected.detail) == ("inner_xml", detail)


# --- junk of any kind: only CallbackRejected ------------------------------------------------------
def _open(query, body):
    try:
        return open_callback(query, body, (KEY, OTHER_KEY), CORP_ID, NOW, SKEW)
    except CallbackRejected as exc:
        assert exc.reason in REASONS and str(exc) == PUBLIC_MESSAGE
        return None


junk_text = st.one_of(st.text(max_size=60), st.from_regex(r"[0-9a-f]{0,45}", fullmatch=True), st.none(), st.integers())
junk_query = st.fixed_dictionaries(
    {}, optional={"msg_signature": junk_text, "timestamp": junk_text, "nonce": junk_text, "echostr": junk_text}
)
junk_body = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(lambda t: f"<xml><Encrypt><![CDATA[{t}]]></Encrypt></xml>".encode("utf-8", "replace")),
    st.binary(max_size=200).map(lambda b: envelope(base64.b64encode(b).decode())),
    st.integers(1, 12).map(lambda n: ("<a>" * n + "x" + "</a>" * n).encode()),
)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=junk_query, body=junk_body)
def test_fuzz_junk_only_ever_raises_callback_rejected(query, body):
    _open(query, body)
    try:
        verify_url(query, (KEY,), CORP_ID, NOW, SKEW)
    except CallbackRejected as exc:
        assert str(exc) == PUBLIC_MESSAGE


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=600))
def test_fuzz_signed_junk_ciphertext_only_ever_raises_callback_rejected(data):
    # A correct signature over random "ciphertext": reaches base64, AES, padding and length checks.
    encrypted = base64.b64encode(data).decode()
    _open(sign_raw(encrypted), envelope(encrypted))


tags = st.sampled_from(["MsgType", "Event", "ChangeType", "UserID", "Department", "SelectedItems", "Item", "a"])
xml_content = st.recursive(
    st.text(max_size=15).map(lambda t: "<![CDATA[" + t.replace("]]>", "") + "]]>"),
    lambda inner: st.lists(st.tuples(tags, inner), max_size=4).map(
        lambda kids: "".join(f"<{tag}>{content}</{tag}>" for tag, content in kids)
    ),
    max_leaves=10,
)
inner_xml = st.one_of(
    st.binary(max_size=300),
    xml_content.map(lambda xml: f"<xml>{xml}</xml>".encode("utf-8", "surrogatepass")),
)


@settings(max_examples=300, deadline=None, database=None)
@given(plaintext=inner_xml)
def test_fuzz_authentic_junk_plaintext_is_a_callback_or_rejected(plaintext):
    result = _open(*signed(plaintext))
    assert result is None or result.raw == plaintext


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif op == 2:
            del data[at : at + rng.randint(1, 8)]
        elif op == 3:
            data = data[:at]
        elif op == 4:
            piece = data[at : at + rng.randint(1, 40)]
            data[at:at] = piece * rng.randint(1, 3)
        else:
            data[at:at] = rng.choice([b"<", b">", b"]]>", b"<![CDATA[", b"&amp;", b"&x;", b"\x00", b"=", b"\xff"])
    return bytes(data)


def test_mutated_real_envelopes_only_ever_raise_callback_rejected():
    rng = random.Random(20240607)
    seeds = [(POST_QUERY, POST_BODY), signed(fixture("template_card_event.xml")), signed(fixture("create_user.xml"))]
    accepted = rejected = 0
    for i in range(3000):
        query, body = seeds[i % len(seeds)]
        query = dict(query)
        if rng.random() < 0.3:
            name = rng.choice(sorted(query))
            query[name] = _mutate(rng, query[name].encode()).decode("utf-8", "replace")
        else:
            body = _mutate(rng, body)
        if _open(query, body) is None:
            rejected += 1
        else:
            accepted += 1
    assert rejected > 2500  # almost every mutation is caught; the rest touched bytes outside the signed parts


@pytest.mark.parametrize("module", ["callbacks", "crypto", "errors", "events", "safexml"])
def test_transport_modules_import_no_flask_sqlalchemy_or_models(module):
    import ast
    from pathlib import Path

    path = Path(callbacks.__file__).with_name(f"{module}.py")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    banned = ("flask", "sqlalchemy", "flask_sqlalchemy", "wecom_plugin.models", "wecom_plugin.extensions")
    assert not [name for name in imported if name.split(".")[0] in banned or name.startswith(banned)]


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=junk_query, body=junk_body, plaintext=inner_xml)
def test_fuzz_soak(query, body, plaintext):
    _open(query, body)
    _open(*signed(plaintext))
