"""Callback delivery: WeCom pushing events to the plugin's receivers (contract §7, §8, §14.3).

A :class:`CallbackHub` is attached to every served tenant (``hub_for(tenant)``). It

* keeps the **receivers**: the app's 接收消息 server (``app:<agentid>``: text messages, template-card
  clicks, enter_agent, and change_external_chat when the app is in 客户联系) and the contact-sync
  assistant's (``contact_sync``: every change_contact event), each with URL, Token, EncodingAESKey;
* verifies a receiver's URL like the console does (GET with ``msg_signature``/``timestamp``/``nonce``/
  ``echostr``; the exact plaintext must come back within ``callback_verify_timeout``, 1 s);
* listens to :meth:`Tenant.on_change`, renders each change as event XML (:mod:`.events`; minimised
  unless ``contact_callback_pre_2022``), encrypts and signs it (:mod:`.wxcrypto`) and queues it;
* sends from background worker threads, never in the request that made the change: POST with a
  ``callback_timeout`` (5 s), HTTP 200 = received, anything else or a timeout → up to
  ``callback_retries`` (3) re-sends of the same request, ``callback_retry_delay`` apart;
* applies run-time **faults** (drop a seeded share, duplicate, reorder by holding back, delay);
* logs every delivery and attempt (``GET /_emulator/callbacks/deliveries``) and decrypts passive
  replies (an ``update_button`` reply to a card click greys the clicker's buttons).

Admin endpoints are at the end of this module (``/_emulator/callbacks/...``); docs/emulator.md lists them.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any

import requests
from werkzeug.wrappers import Request

from . import events
from .admin import AdminError, _need, route
from .state import Change, ExternalChatChanged, Tenant, user_record
from .wxcrypto import WXCrypto, WXCryptoError, generate_aes_key, generate_token

log = logging.getLogger(__name__)

CONTACT_SYNC = "contact_sync"
TERMINAL = ("delivered", "failed", "dropped")
FAULT_ACTIONS = ("drop", "duplicate", "reorder", "delay")
RESPONSE_KEEP = 2000


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------
@dataclass
class Receiver:
    id: str  # "app:<agentid>" | "contact_sync"
    url: str
    token: str
    aes_key: str
    agentid: int | None
    verified: bool | None = None
    verification: dict[str, Any] | None = None

    def crypto(self, corp_id: str) -> WXCrypto:
        return WXCrypto(self.token, self.aes_key, corp_id)

    def view(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Attempt:
    n: int
    at: float  # wall clock
    status: int | None
    error: str | None
    duration_ms: float
    response: str = ""


@dataclass
class Delivery:
    id: int
    receiver: str
    url: str
    query: dict[str, str]
    body: bytes
    event: str
    change_type: str | None
    summary: str
    plaintext: str | None
    source: str
    created_at: float  # wall clock
    status: str = "queued"  # queued · delayed · held · sending · retrying · delivered · failed · dropped
    attempts: list[Attempt] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    copy_of: int | None = None
    reply: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    release_after: int | None = None  # reorder: later sends still to wait for
    crypto: WXCrypto | None = None

    def view(self, with_body: bool = True) -> dict[str, Any]:
        out = {
            "id": self.id,
            "receiver": self.receiver,
            "url": self.url,
            "event": self.event,
            "change_type": self.change_type,
            "summary": self.summary,
            "source": self.source,
            "status": self.status,
            "created_at": self.created_at,
            "attempts": [a.__dict__ for a in self.attempts],
            "faults": list(self.faults),
            "copy_of": self.copy_of,
            "plaintext": self.plaintext,
            "reply": self.reply,
            "query": dict(self.query),
        }
        if with_body:
            out["body"] = self.body.decode("utf-8", "replace")
        return out


@dataclass
class CallbackFault:
    id: int
    action: str
    receiver: str | None = None  # "app", "app:<agentid>", "contact_sync"; None = every receiver
    event: str | None = None  # "change_contact", "template_card_event", "text", ...
    change_type: str | None = None  # "update_user", ...
    probability: float = 1.0
    seed: int | None = None
    times: int | None = None
    copies: int = 2  # duplicate: total copies sent
    seconds: float = 0.0  # delay
    release_after: int = 1  # reorder: released after this many later deliveries were sent
    hits: int = 0
    rng: random.Random | None = None

    def matches(self, d: Delivery) -> bool:
        if self.receiver is not None:
            if self.receiver == "app":
                if not d.receiver.startswith("app:"):
                    return False
            elif self.receiver != d.receiver:
                return False
        if self.event is not None and self.event != d.event:
            return False
        return self.change_type is None or self.change_type == d.change_type

    def view(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rng"}


# --------------------------------------------------------------------------------------------------
# The hub
# --------------------------------------------------------------------------------------------------
class CallbackHub:
    """Receivers, the delivery queue and log, faults and the sender threads of one tenant."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        self.cond = threading.Condition()
        self.receivers: dict[str, Receiver] = {}
        self.defaults: list[Receiver] = []  # restored on reset (start-up configuration)
        self.app_agentid: int | None = None  # "app" = this agentid (default: 1000002 or the first app)
        self.credentials: dict[str, tuple[str, str]] = {}  # receiver id -> default (token, aes_key), from the CLI
        self.log: OrderedDict[int, Delivery] = OrderedDict()
        self.heap: list[tuple[float, int, int]] = []  # (due monotonic, order, delivery id)
        self.held: list[Delivery] = []
        self.faults: dict[int, CallbackFault] = {}
        self.inflight = 0
        self.epoch = 0  # bumped on reset and close: older workers and sends retire
        self.workers: list[tuple[int, threading.Thread]] = []
        self._seq = 0
        self._order = 0
        self._fault_seq = 0
        self.rng = random.Random(f"callbacks:{tenant.data.seed}")
        tenant.on_change(self._on_change)
        tenant.on_reset(self.reset)

    # ---- configuration -------------------------------------------------------------------------
    @property
    def corp_id(self) -> str:
        return self.tenant.data.corp_id

    def default_agentid(self) -> int:
        apps = self.tenant.data.apps
        if self.app_agentid is not None and self.app_agentid in apps:
            return self.app_agentid
        return 1000002 if 1000002 in apps else next(iter(apps))

    def receiver_id(self, name: str, agentid: int | None = None) -> str:
        """``"app"`` (default app), ``"app:<id>"`` or ``"contact_sync"`` → a receiver id."""
        if name == CONTACT_SYNC:
            return CONTACT_SYNC
        if name == "app":
            aid = agentid if agentid is not None else self.default_agentid()
            if aid not in self.tenant.data.apps:
                raise AdminError(f"no app {aid}")
            return f"app:{aid}"
        if name.startswith("app:") and name[4:].isdigit():
            if int(name[4:]) not in self.tenant.data.apps:
                raise AdminError(f"no app {name[4:]}")
            return name
        raise AdminError("receiver must be 'app', 'app:<agentid>' or 'contact_sync'")

    def configure(
        self,
        name: str,
        url: str,
        token: str | None = None,
        aes_key: str | None = None,
        agentid: int | None = None,
        verify: bool = True,
        require_verification: bool = True,
    ) -> tuple[Receiver, bool]:
        """Set a receiver (verifying its URL first, like the console). Returns (receiver, saved)."""
        rid = self.receiver_id(name, agentid)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise AdminError("url must be an http(s) URL")
        known_token, known_key = self.credentials.get(rid, (None, None))
        token = token or known_token or generate_token(self.rng)
        aes_key = aes_key or known_key or generate_aes_key(self.rng.randbytes(32))
        if not (1 <= len(token) <= 32 and token.isascii() and token.isalnum()):
            raise AdminError("token: 1-32 letters or digits")
        try:
            WXCrypto(token, aes_key, self.corp_id)
        except WXCryptoError as exc:
            raise AdminError(f"aes_key: {exc}") from None
        aid = int(rid[4:]) if rid.startswith("app:") else None
        receiver = Receiver(rid, url, token, aes_key, aid)
        if verify:
            outcome = self.verify(receiver)
            receiver.verified, receiver.verification = outcome["ok"], outcome
            if not outcome["ok"] and require_verification:
                return receiver, False
        with self.cond:
            self.receivers[rid] = receiver
        return receiver, True

    def remove(self, rid: str) -> bool:
        with self.cond:
            return self.receivers.pop(rid, None) is not None

    def set_defaults(self) -> None:
        """The current receivers become the start-up configuration a reset restores."""
        with self.cond:
            self.defaults = [Receiver(**r.view()) for r in self.receivers.values()]

    def verify(self, receiver: Receiver) -> dict[str, Any]:
        """URL verification (§7.1): GET with an encrypted ``echostr``; the plaintext must come back as is."""
        crypto = receiver.crypto(self.corp_id)
        plaintext = str(self.rng.randrange(10**18, 10**19))
        query = crypto.echostr(plaintext, self._timestamp(), self._nonce())
        limit = self.tenant.flags.callback_verify_timeout
        started = time.monotonic()
        outcome: dict[str, Any] = {"ok": False, "url": receiver.url, "status": None, "body": None, "error": None}
        try:
            resp = requests.get(receiver.url, params=query, timeout=limit or None, allow_redirects=False)
            elapsed = time.monotonic() - started
            outcome["status"] = resp.status_code
            outcome["body"] = resp.content[:200].decode("utf-8", "replace")
            if resp.status_code != 200:
                outcome["error"] = f"HTTP {resp.status_code} (WeCom: 40057 callback URL verification failed)"
            elif resp.content != plaintext.encode():
                outcome["error"] = "the body is not exactly the decrypted echostr (no quotes, BOM or newline; 40057)"
            elif limit and elapsed > limit:
                outcome["error"] = f"answered after {elapsed:.3f} s; the limit is {limit} s (40057)"
            else:
                outcome["ok"] = True
        except requests.Timeout:
            outcome["error"] = f"no answer within {limit} s (40057)"
        except requests.RequestException as exc:
            outcome["error"] = f"{short_error(exc)} (40057)"
        outcome["duration_ms"] = round((time.monotonic() - started) * 1000, 3)
        return outcome

    # ---- reset / close -------------------------------------------------------------------------
    def reset(self) -> None:
        """Tenant reset: forget deliveries, faults and queue; receivers back to the start-up ones."""
        with self.cond:
            self.epoch += 1
            self.log.clear()
            self.heap.clear()
            self.held.clear()
            self.faults.clear()
            self.inflight = 0
            self._seq = 0
            self._fault_seq = 0
            self.rng = random.Random(f"callbacks:{self.tenant.data.seed}")
            self.receivers = {r.id: Receiver(**r.view()) for r in self.defaults}
            self.workers = []
            self.cond.notify_all()

    def close(self) -> None:
        """Stop the sender threads (they restart on the next delivery)."""
        with self.cond:
            self.epoch += 1
            workers, self.workers = self.workers, []
            self.inflight = 0
            self.cond.notify_all()
        for _epoch, thread in workers:
            thread.join(0.5)

    # ---- building deliveries -------------------------------------------------------------------
    def _timestamp(self, tenant_time: float | None = None) -> str:
        if self.tenant.flags.callback_timestamp == "wall":
            return str(int(time.time()))
        return str(int(self.tenant.now() if tenant_time is None else tenant_time))

    def _nonce(self) -> str:
        return str(self.rng.randrange(10**8, 10**10))

    def _random16(self) -> bytes:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(16)).encode()

    def _on_change(self, change: Change) -> None:
        flags = self.tenant.flags
        create_time = int(self._timestamp(change.at))
        if isinstance(change, ExternalChatChanged):
            xml = events.external_chat_xml(change, self.corp_id, create_time)
            targets: list[str] = []
            if flags.external_chat_receiver in ("app", "both"):
                targets += [
                    rid
                    for rid, r in list(self.receivers.items())
                    if r.agentid is not None and getattr(self.tenant.data.apps.get(r.agentid), "customer_contact", 0)
                ]
            if flags.external_chat_receiver in ("contact_sync", "both"):
                targets.append(CONTACT_SYNC)
            for rid in targets:
                self.enqueue(rid, xml, change.event, change.change_type, _summary(change), f"change:{change.seq}")
            return
        if CONTACT_SYNC not in self.receivers:
            return
        current_user = current_department = None
        if flags.callback_update_fields == "all":
            with self.tenant.lock:
                uid = getattr(change, "new_userid", None) or getattr(change, "userid", None)
                user = self.tenant.find_user(uid) if uid else None
                current_user = user_record(user) if user else None
                dep = self.tenant.data.departments.get(getattr(change, "id", -1))
                current_department = {"name": dep.name, "parentid": dep.parentid} if dep else None
        xml = events.change_contact_xml(
            change,
            self.corp_id,
            create_time,
            full=flags.contact_callback_pre_2022,
            all_fields=flags.callback_update_fields == "all",
            current_user=current_user,
            current_department=current_department,
            minimal_update_user=flags.contact_callback_minimal_update_user,
        )
        if xml is not None:
            self.enqueue(CONTACT_SYNC, xml, change.event, change.change_type, _summary(change), f"change:{change.seq}")

    def enqueue(
        self,
        rid: str,
        plaintext: str | None,
        event: str,
        change_type: str | None,
        summary: str,
        source: str,
        *,
        raw_body: bytes | None = None,
        raw_query: dict[str, str] | None = None,
        agentid: int | str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Delivery | None:
        """Sign, encrypt and queue ``plaintext`` for receiver ``rid`` (None when it is not configured)."""
        with self.cond:
            receiver = self.receivers.get(rid)
        if receiver is None:
            return None
        crypto = receiver.crypto(self.corp_id)
        if raw_body is not None:
            body, query = raw_body, dict(raw_query or {})
        else:
            assert plaintext is not None
            envelope_agent = receiver.agentid if agentid is None else agentid
            text, query = crypto.envelope(plaintext, self._timestamp(), self._nonce(), envelope_agent, self._random16())
            body = text.encode("utf-8")
        with self.cond:
            self._seq += 1
            d = Delivery(self._seq, rid, receiver.url, query, body, event, change_type, summary, plaintext, source,
                         time.time(), meta=dict(meta or {}), crypto=crypto)  # fmt: skip
            self._log(d)
            copies = self._apply_faults(d)
            for item in copies:
                if item is not d:
                    self._log(item)
                if item.status in ("queued", "delayed"):
                    self._push(item, item.meta.pop("_due", time.monotonic()))
            self._ensure_workers()
            self.cond.notify_all()
        return d

    def _log(self, d: Delivery) -> None:
        self.log[d.id] = d
        limit = max(1, self.tenant.flags.callback_log_max)
        while len(self.log) > limit:
            oldest = next(iter(self.log.values()))
            if oldest.status not in TERMINAL:
                break
            self.log.popitem(last=False)

    def _apply_faults(self, d: Delivery) -> list[Delivery]:
        out = [d]
        for fault in list(self.faults.values()):
            if not fault.matches(d):
                continue
            assert fault.rng is not None
            if fault.probability < 1.0 and fault.rng.random() >= fault.probability:
                continue
            fault.hits += 1
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[fault.id]
            tag = f"{fault.action}#{fault.id}"
            if fault.action == "drop":
                for item in out:
                    item.status = "dropped"
                    item.faults.append(tag)
                return out
            if fault.action == "duplicate":
                extra = []
                for n in range(max(1, fault.copies) - 1):
                    self._seq += 1
                    copy = Delivery(self._seq, d.receiver, d.url, dict(d.query), d.body, d.event, d.change_type,
                                    d.summary, d.plaintext, d.source, time.time(), faults=[*d.faults, tag],
                                    copy_of=d.id, meta=dict(d.meta), crypto=d.crypto)  # fmt: skip
                    copy.meta["copy"] = n + 2
                    extra.append(copy)
                d.faults.append(tag)
                out.extend(extra)
            elif fault.action == "delay":
                for item in out:
                    item.status = "delayed"
                    item.meta["_due"] = time.monotonic() + fault.seconds
                    item.faults.append(tag)
            elif fault.action == "reorder":
                for item in out:
                    item.status = "held"
                    item.release_after = max(1, fault.release_after)
                    item.faults.append(tag)
                    self.held.append(item)
        return out

    def _push(self, d: Delivery, due: float) -> None:
        self._order += 1
        heapq.heappush(self.heap, (due, self._order, d.id))

    def release_held(self) -> int:
        with self.cond:
            held, self.held = self.held, []
            for d in held:
                d.status = "queued"
                d.release_after = None
                self._push(d, time.monotonic())
            self._ensure_workers()
            self.cond.notify_all()
            return len(held)

    # ---- sending -------------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        wanted = max(1, self.tenant.flags.callback_workers)
        self.workers = [(e, t) for e, t in self.workers if t.is_alive() and e == self.epoch]
        while len(self.workers) < wanted:
            n = len(self.workers)
            thread = threading.Thread(
                target=self._worker, args=(self.epoch, n), name=f"wecom-emulator-callbacks-{n}", daemon=True
            )
            self.workers.append((self.epoch, thread))
            thread.start()

    def _worker(self, epoch: int, index: int) -> None:
        while True:
            with self.cond:
                while True:
                    if self.epoch != epoch or index >= max(1, self.tenant.flags.callback_workers):
                        return
                    now = time.monotonic()
                    if self.heap and self.heap[0][0] <= now:
                        _due, _order, did = heapq.heappop(self.heap)
                        d = self.log.get(did)
                        if d is None:
                            continue
                        d.status = "sending"
                        self.inflight += 1
                        break
                    self.cond.wait(self.heap[0][0] - now if self.heap else 1.0)
            try:
                self._attempt(d, epoch)
            except Exception:  # a bug here must not kill the sender
                log.exception("callback delivery %s failed unexpectedly", d.id)
                with self.cond:
                    if self.epoch == epoch:
                        d.status = "failed"
                        self.inflight -= 1
                        self.cond.notify_all()

    def _attempt(self, d: Delivery, epoch: int) -> None:
        flags = self.tenant.flags
        timeout = flags.callback_timeout or None
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        text = ""
        try:
            resp = requests.post(
                d.url,
                params=d.query,
                data=d.body,
                headers={"Content-Type": "text/xml; charset=utf-8", "User-Agent": "wecom-sandbox-callback/1"},
                timeout=timeout,
                allow_redirects=False,
            )
            status = resp.status_code
            text = resp.content[:RESPONSE_KEEP].decode("utf-8", "replace")
        except requests.Timeout:
            error = f"timeout after {flags.callback_timeout} s"
        except requests.RequestException as exc:
            error = short_error(exc)
        attempt = Attempt(len(d.attempts) + 1, time.time(), status, error,
                          round((time.monotonic() - started) * 1000, 3), text)  # fmt: skip
        ok = status == 200
        if ok and text.strip():
            d.reply = self._open_reply(d, text)
        with self.cond:
            if self.epoch != epoch:
                return
            d.attempts.append(attempt)
            self.inflight -= 1
            if ok:
                d.status = "delivered"
            elif len(d.attempts) <= flags.callback_retries:
                d.status = "retrying"
                self._push(d, time.monotonic() + flags.callback_retry_delay)
            else:
                d.status = "failed"
            if len(d.attempts) == 1:
                self._count_for_held()
            self.cond.notify_all()

    def _count_for_held(self) -> None:
        for h in list(self.held):
            if h.release_after is None:
                continue
            h.release_after -= 1
            if h.release_after <= 0:
                self.held.remove(h)
                h.status = "queued"
                h.release_after = None
                self._push(h, time.monotonic())

    def _open_reply(self, d: Delivery, text: str) -> dict[str, Any]:
        """Decrypt a passive reply; an ``update_button`` reply to a card click greys the clicker's buttons."""
        if d.crypto is None:
            return {"error": "no crypto"}
        try:
            plaintext, _fields = d.crypto.open_reply(text)
        except WXCryptoError as exc:
            return {"error": str(exc), "raw": text[:200]}
        reply: dict[str, Any] = {"plaintext": plaintext}
        if d.event == "template_card_event" and "update_button" in plaintext:
            from defusedxml import ElementTree

            try:
                root = ElementTree.fromstring(plaintext)
                name = root.findtext("Button/ReplaceName") or ""
            except Exception:  # noqa: BLE001
                return {**reply, "error": "unparseable update_button reply"}
            msgid, userid = d.meta.get("msgid"), d.meta.get("userid")
            with self.tenant.lock:
                msg = self.tenant.data.messages.get(msgid) if msgid else None
                if msg is not None:
                    msg.updates.append(
                        {"ts": self.tenant.now(), "targets": [userid], "button": {"replace_name": name},
                         "template_card": None, "via": "passive_reply"}
                    )  # fmt: skip
            reply["applied"] = {"update_button": name, "userid": userid}
        return reply

    # ---- waiting and views ---------------------------------------------------------------------
    def pending(self) -> int:
        with self.cond:
            return len(self.heap) + self.inflight

    def drain(self, timeout: float = 10.0, release_held: bool = True) -> dict[str, Any]:
        """Wait until nothing is queued or in flight (held deliveries are released first by default)."""
        if release_held:
            self.release_held()
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.heap or self.inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.5))
            return {"idle": not self.heap and not self.inflight, "queued": len(self.heap),
                    "in_flight": self.inflight, "held": len(self.held)}  # fmt: skip

    def deliveries(self, **filters: Any) -> list[Delivery]:
        with self.cond:
            items = list(self.log.values())
        out = []
        for d in items:
            if filters.get("receiver") and not (
                d.receiver == filters["receiver"] or (filters["receiver"] == "app" and d.receiver.startswith("app:"))
            ):
                continue
            if filters.get("status") and d.status != filters["status"]:
                continue
            if filters.get("event") and d.event != filters["event"]:
                continue
            if filters.get("change_type") and d.change_type != filters["change_type"]:
                continue
            if filters.get("since") is not None and d.id <= filters["since"]:
                continue
            out.append(d)
        if filters.get("limit"):
            out = out[-int(filters["limit"]) :]
        return out

    def add_fault(self, spec: dict[str, Any]) -> CallbackFault:
        if spec.get("action") not in FAULT_ACTIONS:
            raise AdminError(f"callback fault action must be one of {list(FAULT_ACTIONS)}")
        allowed = {f.name for f in fields(CallbackFault)} - {"id", "hits", "rng"}
        unknown = set(spec) - allowed
        if unknown:
            raise AdminError(f"unknown callback fault fields: {sorted(unknown)}")
        if "receiver" in spec and spec["receiver"] is not None:
            receiver = spec["receiver"]
            if receiver not in ("app", CONTACT_SYNC) and not str(receiver).startswith("app:"):
                raise AdminError("receiver must be 'app', 'app:<agentid>' or 'contact_sync'")
        with self.cond:
            self._fault_seq += 1
            fault = CallbackFault(id=self._fault_seq, **spec)
            if not 0.0 <= float(fault.probability) <= 1.0:
                raise AdminError("probability must be between 0 and 1")
            seed = fault.seed if fault.seed is not None else self.tenant.data.seed
            fault.rng = random.Random(f"callback-fault:{seed}:{fault.id}")
            self.faults[fault.id] = fault
            return fault

    # ---- app events (admin) --------------------------------------------------------------------
    def _member(self, userid: str, agentid: int) -> Any:
        t = self.tenant
        user = t.find_user(userid)
        if user is None:
            raise AdminError(f"no member {userid!r}")
        app = t.data.apps.get(agentid)
        if app is None:
            raise AdminError(f"no app {agentid}")
        if not t.user_visible(app, user):
            raise AdminError(f"{user.userid} cannot see app {agentid} (outside its visible range)")
        if user.status != 1:
            raise AdminError(f"{user.userid} has status {user.status}: only active members use apps")
        return user

    def member_text(self, userid: str, content: str, agentid: int | None = None) -> dict[str, Any]:
        """A member sends a text message to the app (→ the app's receiver)."""
        aid = agentid or self.default_agentid()
        with self.tenant.lock:
            user = self._member(userid, aid)
            msgid = str(int(hashlib.sha256(self.tenant.next_id("msgid").encode()).hexdigest(), 16) % 10**19)
            now = self.tenant.now()
        xml = events.text_xml(self.corp_id, user.userid, int(self._timestamp(now)), content, msgid, aid)
        d = self.enqueue(f"app:{aid}", xml, "text", None, f"text from {user.userid}", "admin:text",
                         meta={"userid": user.userid})  # fmt: skip
        return {"msgid": msgid, "delivery": d.id if d else None, "receiver": f"app:{aid}" if d else None}

    def member_enters(self, userid: str, agentid: int | None = None) -> dict[str, Any]:
        aid = agentid or self.default_agentid()
        with self.tenant.lock:
            user = self._member(userid, aid)
            now = self.tenant.now()
        xml = events.enter_agent_xml(self.corp_id, user.userid, int(self._timestamp(now)), aid)
        d = self.enqueue(f"app:{aid}", xml, "enter_agent", None, f"{user.userid} opened the app", "admin:enter")
        return {"delivery": d.id if d else None}

    def card_click(
        self,
        userid: str,
        key: str,
        task_id: str | None = None,
        msgid: str | None = None,
        agentid: int | None = None,
        selected: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A member clicks button ``key`` on a template card (→ template_card_event, fresh response_code)."""
        from .api_message import mint_response_code

        t = self.tenant
        with t.lock:
            d = t.data
            if msgid is None:
                if not task_id:
                    raise AdminError("give 'task_id' or 'msgid'")
                aid = agentid or self.default_agentid()
                msgid = d.task_ids.get((aid, task_id))
                if msgid is None:
                    raise AdminError(f"no template card with task_id {task_id!r} from app {aid}")
            msg = d.messages.get(msgid)
            if msg is None or msg.msgtype != "template_card" or msg.agentid is None:
                raise AdminError(f"message {msgid!r} is not a template card sent with message/send")
            aid = msg.agentid
            user = t.find_user(userid)
            if user is None or msg.recipients.get(user.key, "absent") is not None:
                raise AdminError(f"{userid} did not receive this card")
            card, greyed = dict(msg.content), False
            for update in msg.updates:
                if user.userid in update.get("targets", ()):
                    if update.get("template_card"):
                        # §14.4: a replacement card carrying replace_text shows a greyed, unclickable button
                        card = dict(update["template_card"])
                        greyed = bool(str(card.get("replace_text") or "").strip())
                    if update.get("button"):
                        greyed = True
            if greyed:
                raise AdminError(f"the card's buttons were replaced for {user.userid}; nothing to click")
            event, card_type = "template_card_event", str(card.get("card_type", ""))
            keys = _card_keys(card)
            menu_keys = [a.get("key") for a in (card.get("action_menu") or {}).get("action_list", [])]
            if key in menu_keys:
                event = "template_card_menu_event"
            elif key not in keys:
                raise AdminError(f"no button with key {key!r} on this card (keys: {keys + menu_keys})")
            items = _selections(card, selected or {}) if event == "template_card_event" else []
            code = mint_response_code(t, aid, msg.msgid)
            now = t.now()
            the_task = msg.task_id or str(card.get("task_id", ""))
        xml = events.template_card_event_xml(
            self.corp_id, user.userid, int(self._timestamp(now)), event=event, event_key=key, task_id=the_task,
            card_type=card_type, response_code=code, agentid=aid, selected=items,
        )  # fmt: skip
        delivery = self.enqueue(f"app:{aid}", xml, event, None, f"{user.userid} clicked {key}", "admin:card-click",
                                meta={"msgid": msg.msgid, "userid": user.userid})  # fmt: skip
        return {"response_code": code, "msgid": msg.msgid, "event": event,
                "delivery": delivery.id if delivery else None}  # fmt: skip


def short_error(exc: BaseException) -> str:
    """``ConnectionError: Connection refused`` rather than urllib3's page-long repr."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return f"{type(exc).__name__}: {found.group(1) if found else text[:200]}"


def _card_keys(card: dict[str, Any]) -> list[str]:
    ctype = card.get("card_type")
    if ctype == "button_interaction":
        return [b.get("key") for b in card.get("button_list", []) if isinstance(b, dict) and b.get("type", 0) != 1]
    if ctype in ("vote_interaction", "multiple_interaction"):
        key = (card.get("submit_button") or {}).get("key")
        return [key] if key else []
    return []


def _selections(card: dict[str, Any], chosen: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """SelectedItems: one per question of the card, the member's choice or the card's default."""
    questions: list[tuple[dict[str, Any], bool]] = []
    if card.get("card_type") == "button_interaction" and card.get("button_selection"):
        questions.append((card["button_selection"], False))
    if card.get("card_type") == "vote_interaction" and card.get("checkbox"):
        questions.append((card["checkbox"], card["checkbox"].get("mode") == 1))
    if card.get("card_type") == "multiple_interaction":
        questions.extend((s, False) for s in card.get("select_list", []))
    out: list[tuple[str, list[str]]] = []
    known = {q.get("question_key") for q, _m in questions}
    for unknown in set(chosen) - known:
        raise AdminError(f"the card has no question {unknown!r}")
    for q, multi in questions:
        qkey = str(q.get("question_key"))
        options = [str(o.get("id")) for o in q.get("option_list", []) if isinstance(o, dict)]
        if qkey in chosen:
            value = chosen[qkey]
            picked = [str(x) for x in (value if isinstance(value, list) else [value])]
            bad = [p for p in picked if p not in options]
            if bad:
                raise AdminError(f"question {qkey!r} has no option {bad[0]!r} (options: {options})")
            if len(picked) > 1 and not multi:
                raise AdminError(f"question {qkey!r} takes one option")
        else:
            default = q.get("selected_id")
            checked = [
                str(o.get("id")) for o in q.get("option_list", []) if isinstance(o, dict) and o.get("is_checked")
            ]
            picked = [str(default)] if default else checked or options[:1]
        out.append((qkey, picked))
    return out


def _summary(change: Change) -> str:
    if isinstance(change, ExternalChatChanged):
        detail = f" {change.update_detail}" if change.update_detail else ""
        return f"{change.kind}{detail} {change.chat_id}"
    ident = getattr(change, "userid", None) or getattr(change, "tagid", None) or getattr(change, "id", "")
    new = getattr(change, "new_userid", None)
    return f"{change.change_type} {ident}" + (f" → {new}" if new else "")


_HUBS_LOCK = threading.Lock()


def hub_for(tenant: Tenant) -> CallbackHub:
    """The tenant's callback hub, created (and subscribed to its changes) on first use."""
    with _HUBS_LOCK:
        if tenant.callbacks is None:
            tenant.callbacks = CallbackHub(tenant)
        return tenant.callbacks


# --------------------------------------------------------------------------------------------------
# Admin endpoints: /_emulator/callbacks/...
# --------------------------------------------------------------------------------------------------
def _hub(t: Tenant) -> CallbackHub:
    return hub_for(t)


def _opt_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(f"{key!r} must be an integer")
    return value


@route("GET", "/callbacks/receivers")
def receivers_list(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        return {"receivers": [r.view() for r in hub.receivers.values()], "corp_id": t.data.corp_id}


@route("POST", "/callbacks/receivers")
def receiver_set(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    hub = _hub(t)
    receiver, saved = hub.configure(
        _need(body, "receiver", str),
        _need(body, "url", str),
        token=body.get("token"),
        aes_key=body.get("aes_key"),
        agentid=_opt_int(body, "agentid"),
        verify=bool(body.get("verify", True)),
        require_verification=bool(body.get("require_verification", True)),
    )
    if not saved:
        raise AdminError(
            f"URL verification failed, receiver not saved (WeCom: 40057): {receiver.verification['error']}",
            extra={"verification": receiver.verification},
        )
    return {"receiver": receiver.view(), "saved": True}


@route("DELETE", "/callbacks/receivers/([^/]+)")
def receiver_delete(t: Tenant, _b: dict[str, Any], _r: Request, rid: str) -> dict[str, Any]:
    hub = _hub(t)
    if not hub.remove(hub.receiver_id(rid)):
        raise AdminError(f"no receiver {rid!r}", status=404)
    return {"deleted": rid}


@route("POST", "/callbacks/receivers/([^/]+)/verify")
def receiver_verify(t: Tenant, _b: dict[str, Any], _r: Request, rid: str) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        receiver = hub.receivers.get(hub.receiver_id(rid))
    if receiver is None:
        raise AdminError(f"no receiver {rid!r}", status=404)
    outcome = hub.verify(receiver)
    receiver.verified, receiver.verification = outcome["ok"], outcome
    return {"verification": outcome}


@route("GET", "/callbacks/deliveries")
def deliveries(t: Tenant, _b: dict[str, Any], request: Request) -> dict[str, Any]:
    args = request.args
    try:
        since = int(args["since"]) if args.get("since") else None
        limit = int(args["limit"]) if args.get("limit") else None
    except ValueError:
        raise AdminError("since and limit must be integers") from None
    items = _hub(t).deliveries(
        receiver=args.get("receiver"),
        status=args.get("status"),
        event=args.get("event"),
        change_type=args.get("change_type"),
        since=since,
        limit=limit,
    )
    with_body = args.get("body", "1") != "0"
    return {"count": len(items), "deliveries": [d.view(with_body) for d in items]}


@route("GET", "/callbacks/deliveries/(\\d+)")
def delivery_get(t: Tenant, _b: dict[str, Any], _r: Request, did: str) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        d = hub.log.get(int(did))
    if d is None:
        raise AdminError(f"no delivery {did}", status=404)
    return d.view()


@route("POST", "/callbacks/drain")
def drain(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    timeout = body.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise AdminError("timeout must be a number of seconds")
    return _hub(t).drain(float(timeout), release_held=bool(body.get("release_held", True)))


@route("POST", "/callbacks/release")
def release(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    return {"released": _hub(t).release_held()}


@route("GET", "/callbacks/faults")
def cb_faults(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        return {"faults": [f.view() for f in hub.faults.values()]}


@route("POST", "/callbacks/faults")
def cb_fault_add(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return _hub(t).add_fault(body).view()


@route("DELETE", "/callbacks/faults")
def cb_faults_clear(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        n = len(hub.faults)
        hub.faults.clear()
    return {"cleared": n}


@route("DELETE", "/callbacks/faults/(\\d+)")
def cb_fault_delete(t: Tenant, _b: dict[str, Any], _r: Request, fid: str) -> dict[str, Any]:
    hub = _hub(t)
    with hub.cond:
        if hub.faults.pop(int(fid), None) is None:
            raise AdminError(f"no callback fault {fid}", status=404)
    return {"deleted": int(fid)}


@route("POST", "/callbacks/raw")
def raw(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """Send a hand-made callback: ``xml`` (encrypted and signed as usual) or ``body`` (+ ``params``) verbatim."""
    hub = _hub(t)
    rid = hub.receiver_id(_need(body, "receiver", str), _opt_int(body, "agentid"))
    if rid not in hub.receivers:
        raise AdminError(f"receiver {rid} is not configured")
    xml, verbatim = body.get("xml"), body.get("body")
    if (xml is None) == (verbatim is None):
        raise AdminError("give exactly one of 'xml' (encrypted for you) or 'body' (sent verbatim)")
    event = str(body.get("event", "raw"))
    if verbatim is not None:
        query = body.get("params") or {}
        if not isinstance(verbatim, str) or not isinstance(query, dict):
            raise AdminError("'body' must be a string and 'params' (the query string) an object")
        d = hub.enqueue(rid, None, event, None, "raw body", "admin:raw", raw_body=verbatim.encode("utf-8"),
                        raw_query={str(k): str(v) for k, v in query.items()})  # fmt: skip
    else:
        if not isinstance(xml, str):
            raise AdminError("'xml' must be a string")
        d = hub.enqueue(rid, xml, event, None, "raw xml", "admin:raw", agentid=body.get("envelope_agentid"))
    assert d is not None
    return {"delivery": d.id, "query": d.query, "body": d.body.decode("utf-8", "replace")}


@route("POST", "/callbacks/app/text")
def app_text(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """``{"userid", "content", "agentid"?}``: a member sends a text message to the app."""
    return _hub(t).member_text(_need(body, "userid", str), _need(body, "content", str), _opt_int(body, "agentid"))


@route("POST", "/callbacks/app/enter")
def app_enter(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """``{"userid", "agentid"?}``: a member opens the app (enter_agent)."""
    return _hub(t).member_enters(_need(body, "userid", str), _opt_int(body, "agentid"))


@route("POST", "/callbacks/app/card-click")
def app_card_click(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """``{"userid", "key", "task_id" | "msgid", "agentid"?, "selected"?: {question_key: option id(s)}}``."""
    selected = body.get("selected")
    if selected is not None and not isinstance(selected, dict):
        raise AdminError("'selected' must be an object {question_key: option id or [ids]}")
    return _hub(t).card_click(
        _need(body, "userid", str),
        _need(body, "key", str),
        task_id=body.get("task_id"),
        msgid=body.get("msgid"),
        agentid=_opt_int(body, "agentid"),
        selected=selected,
    )
