"""Customer groups (§6) and OAuth user identity (§9.3).

Customer-group APIs need an app configured in 客户联系 → 可调用接口的应用 (48002 otherwise).
Transfers answer top-level errcode 0 and list per-chat failures in ``failed_chat_list``.
"""

from __future__ import annotations

import base64
from typing import Any

from .codes import ApiError
from .framework import APP, Ctx, endpoint
from .state import DAY, CustomerGroup

NINETY_DAYS = 90 * 86400


def group_status(ctx: Ctx, group: CustomerGroup) -> int:
    return group.status(ctx.data, ctx.now, ctx.flags.groupchat_transfer_delay)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"gc:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        tag, off = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(":")
        if tag != "gc" or int(off) < 0:
            raise ValueError(cursor)
        return int(off)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(40058, "invalid cursor") from None


@endpoint(
    "externalcontact/groupchat/list", "POST", principals=APP, customer_contact=True,
    list_fields={"group_chat_list": []},
)  # fmt: skip
def groupchat_list(ctx: Ctx) -> dict[str, Any]:
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    p = ctx.app
    status_filter = ctx.get("status_filter", int, 0)
    if status_filter not in (0, 1, 2, 3):
        raise ApiError(40058, "invalid status_filter")
    limit = ctx.get("limit", int)
    if limit is None or not 1 <= limit <= 1000:
        raise ApiError(40058, "limit must be 1-1000")
    owner_filter = ctx.get("owner_filter", dict)
    userids = ctx.get("userid_list", list, [], source=owner_filter) if owner_filter else []
    if len(userids) > 100:
        raise ApiError(40058, "owner_filter.userid_list exceed max length 100")
    owners: set[str] = set()
    include_resigned = False
    if userids:
        for uid in userids:
            key = str(uid).lower()
            user = d.users.get(key)
            if user is not None:
                if t.user_visible(p, user):
                    owners.add(key)
            elif key in d.departed:
                if f.groupchat_resigned_listing == "observed":
                    raise ApiError(40003, f"invalid userid `{uid}`")
                owners.add(key)
    else:
        if t.visible_user_count(p) > f.groupchat_scope_limit:
            raise ApiError(81017)
        owners = {k for k, u in d.users.items() if t.user_visible(p, u)}
        include_resigned = f.groupchat_resigned_listing == "observed" and status_filter == 1
    rows = []
    for g in d.customer_groups.values():
        key = g.owner.lower()
        status = group_status(ctx, g)
        if key not in owners and not (include_resigned and status == 1):
            continue
        if status_filter and status != status_filter:
            continue
        rows.append({"chat_id": g.chat_id, "status": status})
    offset = _offset(ctx.get("cursor", str))
    page = rows[offset : offset + limit]
    nxt = _cursor(offset + limit) if offset + limit < len(rows) else ""
    return {"group_chat_list": page, "next_cursor": nxt}


@endpoint("externalcontact/groupchat/get", "POST", principals=APP, customer_contact=True)
def groupchat_get(ctx: Ctx) -> dict[str, Any]:
    chat_id = ctx.get("chat_id", str)
    if not chat_id:
        raise ApiError(40058, "chat_id missing")
    group = ctx.data.customer_groups.get(chat_id)
    if group is None:
        raise ApiError(40050)
    owner = ctx.data.users.get(group.owner.lower())
    if owner is not None and not ctx.tenant.user_visible(ctx.app, owner):
        raise ApiError(60011)
    need_name = ctx.get("need_name", int, 0) == 1
    members = []
    for m in group.members:
        item: dict[str, Any] = {"userid": m["userid"], "type": m["type"]}
        if m["type"] == 2 and m.get("unionid"):
            item["unionid"] = m["unionid"]
        item["join_time"] = m["join_time"]
        item["join_scene"] = m["join_scene"]
        if m.get("invitor"):
            item["invitor"] = dict(m["invitor"])
        item["group_nickname"] = m.get("group_nickname", "")
        if need_name:
            item["name"] = m.get("name", "")
        members.append(item)
    return {
        "group_chat": {
            "chat_id": group.chat_id,
            "name": group.name,
            "owner": group.owner,
            "create_time": group.create_time,
            "notice": group.notice,
            "member_list": members,
            "admin_list": [{"userid": a} for a in group.admins],
            "member_version": group.member_version(),
        }
    }


def _transfer_request(ctx: Ctx) -> tuple[list[str], Any]:
    ids = ctx.get("chat_id_list", list)
    if not ids or len(ids) > 100:
        raise ApiError(40058, "chat_id_list must have 1-100 items")
    new_owner = ctx.get("new_owner", str)
    if not new_owner:
        raise ApiError(40058, "new_owner missing")
    user = ctx.tenant.find_user(new_owner)
    if user is None or user.status != 1 or not user.customer_contact:
        raise ApiError(40003, f"invalid new_owner `{new_owner}`")
    if not ctx.tenant.user_visible(ctx.app, user):
        raise ApiError(60011)
    return [str(x) for x in ids], user


def _hand_over(ctx: Ctx, group: CustomerGroup, user: Any, keep_old_owner: bool) -> None:
    old = group.owner.lower()
    if not keep_old_owner:
        group.members = [m for m in group.members if not (m["type"] == 1 and m["userid"].lower() == old)]
    if not any(m["type"] == 1 and m["userid"].lower() == user.key for m in group.members):
        group.members.insert(
            0, {"userid": user.userid, "type": 1, "join_time": int(ctx.now), "join_scene": 1, "name": user.name}
        )
    group.owner = user.userid


@endpoint(
    "externalcontact/groupchat/transfer", "POST", principals=APP, customer_contact=True,
    list_fields={"failed_chat_list": []},
)  # fmt: skip
def groupchat_transfer(ctx: Ctx) -> dict[str, Any]:
    ids, user = _transfer_request(ctx)
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    failed = []
    for chat_id in ids:
        group = d.customer_groups.get(chat_id)
        if group is None:
            failed.append({"chat_id": chat_id, "errcode": 90501, "errmsg": "chat is not external group chat"})
            continue
        if group_status(ctx, group) != 1:
            failed.append({"chat_id": chat_id, "errcode": 90500, "errmsg": "the owner of this chat is not resigned"})
            continue
        wkey = ("transfer_day", group.owner.lower(), user.key)
        if not t.limiter.take(wkey, DAY, f.transfers_per_day_per_owner, ctx.now):
            failed.append({"chat_id": chat_id, "errcode": 45009, "errmsg": "api freq out of limit"})
            continue
        _hand_over(ctx, group, user, keep_old_owner=False)
        group.transferred_at = ctx.now
    return {"failed_chat_list": failed}


@endpoint(
    "externalcontact/groupchat/onjob_transfer", "POST", principals=APP, customer_contact=True,
    list_fields={"failed_chat_list": []},
)  # fmt: skip
def groupchat_onjob_transfer(ctx: Ctx) -> dict[str, Any]:
    ids, user = _transfer_request(ctx)
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    failed = []
    for chat_id in ids:
        group = d.customer_groups.get(chat_id)
        if group is None:
            failed.append({"chat_id": chat_id, "errcode": 90501, "errmsg": "chat is not external group chat"})
            continue
        if group.owner.lower() not in d.users:
            failed.append({"chat_id": chat_id, "errcode": 40058, "errmsg": "owner resigned, use groupchat/transfer"})
            continue
        if group.owner.lower() == user.key:
            failed.append({"chat_id": chat_id, "errcode": 40058, "errmsg": "new_owner is already the owner"})
            continue
        recent = [x for x in group.onjob_transfers if ctx.now - x < NINETY_DAYS]
        if len(recent) >= f.onjob_transfers_per_90_days:
            failed.append({"chat_id": chat_id, "errcode": 45009, "errmsg": "chat transferred too often in 90 days"})
            continue
        wkey = ("transfer_day", group.owner.lower(), user.key)
        if not t.limiter.take(wkey, DAY, f.transfers_per_day_per_owner, ctx.now):
            failed.append({"chat_id": chat_id, "errcode": 45009, "errmsg": "api freq out of limit"})
            continue
        _hand_over(ctx, group, user, keep_old_owner=True)
        group.onjob_transfers = [*recent, ctx.now]
    return {"failed_chat_list": failed}


# --------------------------------------------------------------------------------------------------
# OAuth (§9.3)
# --------------------------------------------------------------------------------------------------
def _redeem(ctx: Ctx) -> dict[str, Any]:
    code = ctx.arg("code")
    if code is None:
        raise ApiError(41008)
    c = ctx.data.oauth_codes.get(code)
    if c is None or c.used or ctx.now >= c.issued_at + ctx.flags.oauth_code_ttl:
        raise ApiError(40029)
    if c.agentid is not None and c.agentid != ctx.app.agentid:
        raise ApiError(40029)
    if c.redirect_domain and c.redirect_domain != ctx.app.trusted_domain:
        raise ApiError(50001)
    c.used = True
    if c.userid is None:
        out = {"openid": c.openid or ""}
        if c.external_userid:
            out["external_userid"] = c.external_userid
        return out
    user = ctx.tenant.find_user(c.userid)
    if user is None:
        raise ApiError(40029)
    if not ctx.tenant.user_visible(ctx.app, user):
        raise ApiError(50002)
    out = {"userid": user.userid}
    if c.scope == "snsapi_privateinfo":
        ticket = ctx.tenant.next_id("ut", 64)
        ctx.data.user_tickets[ticket] = (user.key, ctx.now + 1800)
        out["user_ticket"] = ticket
    return out


@endpoint("auth/getuserinfo", "GET", principals=APP, basic_limit=False)
def auth_getuserinfo(ctx: Ctx) -> dict[str, Any]:
    return _redeem(ctx)


@endpoint("user/getuserinfo", "GET", principals=APP, basic_limit=False)
def legacy_getuserinfo(ctx: Ctx) -> dict[str, Any]:
    """The legacy path (wechatpy 1.8 ``oauth.get_user_info``): capitalised keys [sdk WxJava]."""
    out = _redeem(ctx)
    if "userid" in out:
        legacy = {"UserId": out["userid"], "DeviceId": ""}
        if "user_ticket" in out:
            legacy["user_ticket"] = out["user_ticket"]
        return legacy
    return {"OpenId": out["openid"], "DeviceId": ""}


@endpoint("auth/getuserdetail", "POST", principals=APP)
def auth_getuserdetail(ctx: Ctx) -> dict[str, Any]:
    ticket = ctx.get("user_ticket", str)
    if not ticket:
        raise ApiError(40058, "user_ticket missing")
    entry = ctx.data.user_tickets.get(ticket)
    if entry is None:
        raise ApiError(40058, "invalid user_ticket")
    key, expires = entry
    if ctx.now >= expires:
        raise ApiError(40058, "user_ticket expired")
    user = ctx.data.users.get(key)
    if user is None:
        raise ApiError(60111)
    return {
        "userid": user.userid,
        "gender": user.gender,
        "avatar": user.avatar,
        "qr_code": "",
        "mobile": user.mobile,
        "email": user.email,
        "biz_mail": user.biz_mail,
        "address": user.address,
    }
