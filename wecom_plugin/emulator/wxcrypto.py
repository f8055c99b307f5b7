"""WeCom's callback crypto as the *sender* sees it (contract §7.3), on ``cryptography``.

The sandbox tenant's own implementation, written from the contract and golden-tested against the
official Vector A (§7.5) and cross-checked against wechatpy; it shares nothing with the plugin's
transport (:mod:`wecom_plugin.wecom`), so a bug in one cannot hide in the other.

* ``AESKey = base64(EncodingAESKey + "=")``: 32 bytes; AES-256-CBC with ``IV = AESKey[:16]``.
* Plaintext: ``random(16) | len(msg) as 4 bytes big-endian | msg | receive_id``, PKCS#7-padded to a
  multiple of **32** bytes (a whole block of 32 x 0x20 when already aligned).
* ``msg_signature = sha1("".join(sorted([token, timestamp, nonce, encrypt])))``, lowercase hex.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import random
import secrets
import string
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32


class WXCryptoError(ValueError):
    """A malformed key, or a ciphertext that does not decrypt to a well-formed message."""


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey."""
    if not isinstance(encoding_aes_key, str) or len(encoding_aes_key) != 43:
        raise WXCryptoError("EncodingAESKey must be 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise WXCryptoError("EncodingAESKey must be base64") from None
    if len(key) != 32:
        raise WXCryptoError("EncodingAESKey must decode to 32 bytes")
    return key


def signature(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """``msg_signature`` of §7.3: sha1 over the four strings sorted and concatenated."""
    joined = "".join(sorted([token, str(timestamp), str(nonce), encrypt]))
    return hashlib.sha1(joined.encode("utf-8")).hexdigest()  # noqa: S324 - WeCom's protocol


def _pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def encrypt(message: str | bytes, encoding_aes_key: str, receive_id: str, random16: bytes | None = None) -> str:
    """``Encrypt`` (base64) of ``message`` for ``receive_id`` (the corp id for self-built apps)."""
    key = aes_key(encoding_aes_key)
    raw = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    prefix = os.urandom(16) if random16 is None else random16
    if len(prefix) != 16:
        raise WXCryptoError("the random prefix is 16 bytes")
    plain = _pad(prefix + struct.pack(">I", len(raw)) + raw + receive_id.encode("utf-8"))
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")


def decrypt(encrypted: str, encoding_aes_key: str, receive_id: str | None) -> str:
    """The message inside ``encrypted``; checks padding, length and (unless None) the receive id."""
    key = aes_key(encoding_aes_key)
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise WXCryptoError("Encrypt is not base64") from None
    if not raw or len(raw) % BLOCK:
        raise WXCryptoError("ciphertext length is not a multiple of 32")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise WXCryptoError("bad padding")
    body = plain[16:-pad]
    if len(body) < 4:
        raise WXCryptoError("truncated plaintext")
    (length,) = struct.unpack(">I", body[:4])
    if length > len(body) - 4:
        raise WXCryptoError("bad length field")
    message, rid = body[4 : 4 + length], body[4 + length :]
    if receive_id is not None and not hmac.compare_digest(rid, receive_id.encode("utf-8")):
        raise WXCryptoError("receive id mismatch")
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise WXCryptoError("message is not UTF-8") from None


def cdata(text: object) -> str:
    """``<![CDATA[text]]>``, splitting any ``]]>`` inside so user data cannot end the section."""
    return "<![CDATA[" + str(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


class WXCrypto:
    """One receiver's Token + EncodingAESKey, and the receive id (corp id) WeCom puts in every message."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        aes_key(encoding_aes_key)  # validate early
        self.token = token
        self.encoding_aes_key = encoding_aes_key
        self.receive_id = receive_id

    def sign(self, timestamp: str, nonce: str, encrypted: str) -> str:
        return signature(self.token, timestamp, nonce, encrypted)

    def encrypt(self, message: str | bytes, random16: bytes | None = None) -> str:
        return encrypt(message, self.encoding_aes_key, self.receive_id, random16)

    def decrypt(self, encrypted: str) -> str:
        return decrypt(encrypted, self.encoding_aes_key, self.receive_id)

    def verify(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> bool:
        return hmac.compare_digest(self.sign(timestamp, nonce, encrypted).encode(), msg_signature.encode())

    def envelope(
        self,
        message: str,
        timestamp: str,
        nonce: str,
        agentid: int | str | None,
        random16: bytes | None = None,
    ) -> tuple[str, dict[str, str]]:
        """The POST body (§7.2 envelope) and its query (``msg_signature``, ``timestamp``, ``nonce``)."""
        encrypted = self.encrypt(message, random16)
        body = (
            f"<xml><ToUserName>{cdata(self.receive_id)}</ToUserName><Encrypt>{cdata(encrypted)}</Encrypt>"
            f"<AgentID>{cdata('' if agentid is None else agentid)}</AgentID></xml>"
        )
        query = {"msg_signature": self.sign(timestamp, nonce, encrypted), "timestamp": timestamp, "nonce": nonce}
        return body, query

    def echostr(self, plaintext: str, timestamp: str, nonce: str) -> dict[str, str]:
        """The URL-verification query (§7.1): ``msg_signature``, ``timestamp``, ``nonce``, ``echostr``."""
        echostr = self.encrypt(plaintext)
        return {"msg_signature": self.sign(timestamp, nonce, echostr), "timestamp": timestamp, "nonce": nonce,
                "echostr": echostr}  # fmt: skip

    def open_reply(self, body: str) -> tuple[str, dict[str, str]]:
        """Verify and decrypt a passive reply (``<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>``).

        Returns the plaintext and the reply's fields; raises :class:`WXCryptoError` on any failure.
        """
        from defusedxml import ElementTree

        try:
            root = ElementTree.fromstring(body)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad reply
            raise WXCryptoError(f"reply is not XML: {type(exc).__name__}") from None
        fields = {child.tag: (child.text or "") for child in root}
        for name in ("Encrypt", "MsgSignature", "TimeStamp", "Nonce"):
            if name not in fields:
                raise WXCryptoError(f"reply lacks {name}")
        if not self.verify(fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"], fields["Encrypt"]):
            raise WXCryptoError("reply signature mismatch")
        return self.decrypt(fields["Encrypt"]), fields


def generate_token(rng: random.Random | None = None, length: int = 32) -> str:
    """A receiver Token as WeCom's console makes them: letters and digits."""
    chooser = rng or secrets.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    return "".join(chooser.choice(alphabet) for _ in range(length))


def generate_aes_key(raw32: bytes | None = None) -> str:
    """A 43-character EncodingAESKey (base64 of 32 bytes without the trailing ``=``)."""
    raw = os.urandom(32) if raw32 is None else raw32
    if len(raw) != 32:
        raise WXCryptoError("an AES-256 key is 32 bytes")
    return base64.b64encode(raw).decode("ascii")[:43]


def nonce(rng: random.Random | None = None) -> str:
    """A numeric nonce like WeCom's (``1372623149``)."""
    chooser = rng or secrets.SystemRandom()
    return str(chooser.randrange(10**8, 10**10))
