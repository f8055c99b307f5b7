"""App group chats (应用群聊, contract §3): create, update, get, send.

Rules for all four (§3): self-built apps only; the app's visibility must be the root department
(60011 otherwise); an app may only touch chats it created (86008). Chats hold 2-2,000 members, the app
included (86006). There is no dissolve and no "list my chats" API.

Budgets taken before each call (:mod:`wecom_plugin.wecom.budget`): ``appchat.create`` (1,000/day per corp),
``appchat.update`` (1,000/hour per corp), and for :func:`send` when the members are given, the corp's
person-times (20,000/min, hourly cap by corp size) and each member's allowance (200/min, 10,000/day):
those are dropped silently by WeCom when exceeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from wecom_plugin.wecom.api.message import APPCHAT, Message, envelope
from wecom_plugin.wecom.budget import (
    APPCHAT_CREATE,
    APPCHAT_SEND_CORP_HOUR_NAME,
    APPCHAT_SEND_CORP_MINUTE,
    APPCHAT_SEND_MEMBER_DAY,
    APPCHAT_SEND_MEMBER_MINUTE,
    APPCHAT_UPDATE,
    APPCHAT_UPDATE_ROUTINE,
    CORP,
    Ask,
    member_key,
)

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

MAX_MEMBERS = 2000  # the app counts as one (§3.1)
MIN_MEMBERS = 2
NAME_MAX_CHARS = 50  # longer names are truncated by WeCom


def create(
    client: WeComClient,
    userlist: Sequence[str],
    *,
    name: str | None = None,
    owner: str | None = None,
    chatid: str | None = None,
) -> str:
    """``POST /cgi-bin/appchat/create``: a new app chat; returns its ``chatid``.

    Doc: https://developer.work.weixin.qq.com/document/path/90245 (contract §3.1).
    Limits: **1,000 chats created per corp per day** (all apps; 45009 until the end of the natural day,
    budget ``appchat.create``); 2-2,000 members including the app; ``name`` ≤50 characters (truncated);
    ``chatid`` ≤32 of ``[0-9a-zA-Z]``, random when omitted; ``owner`` defaults to a random member.
    """
    if len(userlist) < MIN_MEMBERS:
        raise ValueError("an app chat needs at least 2 members (86006)")
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if owner is not None:
        body["owner"] = owner
    body["userlist"] = list(userlist)
    if chatid is not None:
        body["chatid"] = chatid
    data = client.post("appchat/create", body, spend=[Ask(APPCHAT_CREATE.name, CORP)])
    return str(data.get("chatid") or chatid or "")


def update(
    client: WeComClient,
    chatid: str,
    *,
    name: str | None = None,
    owner: str | None = None,
    add_user_list: Sequence[str] = (),
    del_user_list: Sequence[str] = (),
    routine: bool = False,
) -> None:
    """``POST /cgi-bin/appchat/update``: rename, change owner, add and remove members in one call.

    ``routine``: the call carries no offboarding change, so it also takes from the routine share
    (``appchat.update.routine``, 80 % of the hour), leaving the rest for offboarding.

    Doc: https://developer.work.weixin.qq.com/document/path/98913 (contract §3.2).
    Limits: **1,000 updates per corp per hour** (45009 blocks an hour; budget ``appchat.update``), so batch
    every change of one chat into one call. ≤2,000 members after the change. ``owner`` is required when
    ``del_user_list`` removes the current owner (86005).
    """
    body: dict[str, Any] = {"chatid": chatid}
    if name is not None:
        body["name"] = name
    if owner is not None:
        body["owner"] = owner
    if add_user_list:
        body["add_user_list"] = list(add_user_list)
    if del_user_list:
        body["del_user_list"] = list(del_user_list)
    spend = [Ask(APPCHAT_UPDATE.name, CORP)]
    if routine:
        spend.append(Ask(APPCHAT_UPDATE_ROUTINE.name, CORP))
    client.post("appchat/update", body, spend=spend)


def get(client: WeComClient, chatid: str) -> dict[str, Any]:
    """``GET /cgi-bin/appchat/get?chatid=ID``: ``{chatid, name, owner, userlist, chat_type}``.

    Doc: https://developer.work.weixin.qq.com/document/path/98914 (contract §3.3). Limits: the basic
    per-API limit (10,000/min, 150,000/h per corp). Only chats this app created (86008). ``userlist``
    may still list members who left (§14.8): treat it as possibly stale.
    """
    return dict(client.get("appchat/get", {"chatid": chatid}).get("chat_info") or {})


def send(
    client: WeComClient,
    chatid: str,
    message: Message,
    *,
    safe: int = 0,
    members: Sequence[str] | None = None,
) -> None:
    """``POST /cgi-bin/appchat/send``: a message into an app chat. ``safe`` sits at the top level.

    Doc: https://developer.work.weixin.qq.com/document/path/90248 (contract §3.4, §14.6).
    Types: text, image, voice, video, file, textcard, news, mpnews, markdown (no template cards). ``safe``
    0/1 (not for news or markdown). Limits: per corp **20,000 person-times a minute** and an hourly cap
    by corp size (150k/350k/700k); per member from one app **200 a minute and 10,000 a day** — all
    exceeded *silently* (errcode 0, nothing delivered). Pass the chat's ``members`` to take those from the
    budget first (one person-time per member); without them only WeCom's limits apply.
    """
    body: dict[str, Any] = {"chatid": chatid}
    body.update(envelope(APPCHAT, message, safe))
    client.post("appchat/send", body, spend=send_asks(members or ()))


def send_asks(members: Sequence[str]) -> list[Ask]:
    """What one ``appchat/send`` to a chat of ``members`` takes from the budget: one person-time per
    member from the corp's minute and hour, and one send from each member's minute and day (none for
    an empty list)."""
    if not members:
        return []
    n = len(members)
    asks = [Ask(APPCHAT_SEND_CORP_MINUTE.name, CORP, n), Ask(APPCHAT_SEND_CORP_HOUR_NAME, CORP, n)]
    for userid in members:
        asks.append(Ask(APPCHAT_SEND_MEMBER_MINUTE.name, member_key(userid)))
        asks.append(Ask(APPCHAT_SEND_MEMBER_DAY.name, member_key(userid)))
    return asks
