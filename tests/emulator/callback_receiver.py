"""A tiny callback receiver for the tests: decrypts with wechatpy's ``WeChatCrypto``.

wechatpy is independent of both the emulator's crypto (``wecom_plugin.emulator.wxcrypto``) and the
plugin's (``wecom_plugin.wecom.crypto``), so a receiver built on it checks the emulator's signing
and encryption from the outside. Each request is recorded; the test scripts the answers.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import xmltodict
from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

from wecom_plugin.emulator.wxcrypto import generate_aes_key, generate_token


@dataclass
class Answer:
    status: int = 200
    delay: float = 0.0
    body: bytes = b""
    wait: threading.Event | None = None  # block until set (then answer)


@dataclass
class Received:
    method: str
    query: dict[str, str]
    body: bytes
    at: float
    xml: str | None = None  # decrypted payload
    envelope: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def event(self) -> dict[str, Any]:
        return xmltodict.parse(self.xml)["xml"] if self.xml else {}


class CallbackReceiver:
    """``url`` receives POSTs (decrypted into :attr:`received`) and GET verifications (echoes the plaintext)."""

    def __init__(self, corp_id: str, token: str | None = None, aes_key: str | None = None) -> None:
        self.corp_id = corp_id
        self.token = token or generate_token()
        self.aes_key = aes_key or generate_aes_key()
        self.crypto = WeChatCrypto(self.token, self.aes_key, corp_id)
        self.received: list[Received] = []
        self.answers: deque[Answer] = deque()
        self.verify_answer: Answer | None = None  # None: echo the decrypted echostr
        self.verifications: list[dict[str, str]] = []
        self.reply_for: Any = None  # callable(Received) -> bytes | None: a passive reply body
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _query(self) -> dict[str, str]:
                return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

            def _send(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the sender gave up (timeout)

            def do_GET(self) -> None:
                query = self._query()
                receiver.verifications.append(query)
                answer = receiver.verify_answer
                try:
                    plain = receiver.crypto.check_signature(
                        query["msg_signature"], query["timestamp"], query["nonce"], query["echostr"]
                    )
                except (KeyError, InvalidSignatureException):
                    self._send(403, b"bad signature")
                    return
                if answer is None:
                    self._send(200, plain.encode())
                    return
                time.sleep(answer.delay)
                self._send(answer.status, answer.body if answer.body else plain.encode() + b"\n")

            def do_POST(self) -> None:
                query = self._query()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                item = Received("POST", query, body, time.time())
                try:
                    item.envelope = xmltodict.parse(body)["xml"]
                    item.xml = receiver.crypto.decrypt_message(
                        body, query["msg_signature"], query["timestamp"], query["nonce"]
                    )
                except Exception as exc:  # recorded for the test to look at
                    item.error = f"{type(exc).__name__}: {exc}"
                with receiver.lock:
                    receiver.received.append(item)
                    answer = receiver.answers.popleft() if receiver.answers else Answer()
                if answer.wait is not None:
                    answer.wait.wait(10)
                if answer.delay:
                    time.sleep(answer.delay)
                reply = receiver.reply_for(item) if receiver.reply_for and answer.status == 200 else None
                self._send(answer.status, reply or answer.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wecom/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def answer(self, *answers: Answer) -> None:
        self.answers.extend(answers)

    def events(self) -> list[dict[str, Any]]:
        return [r.event for r in self.received if r.xml]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2)
