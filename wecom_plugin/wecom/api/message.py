"""App messages (contract §4, §14.2, §14.4, §14.6) and the message builders shared with app chats.

Build a message with one of the builders (:func:`text`, :func:`markdown`, :func:`textcard`,
:func:`button_card`...), then send it with :func:`send` (to users, departments, tags) or
:func:`wecom_plugin.wecom.api.appchat.send` (to an app chat). :func:`envelope` puts ``safe`` at the top
level of the request, and only for message types that take it (§14.6): wechatpy copies ``safe`` into the
inner object for news/mpnews/markdown, which WeCom does not read there.

:func:`send` answers a :class:`SendResult` that *surfaces* the recipients WeCom rejected (``invaliduser``,
``invalidparty``, ``invalidtag``): WeCom answers errcode 0 when only some are invalid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wecom_plugin.errors import ConfigurationError
from wecom_plugin.wecom.api import joined, split
from wecom_plugin.wecom.budget import MESSAGE_MEMBER_HOUR, MESSAGE_MEMBER_MINUTE, Ask, member_key

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

MESSAGE, APPCHAT = "message", "appchat"
#: Message types each path accepts (§3.4, §4, §14.6).
MSGTYPES = {
    MESSAGE: frozenset({"text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown",
                        "miniprogram_notice", "template_card"}),
    APPCHAT: frozenset({"text", "image", "voice", "video", "file", "textcard", "news", "mpnews", "markdown"}),
}  # fmt: skip
#: Types that take ``safe`` (§14.6): not news (40074), markdown (errors), template_card/textcard on message/send.
SAFE_TYPES = {
    MESSAGE: frozenset({"text", "image", "voice", "video", "file", "mpnews"}),
    APPCHAT: frozenset({"text", "image", "voice", "video", "file", "textcard", "mpnews"}),
}
MAX_USERS, MAX_PARTIES, MAX_TAGS = 1000, 100, 100
TEXT_MAX_BYTES = 2048
DUPLICATE_CHECK_MAX = 4 * 3600


# --- builders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    """A message body: ``msgtype`` and its inner object, e.g. ``Message("text", {"content": "hi"})``."""

    msgtype: str
    body: Mapping[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"msgtype": self.msgtype, self.msgtype: dict(self.body)}


def _compact(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def text(content: str) -> Message:
    """Text, ≤2,048 bytes (message/send truncates, app chats refuse with 45002); ``\\n`` for new lines."""
    return Message("text", {"content": content})


def image(media_id: str) -> Message:
    return Message("image", {"media_id": media_id})


def voice(media_id: str) -> Message:
    return Message("voice", {"media_id": media_id})


def file(media_id: str) -> Message:
    return Message("file", {"media_id": media_id})


def video(media_id: str, title: str | None = None, description: str | None = None) -> Message:
    """Video: title ≤128 bytes, description ≤512 bytes."""
    return Message("video", _compact(media_id=media_id, title=title, description=description))


def textcard(title: str, description: str, url: str, btntxt: str | None = None) -> Message:
    """Text card: title ≤128 B, description ≤512 B (required, 41033), url ≤2,048 B, btntxt ≤4 chars (default 详情)."""
    return Message("textcard", _compact(title=title, description=description, url=url, btntxt=btntxt))


@dataclass(frozen=True)
class Article:
    """A news article: title ≤128 B (required), description ≤512 B, url ≤2,048 B, or a mini-program."""

    title: str
    description: str | None = None
    url: str | None = None
    picurl: str | None = None
    appid: str | None = None
    pagepath: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return _compact(title=self.title, description=self.description, url=self.url, picurl=self.picurl,
                        appid=self.appid, pagepath=self.pagepath)  # fmt: skip


@dataclass(frozen=True)
class MpArticle:
    """An mpnews article: title ≤128 B, thumb_media_id (an image), content ≤666 KB HTML, author ≤64 B, digest ≤512 B."""

    title: str
    thumb_media_id: str
    content: str
    author: str | None = None
    content_source_url: str | None = None
    digest: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return _compact(
            title=self.title, thumb_media_id=self.thumb_media_id, author=self.author,
            content_source_url=self.content_source_url, content=self.content, digest=self.digest,
        )  # fmt: skip


def _articles(articles: Sequence[Article | MpArticle | Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not 1 <= len(articles) <= 8:
        raise ValueError("news and mpnews take 1-8 articles (45008)")
    return [a.as_dict() if isinstance(a, Article | MpArticle) else dict(a) for a in articles]


def news(articles: Sequence[Article | Mapping[str, Any]]) -> Message:
    """News: 1-8 articles. Takes no ``safe`` (40074)."""
    return Message("news", {"articles": _articles(articles)})


def mpnews(articles: Sequence[MpArticle | Mapping[str, Any]]) -> Message:
    """mpnews: 1-8 articles; ``safe`` 2 (share inside the corp only) on message/send."""
    return Message("mpnews", {"articles": _articles(articles)})


def markdown(content: str) -> Message:
    """Markdown (WeCom's subset), ≤2,048 bytes. Takes no ``safe``."""
    return Message("markdown", {"content": content})


def template_card(card: Mapping[str, Any]) -> Message:
    """Any template card (§14.2), as the dict WeCom documents (message/send only)."""
    return Message("template_card", dict(card))


@dataclass(frozen=True)
class Button:
    """A card button: a callback button with ``key`` (echoed as ``EventKey``) or a link with ``url``.

    ``text`` ≤10 characters; ``style`` 1-4 (1 primary ... 4 negative); ``key`` ≤1,024 bytes, unique in the card.
    """

    text: str
    key: str | None = None
    style: int = 1
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if (self.key is None) == (self.url is None):
            raise ValueError("a button has either a key (callback) or a url (link)")
        if self.url is not None:
            return {"text": self.text, "style": self.style, "type": 1, "url": self.url}
        return {"text": self.text, "style": self.style, "key": self.key}


def button_card(
    *,
    task_id: str,
    title: str,
    buttons: Sequence[Button],
    desc: str | None = None,
    sub_title_text: str | None = None,
    horizontal: Sequence[Mapping[str, Any]] = (),
    card_action: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    quote_area: Mapping[str, Any] | None = None,
    button_selection: Mapping[str, Any] | None = None,
) -> Message:
    """A ``button_interaction`` template card (an approve/reject card, §14.2).

    ``task_id``: unique per app forever, ``[0-9A-Za-z_-@]`` ≤128 bytes (42014). 1-6 buttons; title ≤36
    chars, desc ≤44; ≤6 horizontal items. Clicks arrive as ``template_card_event`` callbacks carrying the
    button key and a one-shot ``ResponseCode`` for :func:`update_template_card`.
    """
    if not 1 <= len(buttons) <= 6:
        raise ValueError("a button card has 1-6 buttons")
    if len(horizontal) > 6:
        raise ValueError("at most 6 horizontal_content_list items (42035)")
    main_title = _compact(title=title, desc=desc)
    card: dict[str, Any] = {"card_type": "button_interaction"}
    if source is not None:
        card["source"] = dict(source)
    card["main_title"] = main_title
    if quote_area is not None:
        card["quote_area"] = dict(quote_area)
    if sub_title_text is not None:
        card["sub_title_text"] = sub_title_text
    if horizontal:
        card["horizontal_content_list"] = [dict(h) for h in horizontal]
    if card_action is not None:
        card["card_action"] = dict(card_action)
    card["task_id"] = task_id
    if button_selection is not None:
        card["button_selection"] = dict(button_selection)
    card["button_list"] = [b.as_dict() for b in buttons]
    return Message("template_card", card)


def envelope(path: str, message: Message, safe: int = 0) -> dict[str, Any]:
    """The request body for ``path`` (``"message"`` or ``"appchat"``) without recipients.

    ``safe`` goes at the top level and only for types that take it (§14.6); asking for ``safe`` on a type
    that does not take it is a ``ValueError`` (WeCom would answer 40074/40058).
    """
    if message.msgtype not in MSGTYPES[path]:
        raise ValueError(f"{path}: msgtype {message.msgtype!r} is not supported (40008)")
    if safe not in (0, 1, 2):
        raise ValueError("safe must be 0, 1 or 2")
    if safe == 2 and not (path == MESSAGE and message.msgtype == "mpnews"):
        raise ValueError("safe=2 is only for mpnews on message/send")
    payload = message.payload()
    if message.msgtype in SAFE_TYPES[path]:
        payload["safe"] = safe
    elif safe:
        raise ValueError(f"{path}: {message.msgtype} does not take safe")
    return payload


# --- message/send -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendResult:
    """What ``message/send`` answered. Rejected recipients are listed, lower-cased, never swallowed.

    Attributes:
        msgid: for ``message/recall``.
        response_code: for :func:`update_template_card` (interactive cards only; single use, 72 h).
        invaliduser, invalidparty, invalidtag: recipients WeCom did not accept (outside the app's
            visibility, unknown...). The rest were sent.
        unlicenseduser: in scope but without an API licence (mainly third-party apps).
    """

    msgid: str = ""
    response_code: str | None = None
    invaliduser: tuple[str, ...] = ()
    invalidparty: tuple[str, ...] = ()
    invalidtag: tuple[str, ...] = ()
    unlicenseduser: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def all_accepted(self) -> bool:
        """True when WeCom accepted every recipient."""
        return not (self.invaliduser or self.invalidparty or self.invalidtag or self.unlicenseduser)

    @classmethod
    def from_answer(cls, data: Mapping[str, Any]) -> SendResult:
        return cls(
            msgid=str(data.get("msgid") or ""),
            response_code=data.get("response_code") or None,
            invaliduser=tuple(u.lower() for u in split(data.get("invaliduser"))),
            invalidparty=split(data.get("invalidparty")),
            invalidtag=split(data.get("invalidtag")),
            unlicenseduser=tuple(u.lower() for u in split(data.get("unlicenseduser"))),
            raw={k: v for k, v in data.items() if k not in ("errcode", "errmsg")},
        )


def send(
    client: WeComClient,
    message: Message,
    *,
    touser: Iterable[str] | str = (),
    toparty: Iterable[int | str] | str = (),
    totag: Iterable[int | str] | str = (),
    agentid: int | None = None,
    safe: int = 0,
    enable_id_trans: bool = False,
    enable_duplicate_check: bool = False,
    duplicate_check_interval: int | None = None,
) -> SendResult:
    """``POST /cgi-bin/message/send``: an app message to members, departments and/or tags.

    Doc: https://developer.work.weixin.qq.com/document/path/90236 (contract §4, template cards §14.2).

    Limits: ≤1,000 users, ≤100 departments, ≤100 tags a call (``touser="@all"``: the app's whole scope).
    Per app per member **30/min and 1,000/h; the excess is dropped silently** (errcode 0), so each named
    user is taken from the budgets ``message.member_minute``/``message.member_hour`` first (departments
    and tags cannot be counted here). Per app per day: account cap × 200 person-times. Not counted in
    the basic API limit. Avoid sending at :00 and :30 (doc advice).

    Returns a :class:`SendResult`; rejected recipients are in it. All rejected: 81013 is raised
    (:class:`~wecom_plugin.wecom.errors.WeComApiError`, the echo on ``exc.body``).

    ``enable_duplicate_check``: WeCom does not deliver an identical request again within
    ``duplicate_check_interval`` seconds (default 1,800, at most 4 h) — what makes an operator-approved
    resend of an ``unknown`` step safe.
    """
    body = _recipients(touser, toparty, totag)
    body.update(envelope(MESSAGE, message, safe))
    body["agentid"] = _agentid(client, agentid)
    body["enable_id_trans"] = int(enable_id_trans)
    body["enable_duplicate_check"] = int(enable_duplicate_check)
    if enable_duplicate_check:
        interval = 1800 if duplicate_check_interval is None else int(duplicate_check_interval)
        if not 0 < interval <= DUPLICATE_CHECK_MAX:
            raise ValueError("duplicate_check_interval must be 1-14400 seconds")
        body["duplicate_check_interval"] = interval
    users = [] if body.get("touser") in (None, "@all") else split(body["touser"])
    spend = [Ask(limit.name, member_key(u)) for u in users for limit in (MESSAGE_MEMBER_MINUTE, MESSAGE_MEMBER_HOUR)]
    return SendResult.from_answer(client.post("message/send", body, spend=spend))


def _recipients(touser: Iterable[str] | str, toparty: Iterable[int | str] | str, totag: Iterable[int | str] | str):
    users, parties, tags = joined(touser), joined(toparty), joined(totag)
    if not (users or parties or tags):
        raise ValueError("message/send needs touser, toparty or totag")
    if users != "@all" and len(split(users)) > MAX_USERS:
        raise ValueError(f"at most {MAX_USERS} users a call (40032)")
    if len(split(parties)) > MAX_PARTIES:
        raise ValueError(f"at most {MAX_PARTIES} departments a call (82002)")
    if len(split(tags)) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags a call (82003)")
    body: dict[str, Any] = {}
    if users:
        body["touser"] = users
    if parties:
        body["toparty"] = parties
    if tags:
        body["totag"] = tags
    return body


def _agentid(client: WeComClient, agentid: int | None) -> int:
    value = agentid if agentid is not None else client.agent_id
    if value is None:
        raise ConfigurationError("WECOM_AGENT_ID: message calls need the app's agentid")
    return int(value)


def update_template_card(
    client: WeComClient,
    response_code: str,
    *,
    replace_name: str | None = None,
    card: Message | Mapping[str, Any] | None = None,
    userids: Iterable[str] = (),
    partyids: Iterable[int | str] = (),
    tagids: Iterable[int | str] = (),
    atall: bool = False,
    agentid: int | None = None,
    enable_id_trans: bool = False,
) -> tuple[str, ...]:
    """``POST /cgi-bin/message/update_template_card``: grey out a card's buttons (``replace_name``) or replace the card.

    Doc: https://developer.work.weixin.qq.com/document/path/94888 (3rd-party twin 94945; contract §14.4).
    Limits: none documented. ``response_code`` comes from the send answer or a click event and is
    **single use, valid 72 h** (reused: 42022; another app's: 42015). Targets: ≤1,000 userids, ≤100
    departments and tags, or ``atall`` (every recipient of the card). Returns the rejected userids,
    lower-cased (WeCom answers an array or a ``|``-joined string).
    """
    if (replace_name is None) == (card is None):
        raise ValueError("give exactly one of replace_name (grey the buttons) or card (replace the card)")
    body: dict[str, Any] = {}
    users = list(userids)
    parties = [int(p) for p in partyids]
    tags = [int(t) for t in tagids]
    if len(users) > MAX_USERS or len(parties) > MAX_PARTIES or len(tags) > MAX_TAGS:
        raise ValueError("at most 1,000 userids, 100 partyids and 100 tagids")
    if users:
        body["userids"] = users
    if parties:
        body["partyids"] = parties
    if tags:
        body["tagids"] = tags
    if atall:
        body["atall"] = 1
    body["agentid"] = _agentid(client, agentid)
    body["response_code"] = response_code
    if enable_id_trans:
        body["enable_id_trans"] = 1
    if replace_name is not None:
        body["button"] = {"replace_name": replace_name}
    else:
        inner = card.body if isinstance(card, Message) else card
        body["template_card"] = dict(inner or {})
    data = client.post("message/update_template_card", body)
    return tuple(u.lower() for u in split(data.get("invaliduser")))
