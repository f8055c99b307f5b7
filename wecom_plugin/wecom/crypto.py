"""WeCom callback crypto (contract §7.3, doc 91144 加解密方案说明), from scratch on ``cryptography``.

* ``AESKey = base64(EncodingAESKey + "=")``: 32 bytes, AES-256-CBC, IV = ``AESKey[:16]``.
* Plaintext: ``random(16) | msg_len (4 bytes, big-endian) | msg | receive_id``, PKCS#7-padded to a
  multiple of **32** bytes (pad value 1..32; a whole block of 0x20 when already aligned).
* ``msg_signature = sha1(sorted([token, timestamp, nonce, encrypted]) joined)`` in lowercase hex.

There is no MAC: the token-bearing signature is the only authentication, so callers verify it
(:meth:`CallbackCrypto.verify_signature`, constant time) before decrypting. Every failure raises the
one :class:`CallbackCryptoError`, whose message never says which check failed; ``reason`` is for
logs only. Decryption checks what WeCom's own library skips: padding value and bytes, the length
field, and the receive id (the corp id for self-built apps).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wecom_plugin.errors import ConfigurationError

BLOCK = 32  # WeCom pads to 32 bytes, not AES's 16
RANDOM_BYTES = 16
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_TIMESTAMP = re.compile(r"[0-9]{1,20}")


class CallbackCryptoError(Exception):
    """A callback failed a crypto check. ``str()`` is the same for every cause; ``reason`` says which."""

    def __init__(self, reason: str):
        super().__init__("callback crypto check failed")
        self.reason = reason


def aes_key_bytes(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key of a 43-character EncodingAESKey.

    Raises:
        ConfigurationError: the key is not 43 base64 characters decoding to 32 bytes.
    """
    if not isinstance(encoding_aes_key, str) or len(encoding_aes_key) != 43:
        raise ConfigurationError("EncodingAESKey must be 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("EncodingAESKey is not base64") from None
    if len(key) != 32:
        raise ConfigurationError("EncodingAESKey does not decode to 32 bytes")
    return key


def _utf8(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def compute_signature(token: str, timestamp: str, nonce: str, encrypted: str) -> str:
    """``msg_signature``: sha1 of the four strings sorted and concatenated, lowercase hex (§7.3)."""
    parts = sorted(_utf8(p) for p in (token, timestamp, nonce, encrypted))  # UTF-8 order == code point order
    return hashlib.sha1(b"".join(parts)).hexdigest()  # noqa: S324 - WeCom's protocol, not our choice


class CallbackCrypto:
    """One receiver's (token, EncodingAESKey) pair and the receive id it expects.

    Args:
        token: the receiver's Token (WeCom console).
        encoding_aes_key: the 43-character EncodingAESKey.
        receive_id: the corp id for self-built apps and the contact-sync assistant (§7.3).
    """

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str):
        self.token = token
        self.receive_id = receive_id
        self._key = aes_key_bytes(encoding_aes_key)

    def __repr__(self) -> str:
        return f"CallbackCrypto(receive_id={self.receive_id!r})"

    # --- signature ---------------------------------------------------------------------------
    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        """The ``msg_signature`` WeCom computes for these values with this token."""
        return compute_signature(self.token, timestamp, nonce, encrypted)

    def verify_signature(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> bool:
        """True if ``msg_signature`` is right; the comparison takes the same time wherever it differs."""
        if not isinstance(msg_signature, str):
            return False
        expected = self.signature(timestamp, nonce, encrypted).encode("ascii")
        return hmac.compare_digest(expected, _utf8(msg_signature))

    # --- AES ---------------------------------------------------------------------------------
    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def unpack(self, encrypted: str | bytes) -> tuple[bytes, bytes]:
        """Decrypt ``encrypted`` (base64) into ``(msg, receive_id)`` without judging the receive id.

        Raises:
            CallbackCryptoError: bad base64, bad length, bad padding or a bad length field.
        """
        raw = _utf8(encrypted) if isinstance(encrypted, str) else bytes(encrypted)
        if not _BASE64.fullmatch(raw):
            raise CallbackCryptoError("base64")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise CallbackCryptoError("base64") from None
        if not data or len(data) % BLOCK:
            raise CallbackCryptoError("ciphertext_length")
        decryptor = self._cipher().decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise CallbackCryptoError("padding")
        content = plain[RANDOM_BYTES:-pad]
        if len(content) < 4:
            raise CallbackCryptoError("length_field")
        msg_len = int.from_bytes(content[:4], "big")
        if msg_len > len(content) - 4:
            raise CallbackCryptoError("length_field")
        return content[4 : 4 + msg_len], content[4 + msg_len :]

    def decrypt(self, encrypted: str | bytes) -> bytes:
        """The plaintext message in ``encrypted``, after checking its receive id is ours.

        Raises:
            CallbackCryptoError: any failure, including a receive id that is not ``self.receive_id``.
        """
        msg, receive_id = self.unpack(encrypted)
        if not self.is_receive_id(receive_id):
            raise CallbackCryptoError("receive_id")
        return msg

    def is_receive_id(self, receive_id: bytes) -> bool:
        """True if ``receive_id`` (from :meth:`unpack`) is the one this receiver expects."""
        return hmac.compare_digest(receive_id, _utf8(self.receive_id))

    def encrypt_payload(self, plaintext: str | bytes, *, random16: bytes | None = None) -> str:
        """Base64 ciphertext of ``plaintext`` for our receive id. ``random16`` is for known-answer tests."""
        msg = _utf8(plaintext) if isinstance(plaintext, str) else bytes(plaintext)
        prefix = os.urandom(RANDOM_BYTES) if random16 is None else bytes(random16)
        if len(prefix) != RANDOM_BYTES:
            raise ValueError("random16 must be 16 bytes")
        body = prefix + len(msg).to_bytes(4, "big") + msg + _utf8(self.receive_id)
        pad = BLOCK - len(body) % BLOCK  # 1..32: a whole block when already aligned
        encryptor = self._cipher().encryptor()
        data = encryptor.update(body + bytes([pad]) * pad) + encryptor.finalize()
        return base64.b64encode(data).decode("ascii")

    def encrypt(
        self, plaintext: str | bytes, nonce: str, timestamp: str | int, *, random16: bytes | None = None
    ) -> str:
        """The encrypted reply envelope WeCom expects for a passive reply (§7.4), as a str.

        Also what tests use to build callbacks: :func:`~wecom_plugin.wecom.callbacks.open_callback`
        reads only ``Encrypt`` from a body, so this envelope is accepted as a POST body too.
        """
        timestamp = str(timestamp)
        if not _TIMESTAMP.fullmatch(timestamp):
            raise ValueError("timestamp must be decimal digits")
        if "]]>" in nonce or "<" in nonce:
            raise ValueError("nonce must not contain XML markup")
        encrypted = self.encrypt_payload(plaintext, random16=random16)
        return (
            f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt>"
            f"<MsgSignature><![CDATA[{self.signature(timestamp, nonce, encrypted)}]]></MsgSignature>"
            f"<TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        )
