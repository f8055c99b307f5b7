"""Callbacks as WeCom sends them, and handlers that make their side effects countable.

Shared by the callback scenario tests (tests/web/test_callback_scenarios.py) and the ack-latency
benchmark (bench/callbacks.py).

* :class:`Sender` signs and encrypts a callback for one receiver (token, EncodingAESKey, corp id)
  with the sandbox tenant's own crypto (:mod:`wecom_plugin.emulator.wxcrypto`, as
  tests/web/test_callback.py does), which shares no code with the transport under test. Every call
  to :meth:`Sender.sign` is a fresh encryption (new random prefix, nonce and timestamp), like a
  WeCom retry; sending the same :class:`SignedCallback` twice is an identical copy.
* Real processes: :func:`start_gunicorn` (the project's ``config/gunicorn.conf.py``) and :func:`spawn`
  (a ``wecom-plugin worker``), each in its own process group with its output in a file, and
  :func:`stop` to end one.
* Handlers for :func:`wecom_plugin.services.callbacks.register_handler`:

  - :func:`record_handled`: adds one ``audit_event`` row per call, in the dispatch transaction, so
    the row exists only if the handler's run committed (``action = HANDLED_ACTION``,
    ``target = "msgid:<MsgId>"``, ``detail.pid``). Optional sleep and pause, see below.
  - :func:`call_wecom`: the benchmark's handler: ends the dispatch transaction, then reads the
    sender with ``user/get`` through :func:`wecom_plugin.services.wecom.client_for` (the slow
    dependency sits in the worker's path, never in the request's).

This module is also a job module (``WECOM_PLUGIN_JOB_MODULES=tests.support.callback_load``) for real
web and worker processes. Importing it registers a handler only when the environment asks for one,
so that importing it in the test process changes nothing:

* ``CALLBACK_LOAD_HANDLER``: ``record`` or ``wecom``; unset: register nothing.
* ``CALLBACK_LOAD_SLEEP``: seconds :func:`record_handled` sleeps on every call, after ending the
  dispatch transaction (the stand-in for re-reading state from WeCom).
* ``CALLBACK_LOAD_PAUSE``: seconds it pauses after adding its row (flushed, not committed) when the
  message's content contains :data:`PAUSE_MARKER`, so a test can SIGKILL the process inside the
  handler.
* ``CALLBACK_LOAD_TRACE``: a file to which each handler run appends ``enter <target> <pid>``
  (one ``O_APPEND`` write): when the handler was entered, committed or not.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from wecom_plugin.emulator.wxcrypto import WXCrypto, cdata

HANDLED_ACTION = "test.callback_handled"
HANDLER_ENV = "CALLBACK_LOAD_HANDLER"
SLEEP_ENV = "CALLBACK_LOAD_SLEEP"
PAUSE_ENV = "CALLBACK_LOAD_PAUSE"
TRACE_ENV = "CALLBACK_LOAD_TRACE"
PAUSE_MARKER = "[pause]"
AGENT_ID = 1000002
# tests/support/crash_wsgi.py: a request with this header kills its web worker at that point.
CRASH_HEADER = "X-Test-Crash"
CRASH_POINTS = ("before_commit", "before_response", "after_response")
REPO_ROOT = Path(__file__).resolve().parents[2]
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


# --- sending -------------------------------------------------------------------------------------
def text_message(msgid: str | int, *, corp: str, sender: str = "zhangsan", content: str = "你好") -> str:
    """The plaintext XML of a member's text message to the app (contract §7.5); ``MsgId`` is the dedupe key."""
    return (
        f"<xml><ToUserName>{cdata(corp)}</ToUserName><FromUserName>{cdata(sender)}</FromUserName>"
        f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{cdata(content)}</Content><MsgId>{msgid}</MsgId><AgentID>{AGENT_ID}</AgentID></xml>"
    )


@dataclass(frozen=True)
class SignedCallback:
    """One encrypted delivery: POST ``body`` to ``path?query``."""

    query: dict[str, str]
    body: bytes

    def url(self, base: str) -> str:
        return f"{base}?{urlencode(self.query)}"

    def path(self, path: str) -> str:
        return f"{path}?{urlencode(self.query)}"


class Sender:
    """Signs and encrypts callbacks for one receiver, as WeCom does."""

    def __init__(self, token: str, aes_key: str, corp_id: str, agent_id: int | None = AGENT_ID):
        self.crypto = WXCrypto(token, aes_key, corp_id)
        self.corp_id = corp_id
        self.agent_id = agent_id

    def sign(self, xml: str, *, timestamp: int | None = None, nonce: str | None = None) -> SignedCallback:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        body, query = self.crypto.envelope(xml, ts, nonce or secrets.token_hex(5), self.agent_id)
        return SignedCallback(query=query, body=body.encode())

    def text(self, msgid: str | int, **fields: Any) -> SignedCallback:
        return self.sign(text_message(msgid, corp=self.corp_id, **fields))


# --- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(args: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``args`` in the repository root in its own process group, output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, cwd=REPO_ROOT, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def start_worker(env: Mapping[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """``wecom-plugin worker`` (as ``python -m wecom_plugin worker``)."""
    return spawn([sys.executable, "-m", "wecom_plugin", "worker", *args], env, log_path)


def start_gunicorn(
    env: Mapping[str, str], log_path: Path, *, target: str = "wsgi:app", timeout: float = 30
) -> tuple[subprocess.Popen, str]:
    """gunicorn with the project's config on a free port; returns (master, ``http://127.0.0.1:PORT``)
    once ``/readyz`` answers 200. ``WEB_CONCURRENCY`` in ``env`` sets the worker count (default 2).

    On a shared machine another process may take the port between our probe and gunicorn's bind:
    then it is tried again on another port."""
    import requests

    for _attempt in range(3):
        port = free_port()
        proc = spawn([GUNICORN, target, "-c", "config/gunicorn.conf.py"], {**env, "PORT": str(port)}, log_path)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if "Connection in use" in log_path.read_text(errors="replace"):
                break
            try:
                response = requests.get(base + "/readyz", timeout=2)
                if response.status_code == 200 and proc.poll() is None:
                    return proc, base
            except requests.RequestException:
                pass
            time.sleep(0.1)
        stop(proc, timeout=5)
        text = log_path.read_text(errors="replace")
        if "Connection in use" not in text:
            raise RuntimeError(f"gunicorn did not become ready in {timeout}s (exit {proc.returncode}):\n{text}")
        log_path.write_text("")  # the next attempt's log starts clean
    raise RuntimeError("gunicorn could not bind a free port in 3 attempts")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Send ``sig`` to the process's group, then SIGKILL what is left after ``timeout``.

    SIGTERM: a worker finishes its job, gunicorn shuts down gracefully; SIGINT: gunicorn's quick
    shutdown (workers exit at once)."""
    return stop_all([(proc, sig)], timeout)[0]


def stop_all(processes: list[tuple[subprocess.Popen, int]], timeout: float = 20) -> list[int | None]:
    """:func:`stop` for several processes at once: every signal is sent first, then each is awaited."""
    for proc, sig in processes:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    codes = []
    for proc, _ in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in the group (an orphaned web worker)
        except (ProcessLookupError, PermissionError):
            pass
        codes.append(proc.wait(timeout=10))
    return codes


# --- handlers ------------------------------------------------------------------------------------
def handled_target(event: Any) -> str:
    return f"msgid:{event.msg_id}"


def _trace(target: str) -> None:
    path = os.environ.get(TRACE_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"enter {target} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def record_handled(session: Any, event: Any, row: Any) -> None:
    """Adds one audit row (the countable side effect) to the dispatch transaction."""
    from wecom_plugin.services import audit

    target = handled_target(event)
    sleep = float(os.environ.get(SLEEP_ENV) or 0)
    if sleep:
        # Stands in for re-reading state from WeCom: no transaction stays open across it.
        session.commit()
        time.sleep(sleep)
    audit.record(
        "callback-load",
        HANDLED_ACTION,
        target=target,
        detail={"pid": os.getpid(), "inbox_id": row.id},
        session=session,
    )
    session.flush()  # the row is written, but exists for others only if dispatch commits
    _trace(target)
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    if pause and PAUSE_MARKER in getattr(event, "content", ""):
        time.sleep(pause)


def call_wecom(session: Any, event: Any, row: Any) -> None:
    """Re-reads the sender from WeCom (``user/get``), as handlers must (callbacks are hints).

    The dispatch transaction is ended first: no transaction stays open across an external call.
    The read timeout is longer than the benchmark's injected 10 s latency, so the call succeeds.
    """
    from flask import current_app

    from wecom_plugin.services.wecom import client_for
    from wecom_plugin.wecom.api import user

    session.commit()
    with client_for(current_app, timeout=(3.05, 30.0)) as client:
        user.get(client, str(event.from_user))


HANDLERS = {"record": record_handled, "wecom": call_wecom}


def install(name: str) -> None:
    """Register handler ``name`` for :class:`TextMessage` in this process."""
    from wecom_plugin.services.callbacks import register_handler
    from wecom_plugin.wecom.events import TextMessage

    register_handler(TextMessage, HANDLERS[name])


if os.environ.get(HANDLER_ENV):  # a job module in a web or worker process started by a test or the bench
    install(os.environ[HANDLER_ENV])
