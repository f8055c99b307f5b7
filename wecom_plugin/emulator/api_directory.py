"""gettoken and the directory read APIs (contract §1, §2, §14.1).

Permission rules (§2.1): a self-built app reads only within its visibility; apps created after
2022-06-20 get no sensitive member fields; the contact-sync secret called from a new IP may not read
details (48009) and is the only secret allowed to call ``user/list_id``.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .codes import ApiError
from .framework import APP_OR_SYNC, Ctx, endpoint
from .state import USERID_RE, App, ContactSync, Department, User

# --------------------------------------------------------------------------------------------------
# gettoken
# --------------------------------------------------------------------------------------------------


@endpoint("gettoken", "GET", auth="none", basic_limit=False)
def gettoken(ctx: Ctx) -> dict[str, Any]:
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    limit = f.gettoken_failures_per_hour
    block_key = ("gettoken_failures", ctx.ip)
    if limit is not None and t.limiter.room(block_key, 3600, limit, ctx.now) <= 0:
        raise ApiError(45009)
    try:
        corpid = ctx.arg("corpid")
        secret = ctx.arg("corpsecret")
        if corpid is None:
            raise ApiError(41002)
        if secret is None:
            raise ApiError(41004)
        if corpid != d.corp_id:
            raise ApiError(40013)
        principal = t.principal_for_secret(secret)
        if principal is None:
            raise ApiError(40091 if secret in d.foreign_secrets else 40001)
    except ApiError:
        if limit is not None:
            t.limiter.add(block_key, 3600, ctx.now)
        raise
    token, _new = t.issue_token(principal)
    if f.gettoken_expires_in == "full":
        expires_in = f.token_ttl
    else:
        expires_in = max(1, int(token.expires_at - ctx.now))
    return {"access_token": token.value, "expires_in": expires_in}


# --------------------------------------------------------------------------------------------------
# departments
# --------------------------------------------------------------------------------------------------
def _visible_ids(ctx: Ctx, root: int | None) -> list[int]:
    d, p = ctx.data, ctx.principal
    assert p is not None
    vis = ctx.tenant.visible_departments(p)
    if root is None:
        return [x for x in d.subtree(1) if x in vis]
    if root not in d.departments:
        raise ApiError(60003)
    if root not in vis:
        raise ApiError(60011)
    return [x for x in d.subtree(root) if x in vis]


def _dept_view(ctx: Ctx, dep: Department) -> dict[str, Any]:
    out: dict[str, Any] = {"id": dep.id, "name": dep.name}
    if dep.name_en:
        out["name_en"] = dep.name_en
    out["department_leader"] = ctx.data.department_leaders(dep.id)
    out["parentid"] = dep.parentid
    out["order"] = dep.order
    return out


@endpoint("department/list", "GET", list_fields={"department": []}, contact_sync_detail=True)
def department_list(ctx: Ctx) -> dict[str, Any]:
    ids = _visible_ids(ctx, ctx.arg_int("id", 60003))
    deps = ctx.data.departments
    return {"department": [_dept_view(ctx, deps[i]) for i in ids]}


@endpoint("department/simplelist", "GET", list_fields={"department_id": []})
def department_simplelist(ctx: Ctx) -> dict[str, Any]:
    ids = _visible_ids(ctx, ctx.arg_int("id", 60003))
    deps = ctx.data.departments
    return {"department_id": [{"id": i, "parentid": deps[i].parentid, "order": deps[i].order} for i in ids]}


@endpoint("department/get", "GET", contact_sync_detail=True)
def department_get(ctx: Ctx) -> dict[str, Any]:
    dep_id = ctx.arg_int("id", 60003)
    if dep_id is None:
        raise ApiError(60003)
    _visible_ids(ctx, dep_id)
    return {"department": _dept_view(ctx, ctx.data.departments[dep_id])}


# --------------------------------------------------------------------------------------------------
# members
# --------------------------------------------------------------------------------------------------
def sensitive_mode(ctx: Ctx) -> str | None:
    """None (every field), or how the post-2022 rule hides sensitive fields: ``"absent"`` / ``"empty"``."""
    p = ctx.principal
    if isinstance(p, App) and p.created_after_2022:
        return ctx.flags.sensitive_fields
    return None


def user_view(ctx: Ctx, user: User, legacy_list: bool = False, mode: str | None | object = ...) -> dict[str, Any]:
    """``user/get`` shape, with the 2022 sensitive-field rule for new apps (§2.1/§2.4).

    The fields in :data:`SENSITIVE_FIELDS` are left out (``absent``) or blank (``empty``) for apps
    created after 2022; ``mode`` may be computed once per request with :func:`sensitive_mode`.
    """
    hide = sensitive_mode(ctx) if mode is ... else mode
    keep, blank = hide is None, hide == "empty"
    out: dict[str, Any] = {
        "userid": user.userid,
        "name": user.name,
        "department": list(user.departments),
        "order": list(user.order),
        "position": user.position,
    }
    if keep:
        out.update(mobile=user.mobile, gender=user.gender, email=user.email, biz_mail=user.biz_mail)
    elif blank:
        out.update(mobile="", gender="", email="", biz_mail="")
    out["is_leader_in_dept"] = list(user.is_leader_in_dept)
    out["direct_leader"] = list(user.direct_leader)
    if keep:
        avatar = user.avatar
        out["avatar"] = avatar
        out["thumb_avatar"] = (avatar[:-2] + "/100") if avatar.endswith("/0") else avatar
    elif blank:
        out.update(avatar="", thumb_avatar="")
    out["telephone"] = user.telephone
    out["alias"] = user.alias
    if keep or blank:
        out["address"] = user.address if keep else ""
    out["main_department"] = user.main_department
    out["extattr"] = {"attrs": [dict(a) for a in user.extattr]}
    out["status"] = user.status
    if keep:
        digest = hashlib.md5(user.key.encode(), usedforsecurity=False).hexdigest()[:16]
        out["qr_code"] = "https://open.work.weixin.qq.com/wwopen/userQRCode?vcode=vc" + digest
    elif blank:
        out["qr_code"] = ""
    out["external_position"] = user.external_position
    out["external_profile"] = {"external_corp_name": ctx.data.corp_name[:16], "external_attr": []}
    if legacy_list:
        out["enable"] = 0 if user.status == 2 else 1
    return out


@endpoint("user/get", "GET", contact_sync_detail=True)
def user_get(ctx: Ctx) -> dict[str, Any]:
    userid = ctx.arg("userid")
    if userid is None:
        raise ApiError(60111, "userid not found")
    if not USERID_RE.match(userid):
        raise ApiError(40003, f"invalid string value `{userid}`. invalid userid")
    user = ctx.tenant.find_user(userid)
    if user is None:
        raise ApiError(60111, f"invalid string value `{userid}`. userid not found")
    assert ctx.principal is not None
    if not ctx.tenant.user_visible(ctx.principal, user):
        raise ApiError(60011)
    return user_view(ctx, user)


def _members_of(ctx: Ctx) -> list[User]:
    d = ctx.data
    dep_id = ctx.arg_int("department_id", 60003)
    if dep_id is None:
        raise ApiError(60003)
    ids = _visible_ids(ctx, dep_id)
    if not (ctx.flags.simplelist_fetch_child and ctx.arg("fetch_child") == "1"):
        ids = [dep_id]
    seen: dict[str, None] = {}
    for dep in ids:
        for key in d.dept_members.get(dep, ()):
            seen[key] = None
    return [d.users[k] for k in seen]


@endpoint("user/simplelist", "GET", list_fields={"userlist": []}, contact_sync_detail=True)
def user_simplelist(ctx: Ctx) -> dict[str, Any]:
    return {
        "userlist": [{"userid": u.userid, "name": u.name, "department": list(u.departments)} for u in _members_of(ctx)]
    }


@endpoint("user/list", "GET", list_fields={"userlist": []}, contact_sync_detail=True)
def user_list(ctx: Ctx) -> dict[str, Any]:
    mode = sensitive_mode(ctx)
    return {"userlist": [user_view(ctx, u, legacy_list=True, mode=mode) for u in _members_of(ctx)]}


def _encode_cursor(seed: int, offset: int) -> str:
    return base64.urlsafe_b64encode(f"lid:{seed}:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(seed: int, cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, s, off = raw.split(":")
        if tag != "lid" or int(s) != seed or int(off) < 0:
            raise ValueError(cursor)
        return int(off)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(40058, "invalid cursor") from None


@endpoint("user/list_id", "POST", list_fields={"dept_user": []})
def user_list_id(ctx: Ctx) -> dict[str, Any]:
    if not isinstance(ctx.principal, ContactSync):
        raise ApiError(ctx.flags.list_id_app_errcode)
    d = ctx.data
    limit = ctx.get("limit", int, 10000)
    if not 1 <= limit <= 10000:
        raise ApiError(40058, "limit must be 1-10000")
    cursor = ctx.get("cursor", str)
    offset = _decode_cursor(d.seed, cursor) if cursor else 0
    cache = getattr(d, "_list_id_rows", None)
    if cache is None or cache[0] != d.version:
        rows = [(u.userid, dep) for u in d.users.values() for dep in u.departments]
        cache = (d.version, rows)
        object.__setattr__(d, "_list_id_rows", cache)
    rows = cache[1]
    page = rows[offset : offset + limit]
    nxt = _encode_cursor(d.seed, offset + limit) if offset + limit < len(rows) else ""
    return {"next_cursor": nxt, "dept_user": [{"userid": u, "department": dep} for u, dep in page]}


# --------------------------------------------------------------------------------------------------
# tags (§2.8, §14.1)
# --------------------------------------------------------------------------------------------------
@endpoint("tag/list", "GET", list_fields={"taglist": []}, principals=APP_OR_SYNC)
def tag_list(ctx: Ctx) -> dict[str, Any]:
    return {
        "taglist": [
            {"tagid": t.tagid, "tagname": t.tagname} for t in sorted(ctx.data.tags.values(), key=lambda t: t.tagid)
        ]
    }


@endpoint("tag/get", "GET", list_fields={"userlist": [], "partylist": []})
def tag_get(ctx: Ctx) -> dict[str, Any]:
    if ctx.arg("tagid") is None:
        raise ApiError(41017)
    tagid = ctx.arg_int("tagid", 40068)
    tag = ctx.data.tags.get(tagid)  # type: ignore[arg-type]
    if tag is None:
        raise ApiError(40068)
    assert ctx.principal is not None
    users = [ctx.data.users[k] for k in tag.users if k in ctx.data.users]
    visible = [u for u in users if ctx.tenant.user_visible(ctx.principal, u)]
    return {
        "tagname": tag.tagname,
        "userlist": [{"userid": u.userid, "name": u.name} for u in visible],
        "partylist": list(tag.parties),
    }
