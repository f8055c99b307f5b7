"""The emulator's own callback crypto (§7.3): golden Vector A (§7.5) byte for byte, and a cross-check
against wechatpy 1.8.18's ``WeChatCrypto`` in both directions."""

from __future__ import annotations

import base64

import pytest
import xmltodict
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.enterprise.crypto import WeChatCrypto

from wecom_plugin.emulator.wxcrypto import (
    WXCrypto,
    WXCryptoError,
    aes_key,
    cdata,
    decrypt,
    generate_aes_key,
    generate_token,
    signature,
)

# Vector A (§7.5), the 加解密方案说明 example
TOKEN = "QDG6eK"
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CORP = "wx5823bf96d3bd56c7"
ECHOSTR = "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
ECHO_PLAIN = "1616140317555161061"
ECHO_SIG, ECHO_TS, ECHO_NONCE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3", "1409659589", "263014780"
POST_ENCRYPT = (
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvu"
    "JTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+Ltw"
    "Gc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t"
    "9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe"
    "0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="
)
POST_SIG, POST_TS, POST_NONCE = "477715d11cdb4164915debcba66cb864d751f3e6", "1409659813", "1372623149"
POST_PLAIN = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
    "<FromUserName><![CDATA[mycreate]]></FromUserName>\n"
    "<CreateTime>1409659813</CreateTime>\n"
    "<MsgType><![CDATA[text]]></MsgType>\n"
    "<Content><![CDATA[hello]]></Content>\n"
    "<MsgId>4561255354251345929</MsgId>\n"
    "<AgentID>218</AgentID>\n"
    "</xml>"
)


def _random_prefix(encrypted: str) -> bytes:
    """The 16 random bytes the vector was made with (read from its first block)."""
    key = aes_key(KEY)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return (decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize())[:16]


@pytest.fixture
def crypto():
    return WXCrypto(TOKEN, KEY, CORP)


def test_vector_a_url_verification(crypto):
    assert crypto.sign(ECHO_TS, ECHO_NONCE, ECHOSTR) == ECHO_SIG
    assert crypto.decrypt(ECHOSTR) == ECHO_PLAIN
    assert _random_prefix(ECHOSTR) == b"c41b64491c2468d0"
    assert crypto.encrypt(ECHO_PLAIN, b"c41b64491c2468d0") == ECHOSTR  # byte-exact encryption
    query = crypto.echostr(ECHO_PLAIN, ECHO_TS, ECHO_NONCE)
    assert query["msg_signature"] == crypto.sign(ECHO_TS, ECHO_NONCE, query["echostr"])


def test_vector_a_encrypted_post(crypto):
    assert signature(TOKEN, POST_TS, POST_NONCE, POST_ENCRYPT) == POST_SIG
    assert crypto.verify(POST_SIG, POST_TS, POST_NONCE, POST_ENCRYPT)
    assert not crypto.verify(POST_SIG, POST_TS, "1", POST_ENCRYPT)
    assert crypto.decrypt(POST_ENCRYPT) == POST_PLAIN
    prefix = _random_prefix(POST_ENCRYPT)
    assert crypto.encrypt(POST_PLAIN, prefix) == POST_ENCRYPT
    body, query = crypto.envelope(POST_PLAIN, POST_TS, POST_NONCE, 218, prefix)
    assert query == {"msg_signature": POST_SIG, "timestamp": POST_TS, "nonce": POST_NONCE}
    assert body == (
        f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{POST_ENCRYPT}]]></Encrypt>"
        "<AgentID><![CDATA[218]]></AgentID></xml>"
    )


@pytest.mark.parametrize("length", [0, 1, 25, 26, 27, 57, 58, 59, 300])
def test_wechatpy_decrypts_our_envelopes(length):
    # 16 + 4 + len + 18 (corp id): lengths 26 and 58 land on a 32-byte boundary (a whole block of padding)
    message = "x" * length
    ours = WXCrypto(TOKEN, KEY, CORP)
    if length in (26, 58):
        raw = base64.b64decode(ours.encrypt(message))
        key = aes_key(KEY)
        plain = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor().update(raw)
        assert plain[-32:] == bytes([32]) * 32
    body, query = ours.envelope(message, "1700000000", "424242", 1000002)
    theirs = WeChatCrypto(TOKEN, KEY, CORP)
    assert theirs.decrypt_message(body, query["msg_signature"], query["timestamp"], query["nonce"]) == message


def test_we_decrypt_wechatpy_messages_and_open_its_passive_replies():
    theirs = WeChatCrypto(TOKEN, KEY, CORP)
    ours = WXCrypto(TOKEN, KEY, CORP)
    for text in ("", "你好，世界", "<xml><a>1</a></xml>" * 20):
        reply = theirs.encrypt_message(text, "777", "1700000000")
        plain, fields = ours.open_reply(reply)
        assert plain == text and fields["Nonce"] == "777"
        encrypted = xmltodict.parse(reply)["xml"]["Encrypt"]
        assert decrypt(encrypted, KEY, CORP) == text


def test_wechatpy_verifies_our_url_verification_query():
    query = WXCrypto(TOKEN, KEY, CORP).echostr("1234567890123456789", "1700000000", "99")
    theirs = WeChatCrypto(TOKEN, KEY, CORP)
    assert theirs.check_signature(query["msg_signature"], query["timestamp"], query["nonce"], query["echostr"]) == (
        "1234567890123456789"
    )


def test_decrypt_rejects_the_wrong_receive_id_key_padding_and_base64(crypto):
    with pytest.raises(WXCryptoError, match="receive id"):
        decrypt(POST_ENCRYPT, KEY, "wxsomeoneelse")
    assert decrypt(POST_ENCRYPT, KEY, None) == POST_PLAIN  # None: skip the receive-id check
    with pytest.raises(WXCryptoError):
        decrypt(POST_ENCRYPT, generate_aes_key(b"\x01" * 32), CORP)
    with pytest.raises(WXCryptoError, match="base64"):
        crypto.decrypt("not base64!")
    with pytest.raises(WXCryptoError, match="multiple of 32"):
        crypto.decrypt(base64.b64encode(b"x" * 16).decode())
    with pytest.raises(WXCryptoError, match="reply"):
        crypto.open_reply("<xml><Encrypt>a</Encrypt></xml>")
    with pytest.raises(WXCryptoError, match="signature"):
        crypto.open_reply(
            "<xml><Encrypt>a</Encrypt><MsgSignature>b</MsgSignature><TimeStamp>1</TimeStamp><Nonce>2</Nonce></xml>"
        )


@pytest.mark.parametrize("bad", ["", "short", "!" * 43, "A" * 42 + "!", "A" * 44])
def test_bad_encoding_aes_keys_are_refused(bad):
    with pytest.raises(WXCryptoError):
        WXCrypto(TOKEN, bad, CORP)


def test_generated_credentials_are_valid_for_the_console_and_wechatpy():
    token, key = generate_token(), generate_aes_key()
    assert len(token) == 32 and token.isalnum() and len(key) == 43 and len(aes_key(key)) == 32
    WeChatCrypto(token, key, CORP)


def test_cdata_cannot_be_closed_by_user_data():
    text = "a]]><evil/>b"
    parsed = xmltodict.parse(f"<xml><Name>{cdata(text)}</Name></xml>")
    assert parsed["xml"]["Name"] == text
