"""Typed WeCom callback events (contract §8, §14.3, §7.5), parsed from :func:`safexml.parse` output.

:func:`parse_event` looks an event up by ``(MsgType, Event, ChangeType)`` in :data:`REGISTRY`, most
specific first (``(type, event, change)``, then ``(type, event, None)``, then ``(type, None, None)``),
and falls back to :class:`UnknownEvent`, which keeps every raw field. It never raises: an authentic
callback that does not fit a type is still delivered, and a field WeCom sends malformed becomes
``None`` (the raw text stays in :attr:`~wecom_plugin.wecom.callbacks.Callback.fields`).

WeCom's rules reflected here:

* ``MsgType``/``Event``/``ChangeType`` match after trimming whitespace, case-insensitively; CDATA or
  plain text is the same to the parser (§8.1: the official samples do not wrap ``ChangeType``).
* change_contact events carry only what changed (§8.2): absent fields are ``None``, not ``""``.
  Contact-sync URLs configured after 2022-08-15 send only ids (§8.1, §8.4).
* Userids are case-insensitive (§0): :class:`UserId` keeps the id as sent and offers ``.folded``,
  the casefolded form the directory compares (same rule as ``wecom.client.fold_userid`` and ``domain.directory.fold``).
  External ids (``wm…``/``wo…`` in ``MemChangeList``) are opaque and stay plain ``str``.
* Events are thin hints that can arrive late, twice or out of order (§7.4, reliability §1.2):
  consumers re-read state from the API before acting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Fields = Mapping[str, Any]
_INTEGER = re.compile(r"-?[0-9]{1,19}")


class UserId(str):
    """A WeCom userid exactly as sent; ``.folded`` is the form to compare and look up by."""

    __slots__ = ()

    @property
    def folded(self) -> str:
        return self.casefold()


# --- field readers: lenient, never raising -------------------------------------------------------
def _text(fields: Fields, name: str) -> str | None:
    value = fields.get(name)
    return value if isinstance(value, str) else None


def _key(fields: Fields, name: str) -> str | None:
    """An enum-like value (MsgType, Event, ChangeType...): trimmed, lower-cased, None when absent or empty."""
    value = _text(fields, name)
    if value is None:
        return None
    return value.strip().lower() or None


def _int(fields: Fields, name: str) -> int | None:
    value = _text(fields, name)
    if value is None or not _INTEGER.fullmatch(value.strip()):
        return None
    return int(value.strip())


def _user(fields: Fields, name: str) -> UserId | None:
    value = _text(fields, name)
    return UserId(value) if value is not None else None


def _csv(fields: Fields, name: str) -> tuple[str, ...] | None:
    value = _text(fields, name)
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _csv_users(fields: Fields, name: str) -> tuple[UserId, ...] | None:
    parts = _csv(fields, name)
    return None if parts is None else tuple(UserId(p) for p in parts)


def _csv_ints(fields: Fields, name: str) -> tuple[int, ...] | None:
    parts = _csv(fields, name)
    if parts is None or not all(_INTEGER.fullmatch(p) for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _items(value: Any, name: str) -> list[Any]:
    """``<Parent><name>..</name><name>..</name></Parent>`` parsed → the list of ``name`` values (0, 1 or many)."""
    if not isinstance(value, Mapping):
        return []
    inner = value.get(name)
    if inner is None:
        return []
    return inner if isinstance(inner, list) else [inner]


# --- base ------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Event:
    """The header every callback carries (§8)."""

    msg_type: str | None = None  # MsgType, lower-cased
    event: str | None = None  # Event, lower-cased
    change_type: str | None = None  # ChangeType, lower-cased
    to_user: str | None = None  # ToUserName: the corp id
    from_user: UserId | None = None  # FromUserName: "sys" for system events, else the member's userid
    create_time: int | None = None  # CreateTime, unix seconds
    agent_id: int | None = None  # AgentID (absent on contact-sync callbacks)

    @classmethod
    def from_fields(cls, fields: Fields) -> Event:
        return cls(**_header(fields), **cls._specific(fields))

    @classmethod
    def _specific(cls, fields: Fields) -> dict[str, Any]:
        return {}


def _header(fields: Fields) -> dict[str, Any]:
    return {
        "msg_type": _key(fields, "MsgType"),
        "event": _key(fields, "Event"),
        "change_type": _key(fields, "ChangeType"),
        "to_user": _text(fields, "ToUserName"),
        "from_user": _user(fields, "FromUserName"),
        "create_time": _int(fields, "CreateTime"),
        "agent_id": _int(fields, "AgentID"),
    }


REGISTRY: dict[tuple[str, str | None, str | None], type[Event]] = {}


def register(msg_type: str, event: str | None = None, change_type: str | None = None) -> Callable[[type], type]:
    """Class decorator: ``cls`` parses callbacks with this (MsgType, Event, ChangeType); ``None`` = any."""

    def add(cls: type) -> type:
        REGISTRY[(msg_type, event, change_type)] = cls
        return cls

    return add


@dataclass(frozen=True, kw_only=True)
class UnknownEvent(Event):
    """Anything :data:`REGISTRY` has no type for. Not an error: ``fields`` keeps the raw callback."""

    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def from_fields(cls, fields: Fields) -> UnknownEvent:
        return cls(**_header(fields), fields=dict(fields))


# --- change_contact: members (§8.1–8.3) ------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class UserChange(Event):
    """A member was created or updated. Every field but ``user_id`` may be absent (None)."""

    user_id: UserId = UserId("")  # UserID: the old id on update_user
    new_user_id: UserId | None = None  # NewUserID: present only when the id changed
    name: str | None = None
    departments: tuple[int, ...] | None = None  # Department "1,2,3"
    main_department: int | None = None
    is_leader_in_dept: tuple[int, ...] | None = None  # IsLeaderInDept "1,0,0", parallel to departments
    direct_leader: tuple[UserId, ...] | None = None
    position: str | None = None
    mobile: str | None = None
    gender: int | None = None
    email: str | None = None
    biz_mail: str | None = None
    status: int | None = None  # 1 active, 2 disabled, 4 not activated, 5 left (§2.4); disable/leave arrive here
    avatar: str | None = None
    alias: str | None = None
    telephone: str | None = None
    address: str | None = None
    ext_attr: Mapping[str, Any] | None = field(default=None, hash=False)  # raw nested ExtAttr

    @property
    def current_user_id(self) -> UserId:
        """The member's id after this event: ``new_user_id`` if it changed, else ``user_id``."""
        return self.new_user_id or self.user_id

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        ext = f.get("ExtAttr")
        return {
            "user_id": _user(f, "UserID") or UserId(""),
            "new_user_id": _user(f, "NewUserID") or None,
            "name": _text(f, "Name"),
            "departments": _csv_ints(f, "Department"),
            "main_department": _int(f, "MainDepartment"),
            "is_leader_in_dept": _csv_ints(f, "IsLeaderInDept"),
            "direct_leader": _csv_users(f, "DirectLeader"),
            "position": _text(f, "Position"),
            "mobile": _text(f, "Mobile"),
            "gender": _int(f, "Gender"),
            "email": _text(f, "Email"),
            "biz_mail": _text(f, "BizMail"),
            "status": _int(f, "Status"),
            "avatar": _text(f, "Avatar"),
            "alias": _text(f, "Alias"),
            "telephone": _text(f, "Telephone"),
            "address": _text(f, "Address"),
            "ext_attr": dict(ext) if isinstance(ext, Mapping) else None,
        }


@register("event", "change_contact", "create_user")
@dataclass(frozen=True, kw_only=True)
class UserCreated(UserChange):
    """change_contact/create_user (§8.1)."""


@register("event", "change_contact", "update_user")
@dataclass(frozen=True, kw_only=True)
class UserUpdated(UserChange):
    """change_contact/update_user (§8.2): only changed fields besides UserID; Status carries disable/leave."""


@register("event", "change_contact", "delete_user")
@dataclass(frozen=True, kw_only=True)
class UserDeleted(Event):
    """change_contact/delete_user (§8.3): only the id."""

    user_id: UserId = UserId("")

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        return {"user_id": _user(f, "UserID") or UserId("")}


# --- change_contact: departments (§8.4) ------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PartyChange(Event):
    party_id: int | None = None  # Id
    name: str | None = None
    parent_id: int | None = None
    order: int | None = None

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        return {
            "party_id": _int(f, "Id"),
            "name": _text(f, "Name"),
            "parent_id": _int(f, "ParentId"),
            "order": _int(f, "Order"),
        }


@register("event", "change_contact", "create_party")
@dataclass(frozen=True, kw_only=True)
class PartyCreated(PartyChange):
    """change_contact/create_party."""


@register("event", "change_contact", "update_party")
@dataclass(frozen=True, kw_only=True)
class PartyUpdated(PartyChange):
    """change_contact/update_party: only changed fields (Name/ParentId)."""


@register("event", "change_contact", "delete_party")
@dataclass(frozen=True, kw_only=True)
class PartyDeleted(PartyChange):
    """change_contact/delete_party: only Id."""


# --- change_contact: tags (§8.5) -------------------------------------------------------------------
@register("event", "change_contact", "update_tag")
@dataclass(frozen=True, kw_only=True)
class TagUpdated(Event):
    """change_contact/update_tag. Item lists are present only when non-empty (empty tuple here)."""

    tag_id: int | None = None
    add_user_items: tuple[UserId, ...] = ()
    del_user_items: tuple[UserId, ...] = ()
    add_party_items: tuple[int, ...] = ()
    del_party_items: tuple[int, ...] = ()

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        return {
            "tag_id": _int(f, "TagId"),
            "add_user_items": _csv_users(f, "AddUserItems") or (),
            "del_user_items": _csv_users(f, "DelUserItems") or (),
            "add_party_items": _csv_ints(f, "AddPartyItems") or (),
            "del_party_items": _csv_ints(f, "DelPartyItems") or (),
        }


# --- customer groups (§8.6) ------------------------------------------------------------------------
@register("event", "change_external_chat")
@dataclass(frozen=True, kw_only=True)
class ExternalChatChanged(Event):
    """change_external_chat; ``change_type`` is create / update / dismiss."""

    chat_id: str | None = None
    update_detail: str | None = None  # add_member, del_member, change_owner, change_name, change_notice
    join_scene: int | None = None  # add_member: 0 invited, 3 scanned the group QR code
    quit_scene: int | None = None  # del_member: 0 left, 1 removed by owner/admin
    mem_change_cnt: int | None = None
    mem_change_list: tuple[str, ...] = ()  # MemChangeList/Item: userids or external userids, as sent
    last_mem_ver: str | None = None
    cur_mem_ver: str | None = None

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        return {
            "chat_id": _text(f, "ChatId"),
            "update_detail": _key(f, "UpdateDetail"),
            "join_scene": _int(f, "JoinScene"),
            "quit_scene": _int(f, "QuitScene"),
            "mem_change_cnt": _int(f, "MemChangeCnt"),
            "mem_change_list": tuple(v for v in _items(f.get("MemChangeList"), "Item") if isinstance(v, str)),
            "last_mem_ver": _text(f, "LastMemVer"),
            "cur_mem_ver": _text(f, "CurMemVer"),
        }


# --- batch jobs (§8.7) -----------------------------------------------------------------------------
@register("event", "batch_job_result")
@dataclass(frozen=True, kw_only=True)
class BatchJobResult(Event):
    """batch_job_result: poll ``batch/getresult?jobid=`` for the details."""

    job_id: str | None = None
    job_type: str | None = None
    err_code: int | None = None
    err_msg: str | None = None

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        job = f.get("BatchJob")
        job = job if isinstance(job, Mapping) else {}
        return {
            "job_id": _text(job, "JobId"),
            "job_type": _text(job, "JobType"),
            "err_code": _int(job, "ErrCode"),
            "err_msg": _text(job, "ErrMsg"),
        }


# --- app messages and card clicks (§7.5, §14.3) ----------------------------------------------------
@register("text")
@dataclass(frozen=True, kw_only=True)
class TextMessage(Event):
    """A member's text message to the app; ``from_user`` is the sender, ``msg_id`` the dedupe key."""

    msg_id: str | None = None  # kept as text: a 64-bit id
    content: str = ""

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        msg_id = _text(f, "MsgId")
        return {"msg_id": msg_id.strip() if msg_id else None, "content": _text(f, "Content") or ""}


@dataclass(frozen=True)
class SelectedItem:
    """One answered question of a card: ``QuestionKey`` and the chosen ``OptionId``s."""

    question_key: str
    option_ids: tuple[str, ...]


@register("event", "template_card_event")
@dataclass(frozen=True, kw_only=True)
class TemplateCardEvent(Event):
    """A member clicked a template-card button; ``from_user`` is who clicked (§14.3).

    Several events per member are possible (buttons stay clickable): dedupe on
    ``(from_user.folded, task_id, event_key)`` and keep approve/reject idempotent.
    """

    event_key: str | None = None
    task_id: str | None = None
    card_type: str | None = None
    response_code: str | None = None
    selected_items: tuple[SelectedItem, ...] = ()

    @classmethod
    def _specific(cls, f: Fields) -> dict[str, Any]:
        items = []
        for item in _items(f.get("SelectedItems"), "SelectedItem"):
            if isinstance(item, Mapping):
                options = _items(item.get("OptionIds"), "OptionId")
                key = item.get("QuestionKey")
                items.append(
                    SelectedItem(
                        question_key=key if isinstance(key, str) else "",
                        option_ids=tuple(o for o in options if isinstance(o, str)),
                    )
                )
        return {
            "event_key": _text(f, "EventKey"),
            "task_id": _text(f, "TaskId"),
            "card_type": _key(f, "CardType"),
            "response_code": _text(f, "ResponseCode"),
            "selected_items": tuple(items),
        }


def lookup(msg_type: str | None, event: str | None, change_type: str | None) -> type[Event] | None:
    """The registered type for these (lower-cased) keys, most specific first; None if none."""
    if msg_type is None:
        return None
    for key in ((msg_type, event, change_type), (msg_type, event, None), (msg_type, None, None)):
        if key in REGISTRY:
            return REGISTRY[key]
    return None


def parse_event(fields: Fields) -> Event:
    """The typed event for a parsed callback; :class:`UnknownEvent` for anything unregistered. Never raises."""
    header = _header(fields)
    cls = lookup(header["msg_type"], header["event"], header["change_type"])
    if cls is None:
        return UnknownEvent.from_fields(fields)
    try:
        return cls.from_fields(fields)
    except (TypeError, ValueError, AttributeError):  # a field shape no WeCom sample has
        return UnknownEvent.from_fields(fields)
