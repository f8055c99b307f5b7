"""Tests of the transport's callback side. Shared known answers and builders live here.

Vector A is WeCom's official example (contract §7.5, doc 90968/91144), copied byte for byte.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wecom_plugin.settings import CallbackKey
from wecom_plugin.wecom.crypto import CallbackCrypto

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wecom"

TOKEN = "QDG6eK"
AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CORP_ID = "wx5823bf96d3bd56c7"
KEY = CallbackKey(TOKEN, AES_KEY)

# URL verification (GET), parameters after URL-decoding.
URL_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
URL_TIMESTAMP = "1409659589"
URL_NONCE = "263014780"
URL_ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
URL_PLAINTEXT = b"1616140317555161061"
URL_RANDOM = b"c41b64491c2468d0"  # published: "random=c41b64491c2468d0, pad=7"
URL_QUERY = {"msg_signature": URL_SIGNATURE, "timestamp": URL_TIMESTAMP, "nonce": URL_NONCE, "echostr": URL_ECHOSTR}

# Encrypted POST.
POST_SIGNATURE = "477715d11cdb4164915debcba66cb864d751f3e6"
POST_TIMESTAMP = "1409659813"
POST_NONCE = "1372623149"
POST_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvu"
    "JTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+Ltw"
    "Gc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2"
    "t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptD"
    "AVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
POST_BODY = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA["
    + POST_ENCRYPT
    + "]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>"
).encode()
POST_QUERY = {"msg_signature": POST_SIGNATURE, "timestamp": POST_TIMESTAMP, "nonce": POST_NONCE}
# The published plaintext (pad=30); identical to tests/fixtures/wecom/text.xml.
POST_PLAINTEXT = (
    b"<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
    b"<FromUserName><![CDATA[mycreate]]></FromUserName>\n"
    b"<CreateTime>1409659813</CreateTime>\n"
    b"<MsgType><![CDATA[text]]></MsgType>\n"
    b"<Content><![CDATA[hello]]></Content>\n"
    b"<MsgId>4561255354251345929</MsgId>\n"
    b"<AgentID>218</AgentID>\n"
    b"</xml>"
)
# The POST's random prefix is not printed in the doc; these are the first 16 plaintext bytes of the
# published ciphertext (read once with a plain AES-CBC decrypt, see test_crypto).
POST_RANDOM = b"0960688932c47ef1"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def envelope(encrypted: str, to_user: str = CORP_ID, agent_id: str = "218") -> bytes:
    """An inbound POST body as WeCom sends it (§7.2)."""
    return (
        f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
        f"<AgentID><![CDATA[{agent_id}]]></AgentID></xml>"
    ).encode()


def signed(
    plaintext: bytes,
    *,
    key: CallbackKey = KEY,
    corp_id: str = CORP_ID,
    timestamp: str = POST_TIMESTAMP,
    nonce: str = POST_NONCE,
) -> tuple[dict[str, str], bytes]:
    """(query, body) of a callback carrying ``plaintext``, encrypted and signed the way WeCom does."""
    crypto = CallbackCrypto(key.token, key.aes_key, corp_id)
    encrypted = crypto.encrypt_payload(plaintext)
    query = {"msg_signature": crypto.signature(timestamp, nonce, encrypted), "timestamp": timestamp, "nonce": nonce}
    return query, envelope(encrypted)


def sign_raw(encrypted: str, *, key: CallbackKey = KEY, timestamp: str = POST_TIMESTAMP, nonce: str = POST_NONCE):
    """A correctly signed query for an arbitrary ``Encrypt`` value (to reach the checks after the signature)."""
    crypto = CallbackCrypto(key.token, key.aes_key, CORP_ID)
    return {"msg_signature": crypto.signature(timestamp, nonce, encrypted), "timestamp": timestamp, "nonce": nonce}


def raw_aes(block_aligned: bytes, aes_key: str = AES_KEY) -> str:
    """Base64 AES-256-CBC of ``block_aligned`` exactly as given (no padding added): for bad-padding cases."""
    key = base64.b64decode(aes_key + "=")
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(block_aligned) + encryptor.finalize()).decode()


def raw_aes_decrypt(encrypted: str, aes_key: str = AES_KEY) -> bytes:
    """Plain AES-256-CBC decrypt, nothing checked: independent of the code under test."""
    key = base64.b64decode(aes_key + "=")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
