"""The pieces every emulated endpoint shares: the registry, the request context, typed field access.

WeCom parses request JSON leniently: when the body is not valid JSON, or a field has the wrong type,
it carries on with what it could read and prefixes (error) or suffixes (success) ``errmsg`` with
``"Warning: wrong json format."`` (observed: ``"ok. Warning: wrong json format. "`` with errcode 0,
``"Warning: wrong json format. invalid party list, hint: ..."`` with errcode 40066). The context does
the same: an unreadable body becomes ``{}`` and a mistyped field reads as absent, both setting
:attr:`Ctx.warn`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .codes import ApiError

if TYPE_CHECKING:
    from werkzeug.wrappers import Request

    from .state import App, ContactSync, CorpData, Flags, Tenant

APP = frozenset({"app"})
APP_OR_SYNC = frozenset({"app", "contact_sync"})

Handler = Callable[["Ctx"], dict[str, Any]]


@dataclass
class Endpoint:
    """How one ``/cgi-bin/<name>`` endpoint is called and checked.

    Attributes:
        auth: ``"token"`` (access_token + trusted IP), ``"none"`` (gettoken) or ``"key"`` (robot webhook).
        principals: which secrets may call it (others: 48002).
        list_fields: success-shape list fields echoed empty in error bodies (e.g. ``{"userlist": []}``).
        body: ``"json"``, ``"multipart"`` or None.
        contact_sync_detail: a detail read the contact-sync secret may not make from a new IP (48009).
        customer_contact: needs an app configured in 客户联系 → 可调用接口的应用 (48002).
        root_scope: needs an app whose visibility is the root department (60011).
        basic_limit: counts toward the per-corp per-API 10,000/min and 150,000/h limits.
    """

    name: str
    method: str
    handler: Handler
    auth: str = "token"
    principals: frozenset[str] = APP_OR_SYNC
    list_fields: dict[str, Any] = field(default_factory=dict)
    body: str | None = None
    contact_sync_detail: bool = False
    customer_contact: bool = False
    root_scope: bool = False
    basic_limit: bool = True


REGISTRY: dict[str, Endpoint] = {}


def endpoint(name: str, method: str, **options: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for ``/cgi-bin/<name>``."""

    def register(handler: Handler) -> Handler:
        if name in REGISTRY:
            raise RuntimeError(f"endpoint {name} registered twice")
        body = options.pop("body", "json" if method == "POST" else None)
        REGISTRY[name] = Endpoint(name=name, method=method, handler=handler, body=body, **options)
        return handler

    return register


_MISSING = object()


class Ctx:
    """One API request as the handlers see it."""

    def __init__(self, tenant: Tenant, request: Request, name: str, spec: Endpoint | None, ip: str) -> None:
        self.tenant = tenant
        self.request = request
        self.name = name
        self.spec = spec
        self.ip = ip
        self.args: dict[str, str] = {k: v for k, v in request.args.items()}
        self.body: dict[str, Any] = {}
        self.raw_body: bytes = b""
        self.files: dict[str, tuple[str, str, bytes]] = {}
        self.warn = False
        self.principal: App | ContactSync | None = None
        self.now = 0.0

    # ---- convenience ---------------------------------------------------------------------------
    @property
    def data(self) -> CorpData:
        return self.tenant.data

    @property
    def flags(self) -> Flags:
        return self.tenant.flags

    @property
    def app(self) -> App:
        assert self.principal is not None and self.principal.kind == "app"
        return self.principal  # type: ignore[return-value]

    # ---- parsing (outside the tenant lock) -----------------------------------------------------
    def parse(self, max_file: int) -> None:
        if self.spec is None or self.spec.body is None:
            return
        if self.spec.body == "multipart":
            for part_name, storage in self.request.files.items():
                try:
                    content = storage.stream.read(max_file + 1)
                finally:
                    storage.close()
                self.files[part_name] = (storage.filename or "", storage.mimetype or "", content)
            return
        self.raw_body = self.request.get_data(cache=True)
        try:
            parsed = json.loads(self.raw_body.decode("utf-8")) if self.raw_body else _MISSING
        except (ValueError, UnicodeDecodeError):
            parsed = _MISSING
        if isinstance(parsed, dict):
            self.body = parsed
        else:
            self.warn = True
            self.body = {}

    def chatids(self) -> tuple[str, ...]:
        """Chat ids this request is about (for the request log filter and chat-scoped faults)."""
        out: list[str] = []
        for source in (self.args, self.body):
            for key in ("chatid", "chat_id"):
                v = source.get(key)
                if isinstance(v, str) and v:
                    out.append(v)
        ids = self.body.get("chat_id_list")
        if isinstance(ids, list):
            out.extend(x for x in ids if isinstance(x, str))
        key = self.args.get("key")
        if key and self.name.startswith("webhook/"):
            robot = self.tenant.data.robots.get(key)
            if robot:
                out.append(robot.chatid)
        return tuple(out)

    # ---- typed field access --------------------------------------------------------------------
    def arg(self, name: str) -> str | None:
        v = self.args.get(name)
        return v if v not in (None, "") else None

    def arg_int(self, name: str, errcode: int = 40058) -> int | None:
        v = self.arg(name)
        if v is None:
            return None
        try:
            return int(v)
        except ValueError:
            raise ApiError(errcode, f"invalid {name}") from None

    def get(self, name: str, kind: type, default: Any = None, source: dict[str, Any] | None = None) -> Any:
        """Field ``name`` of ``source`` (default: the body) if it has type ``kind``.

        Numbers are accepted for strings and numeric strings for ints (WeCom accepts ``"safe":"0"``).
        Anything else of the wrong type reads as absent and sets the wrong-json-format warning.
        """
        src = self.body if source is None else source
        v = src.get(name, _MISSING) if isinstance(src, dict) else _MISSING
        if v is _MISSING or v is None:
            return default
        if kind is str:
            if isinstance(v, str):
                return v
            if isinstance(v, int | float) and not isinstance(v, bool):
                return str(v)
        elif kind is int:
            if isinstance(v, bool):
                return int(v)
            if isinstance(v, int):
                return v
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                return int(v.strip())
        elif kind is list:
            if isinstance(v, list):
                return v
        elif kind is dict:
            if isinstance(v, dict):
                return v
        self.warn = True
        return default


def truncate_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))
