"""The group robot (群机器人 / 消息推送, contract §5): ``POST {base}webhook/send?key=KEY``.

A robot is added by a member to an internal group chat; its webhook key is the only credential (no access
token, no trusted IP). The client therefore sends these calls without a token (never triggering a
``gettoken``), and the key is hashed before it names a budget counter. Robot bodies have no ``safe``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from wecom_plugin.wecom.api.message import Article, Message, _articles
from wecom_plugin.wecom.budget import ROBOT_MINUTE, Ask, robot_key

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

MSGTYPES = frozenset({"text", "markdown", "markdown_v2", "image", "news", "file", "voice", "template_card"})
TEXT_MAX_BYTES = 2048
MARKDOWN_MAX_BYTES = 4096
IMAGE_MAX_BYTES = 2 * 1024 * 1024


def text(content: str, mentioned_list: Sequence[str] = (), mentioned_mobile_list: Sequence[str] = ()) -> Message:
    """Text ≤2,048 bytes; mention members by userid or mobile (``"@all"`` allowed)."""
    body: dict[str, Any] = {"content": content}
    if mentioned_list:
        body["mentioned_list"] = list(mentioned_list)
    if mentioned_mobile_list:
        body["mentioned_mobile_list"] = list(mentioned_mobile_list)
    return Message("text", body)


def markdown(content: str) -> Message:
    """Markdown ≤4,096 bytes (40058 beyond); mentions only inline as ``<@userid>``."""
    return Message("markdown", {"content": content})


def image(raw: bytes) -> Message:
    """An image sent inline: base64 of the JPG/PNG bytes and their md5, ≤2 MB before encoding."""
    if len(raw) > IMAGE_MAX_BYTES:
        raise ValueError("a robot image is at most 2 MB (40009)")
    return Message(
        "image",
        {"base64": base64.b64encode(raw).decode("ascii"), "md5": hashlib.md5(raw, usedforsecurity=False).hexdigest()},
    )


def news(articles: Sequence[Article | Mapping[str, Any]]) -> Message:
    """1-8 articles: title ≤128 bytes, description ≤512 bytes."""
    return Message("news", {"articles": _articles(articles)})


def file(media_id: str) -> Message:
    """A file uploaded with :func:`upload_media` (not ``media/upload``)."""
    return Message("file", {"media_id": media_id})


def voice(media_id: str) -> Message:
    return Message("voice", {"media_id": media_id})


def template_card(card: Mapping[str, Any]) -> Message:
    """A ``text_notice`` or ``news_notice`` card (``card_action`` required)."""
    return Message("template_card", dict(card))


def webhook_key(key_or_url: str) -> str:
    """The key alone: accepts the full webhook URL people copy from the client (sending it as the key is 93000).

    Only the key is taken from a URL; the request always goes to the client's own base URL.
    """
    value = key_or_url.strip()
    if "://" in value or value.startswith("/") or "?" in value:
        keys = parse_qs(urlsplit(value).query).get("key")
        if not keys or not keys[0]:
            raise ValueError("the webhook URL has no key= parameter")
        return keys[0]
    return value


def send(client: WeComClient, key: str, message: Message) -> None:
    """``POST /cgi-bin/webhook/send?key=KEY``: a message into the robot's chat. No access token.

    Doc: https://developer.work.weixin.qq.com/document/path/91770 (newer page 99110; contract §5).
    Limits: **20 messages a minute per robot** (45009; budget ``robot.minute`` per key, 18 with the default
    headroom). Unknown or removed key: 93000 (configuration). Types: text, markdown, markdown_v2,
    image (base64+md5), news, file, voice, template_card (notice cards only).
    """
    if message.msgtype not in MSGTYPES:
        raise ValueError(f"webhook: msgtype {message.msgtype!r} is not supported (40008)")
    key = webhook_key(key)
    client.post(
        "webhook/send",
        message.payload(),
        params={"key": key},
        auth="none",
        spend=[Ask(ROBOT_MINUTE.name, robot_key(key))],
    )


def upload_media(client: WeComClient, key: str, media_type: str, content: bytes, filename: str) -> str:
    """``POST /cgi-bin/webhook/upload_media?key=KEY&type=file|voice`` (multipart ``media``): a media id for the robot.

    Doc: https://developer.work.weixin.qq.com/document/path/91770 (contract §5). Limits: file 5 B-20 MB,
    voice AMR ≤2 MB; the id lives 3 days. No access token.
    """
    if media_type not in ("file", "voice"):
        raise ValueError("robot media is a file or a voice")
    data = client.post(
        "webhook/upload_media",
        files={"media": (filename, content, "application/octet-stream")},
        params={"key": webhook_key(key), "type": media_type},
        auth="none",
        idempotent=True,
    )
    return str(data["media_id"])
