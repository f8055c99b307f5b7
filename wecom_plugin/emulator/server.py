"""The sandbox tenant as a WSGI app: ``create_emulator_app(tenant)``.

``/cgi-bin/<endpoint>`` follows the contract (/work/shared/wecom-api.md): HTTP 200 for business
errors, ``errmsg`` with the ``, hint: [...], from ip: ..., more info at ...`` suffix, success-shape list
fields echoed empty in error bodies, the wrong-JSON warning, and errcode 99999 for anything the
emulator does not implement. ``/_emulator/...`` is the admin API (see :mod:`.admin`).

Checks on token-authenticated endpoints run in the order of §12.2: token (41001/40014/42001) →
trusted IP for post-2022 apps and the contact-sync secret (60020) → per-API frequency (45009) →
permissions (48002/48009/60011) → the endpoint's own validation. Injected faults are looked at first.

The caller IP is the TCP peer (``REMOTE_ADDR``) unless an admin override is set.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import orjson
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response

from . import admin, api_chat, api_directory, api_external, api_message, callbacks, ui  # noqa: F401  (registers)
from .codes import NOT_IMPLEMENTED, WRONG_JSON_WARNING, ApiError, more_info_url
from .framework import REGISTRY, Ctx
from .state import Fault, Tenant

JSON_TYPE = "application/json; charset=UTF-8"
MAX_JSON_BODY = 16 * 1024 * 1024
DIRECTORY_LISTS = {
    "department/list": "department",
    "department/simplelist": "department_id",
    "user/simplelist": "userlist",
    "user/list": "userlist",
    "user/list_id": "dept_user",
    "tag/get": "userlist",
    "tag/list": "taglist",
}


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # orjson: the same compact UTF-8 text as json.dumps(ensure_ascii=False), several times cheaper
    # (a 100,000-member sync is 2,000 user/list answers; the sandbox should not be its bottleneck).
    try:
        body: bytes | str = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # what orjson refuses (an int beyond 64 bits...): the standard encoder
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status=status, content_type=JSON_TYPE, headers=headers)


class EmulatorApp:
    """WSGI callable serving the API and the admin endpoints for one :class:`Tenant`."""

    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant
        callbacks.hub_for(tenant)  # change_contact & co. reach the configured receivers

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        request.max_content_length = 64 * 1024 * 1024
        path = request.path
        try:
            if path.startswith("/cgi-bin/"):
                response = self.api(request)
            elif path == "/_emulator/ui" or path.startswith("/_emulator/ui/"):
                response = ui.dispatch(self.tenant, request)
            elif path == "/_emulator" or path.startswith("/_emulator/"):
                response = admin.dispatch(self.tenant, request)
            else:
                response = json_response({"error": f"not found: {path}; the API is under /cgi-bin/"}, status=404)
        finally:
            request.close()
        return response(environ, start_response)

    # ---- the API pipeline ----------------------------------------------------------------------
    def api(self, request: Request) -> Response:
        t = self.tenant
        started = time.perf_counter()
        name = request.path[len("/cgi-bin/") :].strip("/")
        spec = REGISTRY.get(name)
        ip = t.caller_ip_override or request.remote_addr or "0.0.0.0"  # noqa: S104 - a label, not a bind
        ctx = Ctx(t, request, name, spec, ip)
        applied: list[Fault] = []
        payload: dict[str, Any]
        counted = False
        try:
            if spec is None:
                raise ApiError(NOT_IMPLEMENTED, f"sandbox tenant: /cgi-bin/{name} is not implemented")
            if request.method != spec.method:
                raise ApiError(NOT_IMPLEMENTED, f"sandbox tenant: /cgi-bin/{name} takes {spec.method}")
            if spec.body == "json" and (request.content_length or 0) > MAX_JSON_BODY:
                raise ApiError(45002, "request body too large")
            try:
                ctx.parse(api_chat.MAX_UPLOAD)
            except (ValueError, HTTPException):
                raise ApiError(44001, "unreadable request body") from None
            if t.flags.max_concurrency is not None:
                with t.lock:
                    t.inflight += 1
                    counted = True
                    if t.inflight > t.flags.max_concurrency:
                        raise ApiError(45033)
            applied = t.matching_faults(name, ctx.chatids())
            broken = self.broken_transport(applied)
            if broken is not None:
                self.log(ctx, {"errcode": None, "http_status": broken.status_code}, applied, started)
                return broken
            payload = self.run(ctx, applied)
        except ApiError as exc:
            payload = self.error_body(ctx, exc)
        finally:
            if counted:
                with t.lock:
                    t.inflight -= 1
        headers = None
        errcode = payload.get("errcode", 0)
        if errcode and t.flags.error_headers:
            msg = str(payload.get("errmsg", "")).encode("ascii", "backslashreplace").decode("ascii")
            msg = msg.replace("\r", " ").replace("\n", " ")
            headers = {"Error-Code": str(errcode), "Error-Msg": msg}
        self.log(ctx, payload, applied, started)
        return json_response(payload, headers=headers)

    @staticmethod
    def broken_transport(faults: list[Fault]) -> Response | None:
        """What a failing proxy or load balancer in front of WeCom answers: not WeCom's JSON at all."""
        for fault in faults:
            if fault.action == "http_status":
                return Response("<html><body><h1>502 Bad Gateway</h1></body></html>", status=fault.status,
                                content_type="text/html")  # fmt: skip
            if fault.action == "bad_body":
                return Response("<html>service temporarily unavailable</html>", status=200, content_type="text/html")
        return None

    def run(self, ctx: Ctx, faults: list[Fault]) -> dict[str, Any]:
        t = self.tenant
        generation = t.generation
        latency = sum(f.seconds for f in faults if f.action == "latency")
        if latency:
            t.sleep(latency)
            if t.generation != generation:  # reset while asleep: do not act on the new corp
                raise ApiError(-1, "system busy")
        for fault in faults:
            if fault.action == "errcode":
                raise ApiError(int(fault.errcode or -1), fault.errmsg)
            if fault.action == "timeout":
                t.sleep(fault.seconds)
                raise ApiError(-1, "system busy")
        assert ctx.spec is not None
        with t.lock:
            ctx.now = t.now()
            if ctx.spec.auth == "token":
                self.authorize(ctx)
            result = ctx.spec.handler(ctx)
            payload = self.success_body(ctx, result)
            self.transform_directory(ctx, payload, faults)
        after = [f.seconds for f in faults if f.action == "timeout_after_apply"]
        if after:
            t.sleep(max(after))
        return payload

    def authorize(self, ctx: Ctx) -> None:
        t, d, f = ctx.tenant, ctx.data, ctx.flags
        spec = ctx.spec
        assert spec is not None
        value = ctx.arg("access_token")
        if value is None:
            raise ApiError(41001)
        token = d.tokens.get(value)
        if token is None:
            raise ApiError(40014)
        if token.invalidated_errcode is not None:
            raise ApiError(token.invalidated_errcode)
        if ctx.now >= token.expires_at:
            raise ApiError(f.expired_token_errcode)
        principal = t.principal(token.principal_id)
        if principal is None:
            raise ApiError(40014)
        ctx.principal = principal
        if principal.enforce_trusted_ip and not t.ip_allowed(ctx.ip, principal.trusted_ips):
            raise ApiError(60020)
        if spec.basic_limit and f.basic_limits:
            minute, hour = ("basic_min", spec.name), ("basic_hour", spec.name)
            if t.limiter.exceeded(minute, 60, f.basic_per_minute, ctx.now, block=f.block_after_limit) or (
                t.limiter.exceeded(hour, 3600, f.basic_per_hour, ctx.now, block=f.block_after_limit)
            ):
                raise ApiError(45009)
            t.limiter.add(minute, 60, ctx.now)
            t.limiter.add(hour, 3600, ctx.now)
        if principal.kind not in spec.principals:
            raise ApiError(48002)
        if (
            spec.contact_sync_detail
            and principal.kind == "contact_sync"
            and not t.ip_allowed(ctx.ip, principal.old_ips)  # type: ignore[union-attr]
        ):
            raise ApiError(48009)
        if spec.customer_contact and not getattr(principal, "customer_contact", False):
            raise ApiError(48002)
        if spec.root_scope and not t.has_root_scope(principal):
            raise ApiError(60011)

    # ---- bodies --------------------------------------------------------------------------------
    def success_body(self, ctx: Ctx, result: dict[str, Any]) -> dict[str, Any]:
        errmsg = result.pop("errmsg", "ok")
        if ctx.warn:
            errmsg = f"{errmsg}. {WRONG_JSON_WARNING}" if errmsg else WRONG_JSON_WARNING
        return {"errcode": 0, "errmsg": errmsg, **result}

    def error_body(self, ctx: Ctx, exc: ApiError) -> dict[str, Any]:
        t = self.tenant
        seq = t.request_log.last_seq + 1
        digest = hashlib.md5(f"{t.data.seed}:{seq}".encode(), usedforsecurity=False).hexdigest()
        hint = f"{int(t.now())}_{seq % 1000}_{digest}"
        text = (WRONG_JSON_WARNING if ctx.warn else "") + exc.detail
        errmsg = f"{text}, hint: [{hint}], from ip: {ctx.ip}, more info at {more_info_url(exc.code)}"
        body: dict[str, Any] = {"errcode": exc.code, "errmsg": errmsg}
        if ctx.spec is not None:
            for key, empty in ctx.spec.list_fields.items():
                body[key] = type(empty)()
        body.update(exc.extra)
        return body

    @staticmethod
    def transform_directory(ctx: Ctx, payload: dict[str, Any], faults: list[Fault]) -> None:
        field = DIRECTORY_LISTS.get(ctx.name)
        if field is None or payload.get("errcode") or field not in payload:
            return
        for fault in faults:
            rows = payload[field]
            if fault.action == "empty_directory":
                payload[field] = []
            elif fault.action == "truncated_directory":
                keep = fault.keep if fault.keep is not None else len(rows) // 2
                payload[field] = rows[:keep]

    # ---- request log ---------------------------------------------------------------------------
    def log(self, ctx: Ctx, payload: dict[str, Any], faults: list[Fault], started: float) -> None:
        query = dict(ctx.args)
        if "access_token" in query:
            query["access_token"] = query["access_token"][:8] + "..."
        if "corpsecret" in query:
            query["corpsecret"] = "***"
        if ctx.files:
            body: Any = {k: {"filename": v[0], "size": len(v[2])} for k, v in ctx.files.items()}
        elif ctx.body or not ctx.raw_body:
            body = ctx.body
        else:
            body = {"_raw": ctx.raw_body[:2000].decode("utf-8", "replace")}
        self.tenant.request_log.add(
            {
                "ts": self.tenant.now(),
                "method": ctx.request.method,
                "endpoint": ctx.name,
                "query": query,
                "body": body,
                "ip": ctx.ip,
                "chatids": ctx.chatids() + ((payload["chatid"],) if isinstance(payload.get("chatid"), str) else ()),
                "principal": ctx.principal.principal_id if ctx.principal is not None else None,
                "errcode": payload.get("errcode", 0),
                "errmsg": payload.get("errmsg", ""),
                "faults": [f.id for f in faults],
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
        )


def create_emulator_app(tenant: Tenant) -> EmulatorApp:
    """The WSGI app for ``tenant`` (API under ``/cgi-bin/``, admin under ``/_emulator/``)."""
    return EmulatorApp(tenant)
