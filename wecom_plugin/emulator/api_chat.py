"""App group chats (§3), temporary media (§14.5) and the group robot webhook (§5).

Appchat rules: only self-built apps whose visibility is the root department (60011); an app sees and
changes only chats it created (86008); 2..2000 members with the app counted (86006); names truncated
at 50 characters; 1000 creates per corp per day and 1000 updates per corp per hour (45009). Sends over
the per-member (200/min, 10,000/day per app) or per-corp (20,000 person-times/min, hourly cap by corp
size) budgets are dropped silently: the API still answers 0 and the tenant records the drop.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .codes import ApiError
from .content import APPCHAT, ROBOT, check_safe, media_format_ok, validate
from .framework import APP, Ctx, endpoint
from .state import DAY, HOURLY_CAP_BY_CORP_SIZE, AppChat, Media, Message, User

CHATID_RE = re.compile(r"^[0-9a-zA-Z]{1,32}$")
MEDIA_TYPES = ("image", "voice", "video", "file")
MB = 1024 * 1024
MEDIA_LIMITS = {
    "image": (10 * MB, 40009),
    "voice": (2 * MB, 45001),
    "video": (10 * MB, 40011),
    "file": (20 * MB, 45001),
}
MAX_UPLOAD = 20 * MB


def _chat(ctx: Ctx, chatid: str | None, own: bool = True) -> AppChat:
    if not chatid or not CHATID_RE.match(chatid):
        raise ApiError(86001)
    chat = ctx.data.chats.get(chatid)
    if chat is None:
        raise ApiError(86003)
    if own and chat.creator != ctx.app.agentid:
        raise ApiError(86008)
    return chat


def _unknown_member(ctx: Ctx, uid: Any) -> ApiError:
    code = ctx.flags.appchat_unknown_member_errcode
    if code == 60111:
        return ApiError(60111, f"invalid string value `{uid}`. userid not found")
    return ApiError(code)


def _resolve_users(ctx: Ctx, ids: list[Any]) -> dict[str, User]:
    out: dict[str, User] = {}
    for uid in ids:
        if not isinstance(uid, str) or not uid:
            raise ApiError(86007)
        user = ctx.tenant.find_user(uid)
        if user is None:
            raise _unknown_member(ctx, uid)
        out.setdefault(user.key, user)
    return out


def _member_cap(ctx: Ctx) -> int:
    return ctx.flags.appchat_max_members - (1 if ctx.flags.appchat_app_counts_as_member else 0)


@endpoint("appchat/create", "POST", principals=APP, root_scope=True)
def appchat_create(ctx: Ctx) -> dict[str, Any]:
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    if t.limiter.exceeded(
        ("appchat_create",), DAY, f.appchat_creates_per_day, ctx.now, block=ctx.flags.block_after_limit
    ):
        raise ApiError(45009)
    chatid = ctx.get("chatid", str)
    if chatid:
        if not CHATID_RE.match(chatid):
            raise ApiError(86001)
        if chatid in d.chats:
            raise ApiError(86001, "chatid exists")
    name = ctx.get("name", str, "")
    userlist = ctx.get("userlist", list)
    if userlist is None:
        raise ApiError(86006, "userlist missing")
    members = _resolve_users(ctx, userlist)
    owner_id = ctx.get("owner", str)
    owner_key = None
    if owner_id:
        owner = t.find_user(owner_id)
        if owner is None:
            raise ApiError(86005)
        if owner.key not in members:
            if f.appchat_owner_must_be_member:
                raise ApiError(86005, "owner not in userlist")
            members[owner.key] = owner
        owner_key = owner.key
    if not 2 <= len(members) <= _member_cap(ctx):
        raise ApiError(86006)
    if owner_key is None:
        owner_key = t.rng.choice(list(members))
    if not chatid:
        chatid = t.next_id("wr", 22)
        while chatid in d.chats:  # pragma: no cover - ids are unique by construction
            chatid = t.next_id("wr", 22)
    chat = AppChat(chatid, name[:50], owner_key, {k: u.userid for k, u in members.items()}, ctx.app.agentid, ctx.now)
    d.chats[chatid] = chat
    for key in chat.members:
        d.user_chats.setdefault(key, {})[chatid] = None
    t.limiter.add(("appchat_create",), DAY, ctx.now)
    return {"chatid": chatid}


@endpoint("appchat/update", "POST", principals=APP, root_scope=True)
def appchat_update(ctx: Ctx) -> dict[str, Any]:
    t, d, f = ctx.tenant, ctx.data, ctx.flags
    chat = _chat(ctx, ctx.get("chatid", str))
    if t.limiter.exceeded(
        ("appchat_update",), 3600, f.appchat_updates_per_hour, ctx.now, block=ctx.flags.block_after_limit
    ):
        raise ApiError(45009)
    name = ctx.get("name", str)
    owner_id = ctx.get("owner", str)
    adds = _resolve_users(ctx, ctx.get("add_user_list", list, []))
    dels: list[str] = []
    for uid in ctx.get("del_user_list", list, []):
        if not isinstance(uid, str) or not uid:
            raise ApiError(86007)
        key = uid.lower()
        if key in chat.members:
            dels.append(key)
        elif key not in d.users:
            raise _unknown_member(ctx, uid)
    members = dict(chat.members)
    for key, user in adds.items():
        members.setdefault(key, user.userid)
    for key in dels:
        members.pop(key, None)
    owner_key = chat.owner
    if owner_id:
        owner = t.find_user(owner_id)
        if owner is None:
            raise ApiError(86005)
        if owner.key not in members:
            if f.appchat_owner_must_be_member or owner.key in dels:
                raise ApiError(86005, "owner not in chat")
            members[owner.key] = owner.userid
        owner_key = owner.key
    elif owner_key in dels:
        raise ApiError(86005, "owner removed without a new owner")
    if len(members) > _member_cap(ctx):
        raise ApiError(86006)
    for key in chat.members.keys() - members.keys():
        d.user_chats.get(key, {}).pop(chat.chatid, None)
    for key in members.keys() - chat.members.keys():
        d.user_chats.setdefault(key, {})[chat.chatid] = None
    chat.members = members
    chat.owner = owner_key
    if name:
        chat.name = name[:50]
    t.limiter.add(("appchat_update",), 3600, ctx.now)
    return {}


@endpoint("appchat/get", "GET", principals=APP, root_scope=True)
def appchat_get(ctx: Ctx) -> dict[str, Any]:
    chat = _chat(ctx, ctx.arg("chatid"))
    d = ctx.data
    owner = chat.members.get(chat.owner) if chat.owner else None
    if owner is None and chat.owner:
        owner = d.users[chat.owner].userid if chat.owner in d.users else chat.owner
    return {
        "chat_info": {
            "chatid": chat.chatid,
            "name": chat.name,
            "owner": owner or "",
            "userlist": list(chat.members.values()),
            "chat_type": chat.chat_type,
        }
    }


def _deliverable(ctx: Ctx, key: str) -> str | None:
    """None if ``key`` can receive at all, else the reason it cannot."""
    user = ctx.data.users.get(key)
    if user is None:
        return "departed"
    if user.status == 2:
        return "disabled"
    if user.status == 5:
        return "left"
    return None


@endpoint("appchat/send", "POST", principals=APP, root_scope=True)
def appchat_send(ctx: Ctx) -> dict[str, Any]:
    t, f = ctx.tenant, ctx.flags
    chat = _chat(ctx, ctx.get("chatid", str))
    msgtype = ctx.get("msgtype", str)
    content = validate(ctx, APPCHAT, msgtype)
    safe = check_safe(ctx, APPCHAT, msgtype or "")
    agentid, now, lim = ctx.app.agentid, ctx.now, t.limiter
    hourly = f.appchat_corp_per_hour or HOURLY_CAP_BY_CORP_SIZE[f.corp_size]
    msg = Message(
        t.next_id("m", 32), t.next_msg_seq(), now, APPCHAT, msgtype or "", content, safe, agentid, chat.chatid
    )
    msg.spelling = dict(chat.members)
    for key in chat.members:
        reason = _deliverable(ctx, key)
        if reason is None:
            checks = (
                (("appchat_member_min", agentid, key), 60, f.appchat_member_per_minute, "member_per_minute"),
                (("appchat_member_day", agentid, key), DAY, f.appchat_member_per_day, "member_per_day"),
                (("appchat_corp_min",), 60, f.appchat_corp_per_minute, "corp_per_minute"),
                (("appchat_corp_hour",), 3600, hourly, "corp_per_hour"),
            )
            for wkey, period, limit, why in checks:
                if lim.room(wkey, period, limit, now) <= 0:
                    reason = why
                    break
            else:
                for wkey, period, _limit, _why in checks:
                    lim.add(wkey, period, now)
        msg.recipients[key] = reason
    t.record_message(msg)
    return {}


# --------------------------------------------------------------------------------------------------
# media (§14.5)
# --------------------------------------------------------------------------------------------------
def _store_upload(ctx: Ctx, media_type: str | None, allowed: tuple[str, ...], robot_key: str | None) -> Media:
    if media_type not in allowed:
        raise ApiError(40005)
    part = ctx.files.get("media")
    if part is None or not part[2]:
        raise ApiError(44001)
    filename, _mimetype, raw = part
    size = len(raw)
    if size <= 5:
        raise ApiError(40006)
    limit, code = MEDIA_LIMITS[media_type]
    if size > limit:
        raise ApiError(code)
    if ctx.flags.media_check_format and not media_format_ok(media_type, raw):
        raise ApiError(301017 if media_type == "voice" else 40004, f"invalid {media_type} format")
    media_id = ctx.tenant.next_id("3" if robot_key else "1", 44)
    media = Media(
        media_id,
        media_type,
        filename,
        size,
        hashlib.md5(raw, usedforsecurity=False).hexdigest(),
        ctx.now,
        robot_key,
    )
    ctx.data.media[media_id] = media
    return media


@endpoint("media/upload", "POST", principals=APP, body="multipart")
def media_upload(ctx: Ctx) -> dict[str, Any]:
    media = _store_upload(ctx, ctx.arg("type"), MEDIA_TYPES, None)
    # The doc sample answers errmsg "" and created_at as a string (§14.5).
    return {"errmsg": "", "type": media.type, "media_id": media.media_id, "created_at": str(int(media.created_at))}


# --------------------------------------------------------------------------------------------------
# group robot (§5)
# --------------------------------------------------------------------------------------------------
def _robot(ctx: Ctx) -> Any:
    key = ctx.arg("key")
    robot = ctx.data.robots.get(key) if key else None
    if robot is None or robot.chatid not in ctx.data.chats:
        raise ApiError(93000)
    return robot


@endpoint("webhook/send", "POST", auth="key", basic_limit=False)
def webhook_send(ctx: Ctx) -> dict[str, Any]:
    t, d = ctx.tenant, ctx.data
    robot = _robot(ctx)
    wkey = ("robot", robot.key)
    if t.limiter.exceeded(wkey, 60, ctx.flags.robot_per_minute, ctx.now, block=ctx.flags.block_after_limit):
        raise ApiError(45009)
    msgtype = ctx.get("msgtype", str)
    content = validate(ctx, ROBOT, msgtype)
    chat = d.chats[robot.chatid]
    msg = Message(t.next_id("r", 32), t.next_msg_seq(), ctx.now, ROBOT, msgtype or "", content, 0, None, chat.chatid)
    msg.robot_key = robot.key
    msg.spelling = dict(chat.members)
    for key in chat.members:
        msg.recipients[key] = _deliverable(ctx, key)
    t.record_message(msg)
    t.limiter.add(wkey, 60, ctx.now)
    return {}


@endpoint("webhook/upload_media", "POST", auth="key", body="multipart", basic_limit=False)
def webhook_upload_media(ctx: Ctx) -> dict[str, Any]:
    robot = _robot(ctx)
    media = _store_upload(ctx, ctx.arg("type"), ("file", "voice"), robot.key)
    return {"type": media.type, "media_id": media.media_id, "created_at": str(int(media.created_at))}
