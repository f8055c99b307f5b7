"""The admin API of the sandbox tenant, under ``/_emulator/`` (JSON in, JSON out).

For tests, benchmarks and the demo: reset/seed, read state, mint OAuth codes, invalidate tokens,
move the manual clock, set flags, inject faults, read the request log, and change the directory.
Errors answer HTTP 400 ``{"error": "..."}``; unknown paths 404. There is no authentication: the
emulator binds to loopback and is never a production service. Full reference: docs/emulator.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from .clock import advance
from .state import AppChat, DirectoryError, Robot, Tenant, chat_record, user_record

if TYPE_CHECKING:
    from .framework import Endpoint


class AdminError(Exception):
    def __init__(self, message: str, status: int = 400, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra or {}


def _json(payload: Any, status: int = 200) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    return Response(body, status=status, content_type="application/json; charset=UTF-8")


Route = tuple[str, re.Pattern[str], Callable[..., Any]]
ROUTES: list[Route] = []


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, re.compile(f"^{pattern}$"), fn))
        return fn

    return register


def dispatch(tenant: Tenant, request: Request) -> Response:
    path = request.path[len("/_emulator") :].rstrip("/") or "/"
    allowed = []
    for method, pattern, fn in ROUTES:
        m = pattern.match(path)
        if not m:
            continue
        if method != request.method:
            allowed.append(method)
            continue
        try:
            body = _body(request)
            return _json(fn(tenant, body, request, *m.groups()))
        except AdminError as exc:
            return _json({"error": str(exc), **exc.extra}, status=exc.status)
        except (DirectoryError, ValueError, TypeError, KeyError) as exc:
            return _json({"error": str(exc)}, status=400)
    if allowed:
        return _json({"error": f"{request.method} not allowed; use {allowed}"}, status=405)
    return _json({"error": f"unknown admin path /_emulator{path}"}, status=404)


def _body(request: Request) -> dict[str, Any]:
    if request.method in ("GET", "DELETE"):
        return {}
    raw = request.get_data()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise AdminError(f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise AdminError("the JSON body must be an object")
    return body


def _need(body: dict[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise AdminError(f"missing {key!r}")
    if not isinstance(body[key], typ) or (typ is int and isinstance(body[key], bool)):
        raise AdminError(f"{key!r} has the wrong type")
    return body[key]


# --------------------------------------------------------------------------------------------------
# overview, reset, clock, flags
# --------------------------------------------------------------------------------------------------
@route("GET", "/")
def overview(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    from .framework import REGISTRY

    with t.lock:
        d = t.data
        return {
            "corp_id": d.corp_id,
            "corp_name": d.corp_name,
            "apps": [
                {
                    "agentid": a.agentid,
                    "name": a.name,
                    "secret": a.secret,
                    "created_after_2022": a.created_after_2022,
                    "visibility": {
                        "departments": sorted(a.visibility.departments),
                        "users": sorted(a.visibility.users),
                        "tags": sorted(a.visibility.tags),
                    },
                    "trusted_ips": a.trusted_ips,
                    "customer_contact": a.customer_contact,
                    "trusted_domain": a.trusted_domain,
                }
                for a in d.apps.values()
            ],
            "contact_sync": asdict(d.contact_sync) if d.contact_sync else None,
            "counts": {
                "departments": len(d.departments),
                "users": len(d.users),
                "tags": len(d.tags),
                "appchats": len(d.chats),
                "customer_groups": len(d.customer_groups),
                "messages": len(d.messages),
                "requests": t.request_log.last_seq,
            },
            "robots": [asdict(r) for r in d.robots.values()],
            "clock": {"now": t.now(), "manual": bool(getattr(t.clock, "manual", False))},
            "source": t.source if isinstance(t.source, str) else "<mapping>",
            "endpoints": sorted(_endpoint_view(e) for e in REGISTRY.values()),
        }


def _endpoint_view(e: Endpoint) -> str:
    return f"{e.method} /cgi-bin/{e.name}"


@route("POST", "/reset")
def reset(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    source = body.get("source")
    t.reset(source)
    return {"ok": True, "corp_id": t.data.corp_id, "users": len(t.data.users)}


@route("GET", "/clock")
def clock_get(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    return {"now": t.now(), "manual": bool(getattr(t.clock, "manual", False))}


@route("POST", "/clock/advance")
def clock_advance(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    seconds = _need(body, "seconds", (int, float))
    try:
        return {"now": advance(t.clock, seconds)}
    except TypeError as exc:
        raise AdminError(str(exc)) from None


@route("POST", "/clock/set")
def clock_set(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    now = _need(body, "now", (int, float))
    if not getattr(t.clock, "manual", False):
        raise AdminError("the tenant runs on a real clock")
    return {"now": t.clock.set(now)}  # type: ignore[attr-defined]


@route("GET", "/flags")
def flags_get(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    return {"flags": t.flags.as_dict(), "choices": t.flags.choices()}


@route("POST", "/flags")
def flags_set(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    applied = t.set_flags(body)
    return {"applied": applied, "flags": t.flags.as_dict()}


@route("POST", "/caller-ip")
def caller_ip(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    ip = body.get("ip")
    if ip is not None and not isinstance(ip, str):
        raise AdminError("'ip' must be a string or null")
    t.caller_ip_override = ip
    return {"ip": ip}


# --------------------------------------------------------------------------------------------------
# state views
# --------------------------------------------------------------------------------------------------
@route("GET", "/org")
def org(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        d = t.data
        return {
            "corp_id": d.corp_id,
            "departments": [
                {**asdict(dep), "department_leader": d.department_leaders(dep.id)}
                for dep in (d.departments[i] for i in d.subtree(1))
            ],
            "users": [user_record(u) for u in d.users.values()],
            "tags": [
                {
                    "tagid": tag.tagid,
                    "tagname": tag.tagname,
                    "users": [d.users[k].userid for k in tag.users if k in d.users],
                    "parties": list(tag.parties),
                }
                for tag in d.tags.values()
            ],
            "departed": [asdict(x) for x in d.departed.values()],
        }


@route("GET", "/users/([^/]+)")
def user_get(t: Tenant, _b: dict[str, Any], _r: Request, userid: str) -> dict[str, Any]:
    with t.lock:
        user = t.find_user(userid)
        if user is None:
            raise AdminError(f"no user {userid!r}", status=404)
        return {**user_record(user), "chats": list(t.data.user_chats.get(user.key, ()))}


@route("GET", "/chats")
def chats(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        return {"chats": [chat_record(c, t.data) for c in t.data.chats.values()]}


@route("POST", "/chats")
def chat_create(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """Seed a chat directly (e.g. one made by another app); no WeCom limits apply."""
    members = _need(body, "members", list)
    with t.lock:
        d = t.data
        resolved: dict[str, str] = {}
        for uid in members:
            user = t.find_user(str(uid))
            if user is None:
                raise AdminError(f"unknown member {uid!r}")
            resolved[user.key] = user.userid
        owner = str(body.get("owner") or next(iter(resolved.values()), "")).lower() or None
        if owner is not None and owner not in resolved:
            raise AdminError("the owner must be a member")
        chatid = body.get("chatid") or t.next_id("wr", 22)
        if chatid in d.chats:
            raise AdminError(f"chat {chatid!r} exists")
        creator = int(body.get("creator", next(iter(d.apps))))
        chat = AppChat(chatid, str(body.get("name", ""))[:50], owner, resolved, creator, t.now())
        d.chats[chatid] = chat
        for key in resolved:
            d.user_chats.setdefault(key, {})[chatid] = None
        return chat_record(chat, d)


@route("GET", "/chats/([^/]+)")
def chat_get(t: Tenant, _b: dict[str, Any], request: Request, chatid: str) -> dict[str, Any]:
    include_dropped = request.args.get("include_dropped", "1") != "0"
    with t.lock:
        chat = t.data.chats.get(chatid)
        if chat is None:
            raise AdminError(f"no chat {chatid!r}", status=404)
        msgs = [t.data.messages[m].view(include_dropped) for m in t.data.chat_messages.get(chatid, ())]
        return {**chat_record(chat, t.data), "messages": msgs}


@route("GET", "/messages")
def messages(t: Tenant, _b: dict[str, Any], request: Request) -> dict[str, Any]:
    include_dropped = request.args.get("include_dropped", "1") != "0"
    userid = request.args.get("userid")
    if userid:
        return {"messages": t.messages_for(userid, include_dropped)}
    chatid = request.args.get("chatid")
    path = request.args.get("path")
    with t.lock:
        if chatid:
            ids = list(t.data.chat_messages.get(chatid, ()))
        else:
            ids = list(t.data.messages)
        out = [t.data.messages[m].view(include_dropped) for m in ids]
    if path:
        out = [m for m in out if m["path"] == path]
    return {"messages": out}


@route("GET", "/customer-groups")
def customer_groups(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        now, delay = t.now(), t.flags.groupchat_transfer_delay
        return {
            "customer_groups": [
                {**asdict(g), "status": g.status(t.data, now, delay)} for g in t.data.customer_groups.values()
            ]
        }


@route("POST", "/customer-groups")
def customer_group_create(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    """A member creates a customer group in the client (change_external_chat / create)."""
    _need(body, "owner", str)
    return asdict(t.create_customer_group(body))


@route("POST", "/customer-groups/([^/]+)/members")
def customer_group_members(t: Tenant, body: dict[str, Any], _r: Request, chat_id: str) -> dict[str, Any]:
    """``{"add"?: [userid | member mapping], "remove"?: [userid], "join_scene"?: 0|3, "quit_scene"?: 0|1}``."""
    group = t.change_customer_group_members(
        chat_id,
        add=body.get("add", []),
        remove=body.get("remove", []),
        join_scene=int(body.get("join_scene", 0)),
        quit_scene=int(body.get("quit_scene", 0)),
    )
    return asdict(group)


@route("POST", "/customer-groups/([^/]+)")
def customer_group_update(t: Tenant, body: dict[str, Any], _r: Request, chat_id: str) -> dict[str, Any]:
    """``{"name"?, "notice"?, "owner"?}`` changed in the client (change_name / change_notice / change_owner)."""
    return asdict(t.update_customer_group(chat_id, body))


@route("DELETE", "/customer-groups/([^/]+)")
def customer_group_dismiss(t: Tenant, _b: dict[str, Any], _r: Request, chat_id: str) -> dict[str, Any]:
    t.dismiss_customer_group(chat_id)
    return {"dismissed": chat_id}


@route("GET", "/changes")
def changes(t: Tenant, _b: dict[str, Any], request: Request) -> dict[str, Any]:
    since = int(request.args.get("since", 0))
    with t.lock:
        return {
            "changes": [
                {"type": type(c).__name__, "event": c.event, "change_type": c.change_type, **asdict(c)}
                for c in t.changes
                if c.seq > since
            ]
        }


# --------------------------------------------------------------------------------------------------
# tokens, oauth, apps, robots
# --------------------------------------------------------------------------------------------------
@route("POST", "/tokens/invalidate")
def tokens_invalidate(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    errcode = body.get("errcode", 40014)
    if errcode not in (40014, 42001, 40001):
        raise AdminError("errcode must be 40014, 42001 or 40001")
    who = body.get("agentid")
    principal = None if who is None else ("contact_sync" if who == "contact_sync" else f"app:{int(who)}")
    return {"invalidated": t.invalidate_tokens(principal, errcode)}


@route("POST", "/oauth/code")
def oauth_code(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    from .state import OAuthCode

    userid, openid = body.get("userid"), body.get("openid")
    if bool(userid) == bool(openid):
        raise AdminError("give exactly one of 'userid' (member) or 'openid' (non-member)")
    scope = body.get("scope", "snsapi_base")
    if scope not in ("snsapi_base", "snsapi_privateinfo"):
        raise AdminError("scope must be snsapi_base or snsapi_privateinfo")
    with t.lock:
        if userid and t.find_user(userid) is None:
            raise AdminError(f"no user {userid!r}")
        code = t.next_id("", 64)
        t.data.oauth_codes[code] = OAuthCode(
            code=code,
            issued_at=t.now(),
            userid=userid,
            openid=openid,
            external_userid=body.get("external_userid"),
            agentid=body.get("agentid"),
            scope=scope,
            redirect_domain=body.get("redirect_domain"),
        )
    return {"code": code, "expires_in": t.flags.oauth_code_ttl}


@route("POST", "/apps/(\\d+)")
def app_update(t: Tenant, body: dict[str, Any], _r: Request, agentid: str) -> dict[str, Any]:
    with t.lock:
        app = t.data.apps.get(int(agentid))
        if app is None:
            raise AdminError(f"no app {agentid}", status=404)
        for key in body:
            if key not in (
                "trusted_ips",
                "created_after_2022",
                "visibility",
                "customer_contact",
                "trusted_domain",
                "secret",
            ):
                raise AdminError(f"unknown app field {key!r}")
        if "trusted_ips" in body:
            app.trusted_ips = [str(x) for x in _need(body, "trusted_ips", list)]
        if "created_after_2022" in body:
            app.created_after_2022 = bool(body["created_after_2022"])
        if "customer_contact" in body:
            app.customer_contact = bool(body["customer_contact"])
        if "trusted_domain" in body:
            app.trusted_domain = str(body["trusted_domain"])
        if "secret" in body:
            app.secret = _need(body, "secret", str)
        if "visibility" in body:
            vis = _need(body, "visibility", dict)
            app.visibility.departments = {int(x) for x in vis.get("departments", [])}
            app.visibility.users = {str(x).lower() for x in vis.get("users", [])}
            app.visibility.tags = {int(x) for x in vis.get("tags", [])}
        t.data.version += 1
        return {"agentid": app.agentid, "updated": sorted(body)}


@route("POST", "/contact-sync")
def contact_sync_update(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        cs = t.data.contact_sync
        if cs is None:
            raise AdminError("this tenant has no contact-sync secret", status=404)
        for key in body:
            if key not in ("trusted_ips", "old_ips", "enforce_trusted_ip"):
                raise AdminError(f"unknown contact-sync field {key!r}")
        if "trusted_ips" in body:
            cs.trusted_ips = [str(x) for x in _need(body, "trusted_ips", list)]
        if "old_ips" in body:
            cs.old_ips = [str(x) for x in _need(body, "old_ips", list)]
        if "enforce_trusted_ip" in body:
            cs.enforce_trusted_ip = bool(body["enforce_trusted_ip"])
        return asdict(cs)


@route("POST", "/robots")
def robot_create(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    chatid = _need(body, "chatid", str)
    with t.lock:
        if chatid not in t.data.chats:
            raise AdminError(f"no chat {chatid!r}")
        key = body.get("key") or "-".join(t.next_id("", n).lower() for n in (8, 4, 4, 4, 12))
        t.data.robots[key] = Robot(key, chatid, str(body.get("name", "机器人")))
        return {"key": key, "chatid": chatid}


@route("DELETE", "/robots/([^/]+)")
def robot_delete(t: Tenant, _b: dict[str, Any], _r: Request, key: str) -> dict[str, Any]:
    with t.lock:
        if t.data.robots.pop(key, None) is None:
            raise AdminError(f"no robot {key!r}", status=404)
    return {"deleted": key}


# --------------------------------------------------------------------------------------------------
# faults and the request log
# --------------------------------------------------------------------------------------------------
@route("GET", "/faults")
def faults_list(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        return {"faults": [f.view() for f in t.faults.values()]}


@route("POST", "/faults")
def fault_add(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return t.add_fault(body).view()


@route("DELETE", "/faults")
def faults_clear(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    with t.lock:
        n = len(t.faults)
        t.faults.clear()
    t.release_sleepers()
    return {"cleared": n}


@route("DELETE", "/faults/(\\d+)")
def fault_delete(t: Tenant, _b: dict[str, Any], _r: Request, fault_id: str) -> dict[str, Any]:
    with t.lock:
        if t.faults.pop(int(fault_id), None) is None:
            raise AdminError(f"no fault {fault_id}", status=404)
    return {"deleted": int(fault_id)}


@route("POST", "/faults/release")
def faults_release(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    t.release_sleepers()
    return {"released": True}


@route("GET", "/requests")
def requests_list(t: Tenant, _b: dict[str, Any], request: Request) -> dict[str, Any]:
    args = request.args

    def num(name: str) -> int | None:
        v = args.get(name)
        if v in (None, ""):
            return None
        try:
            return int(v)
        except ValueError:
            raise AdminError(f"{name} must be an integer") from None

    entries = t.request_log.find(
        endpoint=args.get("endpoint") or None,
        chatid=args.get("chatid") or None,
        errcode=num("errcode"),
        since=num("since"),
        principal=args.get("principal") or None,
        limit=num("limit"),
    )
    return {"count": len(entries), "requests": entries, "last_seq": t.request_log.last_seq}


@route("DELETE", "/requests")
def requests_clear(t: Tenant, _b: dict[str, Any], _r: Request) -> dict[str, Any]:
    t.request_log.clear()
    return {"cleared": True}


# --------------------------------------------------------------------------------------------------
# directory changes
# --------------------------------------------------------------------------------------------------
@route("POST", "/directory/hire")
def hire(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return user_record(t.hire(body))


@route("POST", "/directory/depart")
def depart(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return asdict(t.depart(_need(body, "userid", str)))


@route("POST", "/directory/disable")
def disable(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return user_record(t.update_user(_need(body, "userid", str), {"status": 2}))


@route("POST", "/directory/enable")
def enable(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return user_record(t.update_user(_need(body, "userid", str), {"status": 1}))


@route("POST", "/directory/move")
def move(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    changes = {k: body[k] for k in ("department", "order", "is_leader_in_dept", "main_department") if k in body}
    _need(body, "department", list)
    return user_record(t.update_user(_need(body, "userid", str), changes))


@route("POST", "/directory/rename")
def rename(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return user_record(t.update_user(_need(body, "userid", str), {"new_userid": _need(body, "new_userid", str)}))


@route("POST", "/directory/update")
def update(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    changes = {k: v for k, v in body.items() if k != "userid"}
    return user_record(t.update_user(_need(body, "userid", str), changes))


@route("POST", "/directory/tag")
def tag(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    result = t.change_tag(
        _need(body, "tagid", int),
        add_users=body.get("add_users", []),
        del_users=body.get("del_users", []),
        add_parties=body.get("add_parties", []),
        del_parties=body.get("del_parties", []),
        tagname=body.get("tagname"),
    )
    return {"tagid": result.tagid, "tagname": result.tagname, "users": list(result.users), "parties": result.parties}


@route("POST", "/directory/department")
def department_create(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    return asdict(t.create_department(body))


@route("POST", "/directory/department/update")
def department_update(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    dep_id = _need(body, "id", int)
    return asdict(t.update_department(dep_id, {k: v for k, v in body.items() if k != "id"}))


@route("POST", "/directory/department/delete")
def department_delete(t: Tenant, body: dict[str, Any], _r: Request) -> dict[str, Any]:
    t.delete_department(_need(body, "id", int))
    return {"deleted": body["id"]}
