"""Message-body validation shared by ``message/send``, ``appchat/send`` and the robot webhook (§3.4, §4,
§5, §14.2, §14.6, §14.7).

Hard limits ("不超过 N 字节") are errors; documented truncations truncate. Returns the content as it
would be delivered (after truncation), which the tenant records per recipient.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any

from .codes import ApiError
from .framework import Ctx, truncate_bytes, utf8_len

MESSAGE, APPCHAT, ROBOT = "message", "appchat", "robot"

MSGTYPES = {
    MESSAGE: ("text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown",
              "miniprogram_notice", "template_card"),
    APPCHAT: ("text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown"),
    ROBOT: ("text", "markdown", "markdown_v2", "image", "news", "file", "voice", "template_card"),
}  # fmt: skip

CARD_TYPES = ("text_notice", "news_notice", "button_interaction", "vote_interaction", "multiple_interaction")
INTERACTIVE_CARDS = ("button_interaction", "vote_interaction", "multiple_interaction")
TASK_ID_RE = re.compile(r"^[0-9A-Za-z_\-@]{1,128}$")
MEDIA_TYPE_FOR = {"image": "image", "voice": "voice", "video": "video", "file": None}


def check_safe(ctx: Ctx, path: str, msgtype: str) -> int:
    """The ``safe`` value (§14.6): 40074 for news, 40058 where it cannot apply, 0 when absent."""
    if path == ROBOT:
        return 0
    safe = ctx.get("safe", int, 0)
    if safe == 0:
        return 0
    if safe not in (1, 2):
        raise ApiError(40058, "invalid safe")
    if msgtype == "news" and (path == MESSAGE or not ctx.flags.appchat_news_safe_allowed):
        raise ApiError(40074)
    if msgtype == "markdown":  # [obs] go-workwx README: markdown with safe errors
        raise ApiError(40058, "markdown message not support safe")
    if safe == 2 and not (path == MESSAGE and msgtype == "mpnews"):
        raise ApiError(40058, "safe=2 is only for mpnews on message/send")
    if ctx.flags.strict_safe and (msgtype == "template_card" or (path == MESSAGE and msgtype == "textcard")):
        raise ApiError(40058, f"{msgtype} message not support safe")
    return safe


def _media(ctx: Ctx, obj: dict[str, Any], msgtype: str, key: str = "media_id") -> str:
    media_id = ctx.get(key, str, source=obj)
    if not media_id:
        raise ApiError(41006)
    media = ctx.data.media.get(media_id)
    if media is None or ctx.now >= media.created_at + ctx.flags.media_ttl:
        raise ApiError(40007)
    wanted = MEDIA_TYPE_FOR.get(msgtype)
    if wanted is not None and media.type != wanted:
        raise ApiError(40007, f"media_id is not of type {wanted}")
    return media_id


def _articles(ctx: Ctx, obj: dict[str, Any], mp: bool) -> list[dict[str, Any]]:
    articles = ctx.get("articles", list, source=obj)
    if not articles:
        raise ApiError(40058, "articles missing")
    if len(articles) > 8:
        raise ApiError(45008)
    out = []
    for art in articles:
        if not isinstance(art, dict):
            raise ApiError(40058, "invalid article")
        title = ctx.get("title", str, "", source=art)
        if not title:
            raise ApiError(41016)
        item = dict(art)
        item["title"] = truncate_bytes(title, 128)
        if mp:
            item["thumb_media_id"] = _media(ctx, art, "image", "thumb_media_id")
            author = ctx.get("author", str, "", source=art)
            if utf8_len(author) > 64:
                raise ApiError(45032)
            content = ctx.get("content", str, "", source=art)
            if not content:
                raise ApiError(44004, "mpnews content empty")
            if utf8_len(content) > 666 * 1024:
                raise ApiError(45002)
            item["digest"] = truncate_bytes(ctx.get("digest", str, "", source=art), 512)
        else:
            item["description"] = truncate_bytes(ctx.get("description", str, "", source=art), 512)
            item["url"] = truncate_bytes(ctx.get("url", str, "", source=art), 2048)
        out.append(item)
    return out


def validate(ctx: Ctx, path: str, msgtype: str | None) -> Any:
    """Check the ``<msgtype>`` object of the body for ``path``; returns the deliverable content."""
    if not msgtype or msgtype not in MSGTYPES[path]:
        raise ApiError(40008)
    obj = ctx.get(msgtype, dict)
    if obj is None:
        if msgtype in ("text", "markdown", "markdown_v2"):
            raise ApiError(44004)
        raise ApiError(40058, f"{msgtype} missing")
    if msgtype == "text":
        content = ctx.get("content", str, "", source=obj)
        if not content:
            raise ApiError(44004)
        out = dict(obj)
        if utf8_len(content) > 2048:
            if path == MESSAGE or (path == APPCHAT and not ctx.flags.appchat_text_overflow_error):
                content = truncate_bytes(content, 2048)
            elif path == ROBOT:
                raise ApiError(40058, "text.content exceed max length 2048")
            else:
                raise ApiError(45002)
        out["content"] = content
        return out
    if msgtype in ("markdown", "markdown_v2"):
        content = ctx.get("content", str, "", source=obj)
        if not content:
            raise ApiError(44004)
        if path == ROBOT:
            if utf8_len(content) > 4096:
                raise ApiError(40058, f"{msgtype}.content exceed max length 4096")
        elif utf8_len(content) > 2048:
            raise ApiError(45002)
        return {"content": content}
    if msgtype == "image" and path == ROBOT:
        b64 = ctx.get("base64", str, "", source=obj)
        md5 = ctx.get("md5", str, "", source=obj)
        if not b64 or not md5:
            raise ApiError(40058, "image base64/md5 missing")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(40058, "invalid image base64") from None
        if not hmac.compare_digest(hashlib.md5(raw, usedforsecurity=False).hexdigest().encode(), md5.lower().encode()):
            raise ApiError(40058, "image md5 not match")
        if len(raw) > 2 * 1024 * 1024:
            raise ApiError(40009)
        if ctx.flags.media_check_format and not _is_image(raw):
            raise ApiError(40004)
        return {"md5": md5.lower(), "size": len(raw)}
    if msgtype in ("image", "voice", "file"):
        return {"media_id": _media(ctx, obj, msgtype)}
    if msgtype == "video":
        return {
            "media_id": _media(ctx, obj, "video"),
            "title": truncate_bytes(ctx.get("title", str, "", source=obj), 128),
            "description": truncate_bytes(ctx.get("description", str, "", source=obj), 512),
        }
    if msgtype == "textcard":
        title = ctx.get("title", str, "", source=obj)
        description = ctx.get("description", str, "", source=obj)
        url = ctx.get("url", str, "", source=obj)
        if not title:
            raise ApiError(41016)
        if not description:
            raise ApiError(41033)
        if not url:
            raise ApiError(40058, "textcard url missing")
        return {
            "title": truncate_bytes(title, 128),
            "description": truncate_bytes(description, 512),
            "url": truncate_bytes(url, 2048),
            "btntxt": (ctx.get("btntxt", str, "", source=obj) or "详情")[:4],
        }
    if msgtype == "news":
        return {"articles": _articles(ctx, obj, mp=False)}
    if msgtype == "mpnews":
        return {"articles": _articles(ctx, obj, mp=True)}
    if msgtype == "miniprogram_notice":
        if not ctx.get("appid", str, "", source=obj) or not ctx.get("title", str, "", source=obj):
            raise ApiError(40058, "miniprogram_notice appid/title missing")
        return dict(obj)
    if msgtype == "template_card":
        return validate_card(ctx, obj, path)
    raise ApiError(40008)  # pragma: no cover - every listed msgtype is handled above


def _is_image(raw: bytes) -> bool:
    return raw.startswith(b"\xff\xd8\xff") or raw.startswith(b"\x89PNG\r\n\x1a\n")


def media_format_ok(media_type: str, raw: bytes) -> bool:
    """Magic-byte check of an upload: JPG/PNG images, AMR voice, MP4 video, any file."""
    if media_type == "image":
        return _is_image(raw)
    if media_type == "voice":
        return raw.startswith(b"#!AMR")
    if media_type == "video":
        return raw[4:8] == b"ftyp"
    return True


def validate_card(ctx: Ctx, card: dict[str, Any], path: str) -> dict[str, Any]:
    """template_card rules of §14.2 (message/send) and §14.7 (robot: notice cards only)."""
    card_type = ctx.get("card_type", str, "", source=card)
    allowed = CARD_TYPES if path == MESSAGE else ("text_notice", "news_notice")
    if card_type not in allowed:
        raise ApiError(42031)
    interactive = card_type in INTERACTIVE_CARDS
    main = ctx.get("main_title", dict, {}, source=card)
    title = ctx.get("title", str, "", source=main)
    if not title and not ctx.get("sub_title_text", str, "", source=card):
        raise ApiError(42033)
    if card_type in ("text_notice", "news_notice"):
        action = ctx.get("card_action", dict, None, source=card)
        atype = ctx.get("type", int, None, source=action) if action else None
        if (
            action is None
            or atype not in (1, 2)
            or (atype == 1 and not action.get("url"))
            or (atype == 2 and not action.get("appid"))
        ):
            raise ApiError(42045)
    horizontal = ctx.get("horizontal_content_list", list, [], source=card)
    if len(horizontal) > 6:
        raise ApiError(42035)
    for item in horizontal:
        if not isinstance(item, dict) or not item.get("keyname"):
            raise ApiError(42027)
        htype = ctx.get("type", int, 0, source=item)
        if htype == 1 and not item.get("url"):
            raise ApiError(42028)
        if htype == 2 and not item.get("media_id"):
            raise ApiError(42029)
        if htype == 3 and not item.get("userid"):
            raise ApiError(40058, "horizontal_content_list userid missing")
    jumps = ctx.get("jump_list", list, [], source=card)
    if len(jumps) > 3:
        raise ApiError(40058, "jump_list exceed max length 3")
    menu = ctx.get("action_menu", dict, None, source=card)
    task_id = ctx.get("task_id", str, "", source=card)
    if path == MESSAGE:
        if menu is not None:
            actions = ctx.get("action_list", list, [], source=menu)
            if not 1 <= len(actions) <= 3:
                raise ApiError(40058, "action_menu.action_list must have 1-3 actions")
            keys = [a.get("key") for a in actions if isinstance(a, dict)]
            if len(set(keys)) != len(keys):
                raise ApiError(42051)
        if interactive or menu is not None or task_id:
            if not task_id or not TASK_ID_RE.match(task_id):
                raise ApiError(42014)
            assert ctx.principal is not None
            if (ctx.principal.agentid, task_id) in ctx.data.task_ids:
                raise ApiError(42014)
    if card_type == "button_interaction":
        buttons = ctx.get("button_list", list, [], source=card)
        if not 1 <= len(buttons) <= 6:
            raise ApiError(42038, "button_list must have 1-6 buttons")
        keys: set[str] = set()
        for b in buttons:
            if not isinstance(b, dict) or not b.get("text"):
                raise ApiError(42038)
            if ctx.get("type", int, 0, source=b) == 1:
                if not b.get("url"):
                    raise ApiError(42028)
                continue
            key = b.get("key")
            if not isinstance(key, str) or not key or utf8_len(key) > 1024 or key in keys:
                raise ApiError(42039)
            keys.add(key)
        selection = ctx.get("button_selection", dict, None, source=card)
        if selection is not None:
            if not selection.get("question_key"):
                raise ApiError(40058, "button_selection.question_key missing")
            options = ctx.get("option_list", list, [], source=selection)
            if not 1 <= len(options) <= 10:
                raise ApiError(42037)
    if card_type == "vote_interaction":
        box = ctx.get("checkbox", dict, None, source=card)
        options = ctx.get("option_list", list, [], source=box) if box else []
        if box is None or not box.get("question_key") or not 1 <= len(options) <= 20:
            raise ApiError(42037)
        if not ctx.get("submit_button", dict, None, source=card):
            raise ApiError(40058, "submit_button missing")
    if card_type == "multiple_interaction":
        selects = ctx.get("select_list", list, [], source=card)
        if not 1 <= len(selects) <= 3:
            raise ApiError(40058, "select_list must have 1-3 items")
        for s in selects:
            options = ctx.get("option_list", list, [], source=s) if isinstance(s, dict) else []
            if not isinstance(s, dict) or not s.get("question_key") or not 1 <= len(options) <= 10:
                raise ApiError(42037)
        if not ctx.get("submit_button", dict, None, source=card):
            raise ApiError(40058, "submit_button missing")
    return dict(card)


def needs_response_code(card: dict[str, Any]) -> bool:
    """Interactive cards, and notice cards with an action_menu (§14.2, §14.4)."""
    return card.get("card_type") in INTERACTIVE_CARDS or bool(card.get("action_menu"))
