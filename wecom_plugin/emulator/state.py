"""The sandbox tenant: one WeCom corp held in memory.

:class:`Tenant` is long-lived (the WSGI app keeps a reference to it); :meth:`Tenant.reset` swaps the
whole corp (:class:`CorpData`) for a freshly seeded one, so a server can be reused across tests.

Everything mutable is guarded by ``tenant.lock`` (an ``RLock``). Request handlers hold it only while
they compute; sleeps injected by faults happen outside it (see :meth:`Tenant.sleep`).

Directory changes made through the admin API go through the methods in the "directory changes"
section; each emits typed :class:`Change` records to listeners registered with :meth:`Tenant.on_change`
(the hook the callback sender builds on). Listeners run after the lock is released, in the thread
that made the change.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from .clock import Clock, ManualClock, local_day_index

log = logging.getLogger(__name__)

USERID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-@.]{0,63}$")
USER_STATUSES = (1, 2, 4, 5)  # active / disabled / unactivated / left the corp
SENSITIVE_FIELDS = ("mobile", "gender", "email", "biz_mail", "avatar", "thumb_avatar", "qr_code", "address")
HOURLY_CAP_BY_CORP_SIZE = {"small": 150_000, "medium": 350_000, "large": 700_000}


# --------------------------------------------------------------------------------------------------
# Flags: every [unconfirmed] or configurable behaviour
# --------------------------------------------------------------------------------------------------
_CHOICES: dict[str, tuple[Any, ...]] = {
    "expired_token_errcode": (42001, 40014),
    "gettoken_expires_in": ("full", "remaining"),
    "sensitive_fields": ("absent", "empty"),
    "list_id_app_errcode": (48002, 60011),
    "appchat_unknown_member_errcode": (60111, 86216, 86007),
    "corp_size": tuple(HOURLY_CAP_BY_CORP_SIZE),
    "rate_window": ("sliding", "fixed"),
    "on_member_delete": ("remove", "keep"),
    "owner_succession": ("earliest", "random", "none"),
    "disabled_member_in_chat": ("keep", "remove"),
    "groupchat_resigned_listing": ("doc", "observed"),
    "callback_update_fields": ("changed", "all"),
    "contact_callback_minimal_update_user": ("always", "ids_changed"),
    "callback_timestamp": ("tenant", "wall"),
    "external_chat_receiver": ("app", "contact_sync", "both"),
}


@dataclass
class Flags:
    """Switchable behaviours. Defaults follow the contract; ``[unconfirmed]`` ones pick the strict side.

    See docs/emulator.md for the contract section and confidence of each.
    """

    token_ttl: int = 7200
    expired_token_errcode: int = 42001
    gettoken_same_token_while_valid: bool = True
    gettoken_expires_in: str = "full"
    gettoken_failures_per_hour: int | None = 2000
    sensitive_fields: str = "absent"
    simplelist_fetch_child: bool = False
    list_id_app_errcode: int = 48002
    appchat_max_members: int = 2000
    appchat_app_counts_as_member: bool = True
    appchat_owner_must_be_member: bool = True
    appchat_unknown_member_errcode: int = 60111
    appchat_creates_per_day: int = 1000
    appchat_updates_per_hour: int = 1000
    appchat_member_per_minute: int = 200
    appchat_member_per_day: int = 10_000
    appchat_corp_per_minute: int = 20_000
    corp_size: str = "small"
    appchat_corp_per_hour: int | None = None  # None: by corp_size (150k/350k/700k)
    appchat_text_overflow_error: bool = True
    appchat_news_safe_allowed: bool = False
    message_member_per_minute: int = 30
    message_member_per_hour: int = 1000
    message_app_daily_per_account: int = 200
    robot_per_minute: int = 20
    rate_window: str = "sliding"
    # §10.2: once a limit answers 45009, WeCom blocks it for the limit's period (60 s for a minute limit,
    # an hour for an hourly one; a daily one until midnight). False: only the window counts.
    block_after_limit: bool = True
    basic_limits: bool = True
    basic_per_minute: int = 10_000
    basic_per_hour: int = 150_000
    max_concurrency: int | None = None
    strict_safe: bool = False
    on_member_delete: str = "remove"
    owner_succession: str = "earliest"
    disabled_member_in_chat: str = "keep"
    groupchat_resigned_listing: str = "doc"
    groupchat_scope_limit: int = 1000
    groupchat_transfer_delay: int = 0
    onjob_transfers_per_90_days: int = 2
    transfers_per_day_per_owner: int = 300
    response_code_ttl: int = 72 * 3600
    media_ttl: int = 3 * 86400
    oauth_code_ttl: int = 300
    media_check_format: bool = True
    error_headers: bool = True
    request_log_max: int = 100_000
    # callbacks (§7, §8; emulator/callbacks.py)
    contact_callback_pre_2022: bool = False  # contact-sync receiver configured before 2022-08-15: full payloads
    callback_update_fields: str = "changed"  # update_user/update_party: only changed fields, or every field
    contact_callback_minimal_update_user: str = "always"  # minimised update_user on any change, or on id changes
    external_chat_receiver: str = "app"  # change_external_chat goes to the app receiver(s) in 客户联系
    callback_timeout: float = 5.0  # seconds before WeCom gives up on an attempt
    callback_retries: int = 3  # re-sends after the first attempt ("总共重试三次": 3 retries, 4 deliveries)
    callback_retry_delay: float = 0.0  # seconds between a failed attempt and the next
    callback_verify_timeout: float = 1.0  # URL verification deadline
    callback_timestamp: str = "tenant"  # query timestamp and CreateTime from the tenant clock or the wall clock
    callback_workers: int = 1  # deliveries sent in parallel
    callback_log_max: int = 10_000  # deliveries kept in the log

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and apply ``changes``; raises :class:`ValueError` naming the bad flag."""
        known = {f.name: f for f in fields(self)}
        staged: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown flag {name!r}")
            current = getattr(self, name)
            optional = "None" in str(known[name].type)
            if value is None and optional:
                staged[name] = None
                continue
            if isinstance(current, bool) or known[name].type == "bool":
                if not isinstance(value, bool):
                    raise ValueError(f"flag {name!r} takes true/false")
            elif "int" in str(known[name].type):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"flag {name!r} takes an integer")
                if value < 0:
                    raise ValueError(f"flag {name!r} must be >= 0")
            elif "float" in str(known[name].type):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"flag {name!r} takes a number")
                if value < 0:
                    raise ValueError(f"flag {name!r} must be >= 0")
                value = float(value)
            elif not isinstance(value, str):
                raise ValueError(f"flag {name!r} takes a string")
            if name in _CHOICES and value not in _CHOICES[name]:
                raise ValueError(f"flag {name!r} takes one of {list(_CHOICES[name])}")
            staged[name] = value
        for name, value in staged.items():
            setattr(self, name, value)
        return staged

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @staticmethod
    def choices() -> dict[str, list[Any]]:
        return {k: list(v) for k, v in _CHOICES.items()}


# --------------------------------------------------------------------------------------------------
# Corp entities
# --------------------------------------------------------------------------------------------------
@dataclass
class Department:
    id: int
    name: str
    parentid: int
    order: int = 0
    name_en: str = ""


@dataclass
class User:
    userid: str  # stored spelling; lookups use ``key`` (lower case)
    name: str
    departments: list[int]
    order: list[int]
    is_leader_in_dept: list[int]
    main_department: int
    position: str = ""
    status: int = 1
    direct_leader: list[str] = field(default_factory=list)
    mobile: str = ""
    gender: str = "0"
    email: str = ""
    biz_mail: str = ""
    avatar: str = ""
    alias: str = ""
    telephone: str = ""
    address: str = ""
    english_name: str = ""
    external_position: str = ""
    customer_contact: bool = True  # has the 客户联系 function (needed to inherit customer groups)
    open_userid: str = ""
    extattr: list[dict[str, Any]] = field(default_factory=list)  # 自定义字段 (user/get extattr.attrs, §2.4)

    @property
    def key(self) -> str:
        return self.userid.lower()


@dataclass
class Tag:
    tagid: int
    tagname: str
    users: dict[str, None] = field(default_factory=dict)  # ordered set of user keys
    parties: list[int] = field(default_factory=list)


@dataclass
class Visibility:
    departments: set[int] = field(default_factory=lambda: {1})
    users: set[str] = field(default_factory=set)  # user keys
    tags: set[int] = field(default_factory=set)


@dataclass
class App:
    """A self-built app (自建应用)."""

    agentid: int
    name: str
    secret: str
    created_after_2022: bool = True
    visibility: Visibility = field(default_factory=Visibility)
    trusted_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    customer_contact: bool = True  # listed in 客户联系 → 可调用接口的应用
    trusted_domain: str = ""
    kind: str = "app"

    @property
    def principal_id(self) -> str:
        return f"app:{self.agentid}"

    @property
    def enforce_trusted_ip(self) -> bool:
        return self.created_after_2022


@dataclass
class ContactSync:
    """The 通讯录同步 (contact-sync assistant) secret."""

    secret: str
    trusted_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    old_ips: list[str] = field(default_factory=list)  # IPs used before 2022-08-15: detail reads allowed
    enforce_trusted_ip: bool = True
    kind: str = "contact_sync"
    agentid: int | None = None
    principal_id: str = "contact_sync"


@dataclass
class AppChat:
    chatid: str
    name: str
    owner: str | None  # user key
    members: dict[str, str]  # user key -> spelling at the time (ordered by join)
    creator: int  # agentid
    created_at: float
    chat_type: int = 0


@dataclass
class CustomerGroup:
    chat_id: str
    name: str
    owner: str  # userid spelling
    create_time: int
    members: list[dict[str, Any]]
    notice: str = ""
    admins: list[str] = field(default_factory=list)
    transferred_at: float | None = None  # last resigned-owner transfer (status 2 → 3 under the heir)
    onjob_transfers: list[float] = field(default_factory=list)

    def status(self, data: CorpData, now: float, transfer_delay: float) -> int:
        """0 owner active · 1 owner resigned · 2 inheritance in progress · 3 inheritance done (§6.1).

        The current owner's departure comes first: a group inherited once (2/3 under its heir) is
        "跟进人离职" (1) again when the heir is deleted, and ``groupchat/transfer`` may move it again
        (§6.3 only asks that the owner resigned) [unconfirmed: what WeCom lists for such a group]."""
        key = self.owner.lower()
        if key not in data.users and key in data.departed:
            return 1
        if self.transferred_at is not None:
            return 3 if now >= self.transferred_at + transfer_delay else 2
        return 0

    def member_version(self) -> str:
        ids = ",".join(f"{m['type']}:{m['userid']}" for m in self.members)
        return hashlib.md5(ids.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Robot:
    key: str
    chatid: str
    name: str = "机器人"


@dataclass
class Token:
    value: str
    principal_id: str
    issued_at: float
    expires_at: float
    invalidated_errcode: int | None = None


@dataclass
class OAuthCode:
    code: str
    issued_at: float
    userid: str | None = None
    openid: str | None = None
    external_userid: str | None = None
    agentid: int | None = None
    scope: str = "snsapi_base"
    redirect_domain: str | None = None
    used: bool = False


@dataclass
class Media:
    media_id: str
    type: str
    filename: str
    size: int
    md5: str
    created_at: float
    robot_key: str | None = None


@dataclass
class Message:
    """One send: who got it (``recipients[key] is None``) and who silently did not (reason string)."""

    msgid: str
    seq: int
    ts: float
    path: str  # "appchat" | "message" | "robot"
    msgtype: str
    content: Any
    safe: int = 0
    agentid: int | None = None
    chatid: str | None = None
    robot_key: str | None = None
    recipients: dict[str, str | None] = field(default_factory=dict)
    spelling: dict[str, str] = field(default_factory=dict)
    task_id: str | None = None
    response_code: str | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    request: dict[str, Any] | None = None

    def view(self, include_dropped: bool = True) -> dict[str, Any]:
        delivered = [self.spelling.get(k, k) for k, r in self.recipients.items() if r is None]
        out: dict[str, Any] = {
            "msgid": self.msgid,
            "seq": self.seq,
            "ts": self.ts,
            "path": self.path,
            "msgtype": self.msgtype,
            "content": self.content,
            "safe": self.safe,
            "agentid": self.agentid,
            "chatid": self.chatid,
            "robot_key": self.robot_key,
            "delivered": delivered,
            "task_id": self.task_id,
            "response_code": self.response_code,
            "updates": self.updates,
        }
        if include_dropped:
            out["dropped"] = {self.spelling.get(k, k): r for k, r in self.recipients.items() if r is not None}
        return out


@dataclass
class ResponseCode:
    code: str
    agentid: int
    msgid: str
    issued_at: float
    used: bool = False


@dataclass
class Departed:
    userid: str
    name: str
    departed_at: float
    customer_contact: bool = True


# --------------------------------------------------------------------------------------------------
# Change records (for the callback sender, follow-up task)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    seq: int
    at: float

    @property
    def change_type(self) -> str:  # the change_contact ChangeType
        raise NotImplementedError

    @property
    def event(self) -> str:  # the callback Event
        return "change_contact"


@dataclass(frozen=True)
class UserCreated(Change):
    userid: str
    user: dict[str, Any]

    @property
    def change_type(self) -> str:
        return "create_user"


@dataclass(frozen=True)
class UserUpdated(Change):
    userid: str  # the userid before the change
    new_userid: str | None
    changes: dict[str, Any]  # only the fields that changed, new values

    @property
    def change_type(self) -> str:
        return "update_user"


@dataclass(frozen=True)
class UserDeleted(Change):
    userid: str

    @property
    def change_type(self) -> str:
        return "delete_user"


@dataclass(frozen=True)
class DepartmentCreated(Change):
    id: int
    name: str
    parentid: int
    order: int

    @property
    def change_type(self) -> str:
        return "create_party"


@dataclass(frozen=True)
class DepartmentUpdated(Change):
    id: int
    changes: dict[str, Any]

    @property
    def change_type(self) -> str:
        return "update_party"


@dataclass(frozen=True)
class DepartmentDeleted(Change):
    id: int

    @property
    def change_type(self) -> str:
        return "delete_party"


@dataclass(frozen=True)
class TagUpdated(Change):
    tagid: int
    add_users: tuple[str, ...] = ()
    del_users: tuple[str, ...] = ()
    add_parties: tuple[int, ...] = ()
    del_parties: tuple[int, ...] = ()

    @property
    def change_type(self) -> str:
        return "update_tag"


@dataclass(frozen=True)
class ExternalChatChanged(Change):
    """A customer group changed in the WeCom client (change_external_chat, §8.6); never from the API."""

    chat_id: str
    kind: str  # "create" | "update" | "dismiss" (the ChangeType)
    update_detail: str | None = None  # add_member · del_member · change_owner · change_name · change_notice
    join_scene: int | None = None
    quit_scene: int | None = None
    members: tuple[str, ...] = ()  # MemChangeList
    last_mem_ver: str | None = None
    cur_mem_ver: str | None = None

    @property
    def change_type(self) -> str:
        return self.kind

    @property
    def event(self) -> str:
        return "change_external_chat"


ChangeListener = Callable[[Change], None]


class DirectoryError(ValueError):
    """An admin directory change that WeCom would refuse (bad id, conflict...)."""


# --------------------------------------------------------------------------------------------------
# Rate windows
# --------------------------------------------------------------------------------------------------
DAY = "day"  # period marker: the Asia/Shanghai natural day


class Window:
    """A counter over a period: sliding (1-second buckets) or fixed (aligned) or the natural day."""

    __slots__ = ("period", "sliding", "buckets", "total", "index", "count")

    def __init__(self, period: float | str, sliding: bool) -> None:
        self.period = period
        self.sliding = sliding and period != DAY
        self.buckets: deque[list[int]] = deque()
        self.total = 0
        self.index = -1
        self.count = 0

    def _fixed_index(self, now: float) -> int:
        if self.period == DAY:
            return local_day_index(now)
        return int(now // float(self.period))

    def used(self, now: float) -> int:
        if self.sliding:
            horizon = int(now) - int(float(self.period))
            buckets = self.buckets
            while buckets and buckets[0][0] <= horizon:
                self.total -= buckets.popleft()[1]
            return self.total
        idx = self._fixed_index(now)
        if idx != self.index:
            self.index, self.count = idx, 0
        return self.count

    def add(self, now: float, n: int = 1) -> None:
        if self.sliding:
            self.used(now)
            sec = int(now)
            if self.buckets and self.buckets[-1][0] == sec:
                self.buckets[-1][1] += n
            else:
                self.buckets.append([sec, n])
            self.total += n
        else:
            self.used(now)
            self.count += n


class Limiter:
    """Keyed windows: ``room(key, period, limit)`` then ``add(...)`` when the action happens."""

    def __init__(self, sliding: bool = True) -> None:
        self.sliding = sliding
        self.windows: dict[tuple[Any, ...], Window] = {}
        self.blocked: dict[tuple[Any, ...], float] = {}  # key -> time its 45009 block ends

    def window(self, key: tuple[Any, ...], period: float | str) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window(period, self.sliding)
        return w

    def room(self, key: tuple[Any, ...], period: float | str, limit: int, now: float) -> int:
        return limit - self.window(key, period).used(now)

    def add(self, key: tuple[Any, ...], period: float | str, now: float, n: int = 1) -> None:
        self.window(key, period).add(now, n)

    def exceeded(self, key: tuple[Any, ...], period: float | str, limit: int, now: float, *, block: bool) -> bool:
        """True if ``key`` is over ``limit`` (answer 45009). With ``block``, hitting the limit blocks the
        key for the limit's whole period, as WeCom does (§10.2), even once the window has room again."""
        if now < self.blocked.get(key, 0.0):
            return True
        if self.room(key, period, limit, now) > 0:
            return False
        if block and period != DAY:  # the natural day already ends at midnight
            self.blocked[key] = now + float(period)
        return True

    def take(self, key: tuple[Any, ...], period: float | str, limit: int, now: float, n: int = 1) -> bool:
        """Consume ``n`` if it fits; returns whether it did."""
        w = self.window(key, period)
        if w.used(now) + n > limit:
            return False
        w.add(now, n)
        return True


# --------------------------------------------------------------------------------------------------
# Request log and faults
# --------------------------------------------------------------------------------------------------
class RequestLog:
    """Every API request: endpoint, params/body, caller ip, errcode. Bounded (oldest dropped)."""

    def __init__(self, maxlen: int = 100_000) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen or None)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> int:
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)
            return self._seq

    def find(
        self,
        endpoint: str | None = None,
        chatid: str | None = None,
        errcode: int | None = None,
        since: int | None = None,
        principal: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._entries)
        out = []
        for e in entries:
            if since is not None and e["seq"] <= since:
                continue
            if endpoint is not None and e["endpoint"] != endpoint:
                continue
            if chatid is not None and chatid not in e.get("chatids", ()):
                continue
            if errcode is not None and e.get("errcode") != errcode:
                continue
            if principal is not None and e.get("principal") != principal:
                continue
            out.append(e)
        if limit is not None:
            out = out[-limit:]
        return out

    def clear(self, maxlen: int | None = None) -> None:
        with self._lock:
            if maxlen is not None:
                self._entries = deque(maxlen=maxlen or None)
            else:
                self._entries.clear()

    @property
    def last_seq(self) -> int:
        return self._seq


FAULT_ACTIONS = (
    "errcode",
    "timeout",
    "timeout_after_apply",
    "latency",
    "empty_directory",
    "truncated_directory",
    "http_status",  # a gateway in front of WeCom failing: HTTP `status` (default 502), an HTML body
    "bad_body",  # HTTP 200 with a body that is not JSON
)


@dataclass
class Fault:
    id: int
    action: str
    endpoint: str = "*"  # "appchat/update", or "*" for every API endpoint
    chatid: str | None = None
    errcode: int | None = None
    errmsg: str | None = None
    seconds: float = 30.0  # timeout / latency
    times: int | None = None  # remaining applications; None = until removed
    probability: float = 1.0
    keep: int | None = None  # truncated_directory: rows kept (default: half)
    status: int = 502  # http_status: the HTTP status answered
    hits: int = 0

    def view(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------------------------------
# The corp
# --------------------------------------------------------------------------------------------------
@dataclass
class CorpData:
    """All corp state; replaced wholesale on reset."""

    corp_id: str
    corp_name: str = "示例企业"
    apps: dict[int, App] = field(default_factory=dict)
    contact_sync: ContactSync | None = None
    foreign_secrets: set[str] = field(default_factory=set)  # secrets of other corps → 40091
    departments: dict[int, Department] = field(default_factory=dict)
    children: dict[int, list[int]] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)  # key -> user (insertion order = directory order)
    dept_members: dict[int, dict[str, None]] = field(default_factory=dict)
    tags: dict[int, Tag] = field(default_factory=dict)
    chats: dict[str, AppChat] = field(default_factory=dict)
    user_chats: dict[str, dict[str, None]] = field(default_factory=dict)  # user key -> chatids
    robots: dict[str, Robot] = field(default_factory=dict)
    customer_groups: dict[str, CustomerGroup] = field(default_factory=dict)
    departed: dict[str, Departed] = field(default_factory=dict)  # key -> record
    tokens: dict[str, Token] = field(default_factory=dict)
    current_token: dict[str, str] = field(default_factory=dict)  # principal id -> token value
    oauth_codes: dict[str, OAuthCode] = field(default_factory=dict)
    user_tickets: dict[str, tuple[str, float]] = field(default_factory=dict)
    media: dict[str, Media] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    chat_messages: dict[str, list[str]] = field(default_factory=dict)
    inbox: dict[str, list[str]] = field(default_factory=dict)  # user key -> msgids (incl. dropped)
    task_ids: dict[tuple[int, str], str] = field(default_factory=dict)  # (agentid, task_id) -> msgid
    response_codes: dict[str, ResponseCode] = field(default_factory=dict)
    dedupe: dict[tuple[int, str], tuple[float, str]] = field(default_factory=dict)
    version: int = 0
    seed: int = 0

    # ---- indexes -------------------------------------------------------------------------------
    def rebuild_indexes(self) -> None:
        self.children = {d: [] for d in self.departments}
        for d in self.departments.values():
            if d.parentid in self.children and d.id != d.parentid:
                self.children[d.parentid].append(d.id)
        for kids in self.children.values():
            kids.sort(key=lambda i: (-self.departments[i].order, i))
        self.dept_members = {d: {} for d in self.departments}
        for key, u in self.users.items():
            for d in u.departments:
                self.dept_members.setdefault(d, {})[key] = None
        self.user_chats = {}
        for chat in self.chats.values():
            for key in chat.members:
                self.user_chats.setdefault(key, {})[chat.chatid] = None
        self.version += 1

    def subtree(self, dept_id: int) -> list[int]:
        """``dept_id`` and all its descendants, pre-order (children by ``order`` desc)."""
        out, stack = [], [dept_id]
        while stack:
            d = stack.pop()
            if d not in self.departments:
                continue
            out.append(d)
            stack.extend(reversed(self.children.get(d, ())))
        return out

    def depth(self, dept_id: int) -> int:
        n, d = 0, dept_id
        while d in self.departments and d != 1 and n < 64:
            d = self.departments[d].parentid
            n += 1
        return n

    def department_leaders(self, dept_id: int) -> list[str]:
        out = []
        for key in self.dept_members.get(dept_id, ()):
            u = self.users[key]
            for d, leader in zip(u.departments, u.is_leader_in_dept, strict=False):
                if d == dept_id and leader:
                    out.append(u.userid)
        return out


class Tenant:
    """The sandbox tenant: corp state + clock + flags + request log + faults + change listeners.

    Args:
        data: the corp (see :mod:`wecom_plugin.emulator.org` to build one).
        clock: defaults to a :class:`~wecom_plugin.emulator.clock.ManualClock`.
        flags: defaults to :class:`Flags()`.
        source: how ``data`` was built (``"generated:60:1"``, a path or a dict), reused by :meth:`reset`.
    """

    def __init__(
        self,
        data: CorpData,
        clock: Clock | None = None,
        flags: Flags | None = None,
        source: Any = None,
    ) -> None:
        self.lock = threading.RLock()
        self.data = data
        self.clock: Clock = clock or ManualClock()
        self.flags = flags or Flags()
        self.source = source
        self.rng = random.Random(data.seed)
        self.limiter = Limiter(sliding=self.flags.rate_window == "sliding")
        self.request_log = RequestLog(self.flags.request_log_max)
        self.faults: dict[int, Fault] = {}
        self._fault_seq = 0
        self._listeners: list[ChangeListener] = []
        self.changes: deque[Change] = deque(maxlen=10_000)  # recent change records (admin view)
        self._change_seq = 0
        self._msg_seq = 0
        self._id_seq = 0
        self.caller_ip_override: str | None = None
        self._release = threading.Event()
        self.inflight = 0
        self.generation = 0  # bumped on reset: a request asleep across a reset must not touch the new corp
        self.base_flags: dict[str, Any] = {}  # flags re-applied after every reset (e.g. from the CLI)
        self._reset_listeners: list[Callable[[], None]] = []
        self.callbacks: Any = None  # the callback hub (emulator/callbacks.py), attached by the server

    # ---- construction / reset ------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: Any = "generated:60:1", clock: Clock | None = None) -> Tenant:
        """Build from an org file path, an org dict, or ``"generated:N[:seed]"``."""
        from .org import load_org

        return cls(load_org(source), clock=clock, source=source)

    def reset(self, source: Any = None, clock: Clock | None = None) -> None:
        """Replace the corp with a fresh one from ``source`` (default: the original source).

        Also resets flags (to defaults plus :attr:`base_flags`), counters, faults, the request log and
        the caller-ip override, runs the :meth:`on_reset` hooks (the callback hub resets), releases
        threads sleeping in faults, and, for a manual clock, restarts it at its default start.
        """
        from .org import load_org

        src = self.source if source is None else source
        data = load_org(src)
        self.release_sleepers()
        with self.lock:
            self.generation += 1
            self.data = data
            self.source = src
            self.flags = Flags()
            self.flags.update(self.base_flags)
            self.rng = random.Random(data.seed)
            self.limiter = Limiter(sliding=True)
            self.request_log.clear(self.flags.request_log_max)
            self.faults.clear()
            self.changes.clear()
            self.caller_ip_override = None
            self._msg_seq = 0
            self._id_seq = 0
            if clock is not None:
                self.clock = clock
            elif getattr(self.clock, "manual", False):
                self.clock = ManualClock()
            hooks = list(self._reset_listeners)
        for hook in hooks:
            try:
                hook()
            except Exception:  # a hook bug must not break the reset
                log.exception("reset hook failed")

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` after every :meth:`reset` (outside the lock)."""
        with self.lock:
            self._reset_listeners.append(hook)

    def set_flags(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            applied = self.flags.update(changes)
            if "rate_window" in applied:
                self.limiter = Limiter(sliding=self.flags.rate_window == "sliding")
            if "request_log_max" in applied:
                self.request_log.clear(self.flags.request_log_max)
            return applied

    # ---- time, ids, sleeping -------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def next_id(self, prefix: str = "", length: int = 24) -> str:
        """A deterministic, unique-looking id (alphanumeric)."""
        with self.lock:
            self._id_seq += 1
            seq = self._id_seq
        raw = hashlib.sha256(f"{self.data.seed}:{prefix}:{seq}".encode()).digest()
        alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
        body = "".join(alphabet[b % 62] for b in raw)
        while len(body) < length:
            raw = hashlib.sha256(raw).digest()
            body += "".join(alphabet[b % 62] for b in raw)
        return prefix + body[: max(1, length - len(prefix))]

    def next_msg_seq(self) -> int:
        with self.lock:
            self._msg_seq += 1
            return self._msg_seq

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` without holding any lock; returns True if released early."""
        return self._release.wait(max(0.0, seconds))

    def release_sleepers(self) -> None:
        """Wake every thread sleeping in a fault (used on reset and server shutdown)."""
        old = self._release
        self._release = threading.Event()
        old.set()

    # ---- change listeners ----------------------------------------------------------------------
    def on_change(self, listener: ChangeListener) -> Callable[[], None]:
        """Register ``listener(change)``; returns a function that unregisters it."""
        with self.lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self.lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _next_change(self) -> tuple[int, float]:
        self._change_seq += 1
        return self._change_seq, self.now()

    def _emit(self, records: Iterable[Change]) -> None:
        records = list(records)
        with self.lock:
            self.changes.extend(records)
            listeners = list(self._listeners)
        for record in records:
            for listener in listeners:
                try:
                    listener(record)
                except Exception:  # a listener bug must not break the emulator
                    log.exception("change listener failed for %s", type(record).__name__)

    # ---- principals and tokens -----------------------------------------------------------------
    def principal_for_secret(self, secret: str) -> App | ContactSync | None:
        d = self.data
        # Constant-time comparisons even here: the project bans ==/!= on secrets (tests W10).
        for app in d.apps.values():
            if hmac.compare_digest(app.secret.encode(), secret.encode()):
                return app
        if d.contact_sync and hmac.compare_digest(d.contact_sync.secret.encode(), secret.encode()):
            return d.contact_sync
        return None

    def principal(self, principal_id: str) -> App | ContactSync | None:
        if principal_id == "contact_sync":
            return self.data.contact_sync
        if principal_id.startswith("app:"):
            return self.data.apps.get(int(principal_id[4:]))
        return None

    def issue_token(self, principal: App | ContactSync) -> tuple[Token, bool]:
        """The current token (if still valid and the flag allows) or a new one; returns (token, new)."""
        d, now = self.data, self.now()
        current = d.tokens.get(d.current_token.get(principal.principal_id, ""))
        if (
            current is not None
            and self.flags.gettoken_same_token_while_valid
            and current.invalidated_errcode is None
            and now < current.expires_at
        ):
            return current, False
        value = self.next_id("", 96) + self.next_id("", 32)
        token = Token(value, principal.principal_id, now, now + self.flags.token_ttl)
        d.tokens[value] = token
        d.current_token[principal.principal_id] = value
        return token, True

    def invalidate_tokens(self, principal_id: str | None = None, errcode: int = 40014) -> list[str]:
        """Invalidate unexpired tokens early (all, or one principal's); their next use answers ``errcode``.

        Returns the principal ids that had a token invalidated.
        """
        with self.lock:
            now = self.now()
            out: dict[str, None] = {}
            for issued in self.data.tokens.values():
                if principal_id is not None and issued.principal_id != principal_id:
                    continue
                if issued.invalidated_errcode is None and now < issued.expires_at:
                    issued.invalidated_errcode = errcode
                    out[issued.principal_id] = None
            return list(out)

    # ---- trusted ip ----------------------------------------------------------------------------
    @staticmethod
    def ip_allowed(ip: str, allowed: Iterable[str]) -> bool:
        for entry in allowed:
            if entry == ip:
                return True
            if "/" in entry:
                try:
                    if ipaddress.ip_address(ip) in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
        return False

    # ---- visibility ----------------------------------------------------------------------------
    def visible_departments(self, principal: App | ContactSync) -> frozenset[int]:
        d = self.data
        if principal.kind == "contact_sync":
            return frozenset(d.departments)
        cache = getattr(principal, "_vis_cache", None)
        if cache is not None and cache[0] == d.version:
            return cache[1]
        roots = set(principal.visibility.departments)
        for tagid in principal.visibility.tags:
            tag = d.tags.get(tagid)
            if tag:
                roots.update(tag.parties)
        out: set[int] = set()
        for r in roots:
            if r in d.departments and r not in out:
                out.update(d.subtree(r))
        result = frozenset(out)
        object.__setattr__(principal, "_vis_cache", (d.version, result))
        return result

    def user_visible(self, principal: App | ContactSync, user: User) -> bool:
        if principal.kind == "contact_sync":
            return True
        vis = principal.visibility
        if user.key in vis.users:
            return True
        depts = self.visible_departments(principal)
        if any(dep in depts for dep in user.departments):
            return True
        return any(user.key in self.data.tags[t].users for t in vis.tags if t in self.data.tags)

    def visible_user_count(self, principal: App | ContactSync) -> int:
        return sum(1 for u in self.data.users.values() if self.user_visible(principal, u))

    @staticmethod
    def has_root_scope(principal: App | ContactSync) -> bool:
        return principal.kind == "app" and 1 in principal.visibility.departments

    # ---- lookups -------------------------------------------------------------------------------
    def find_user(self, userid: str) -> User | None:
        return self.data.users.get(userid.lower()) if isinstance(userid, str) else None

    # ---- messages ------------------------------------------------------------------------------
    def record_message(self, msg: Message) -> Message:
        d = self.data
        d.messages[msg.msgid] = msg
        if msg.chatid:
            d.chat_messages.setdefault(msg.chatid, []).append(msg.msgid)
        for key in msg.recipients:
            d.inbox.setdefault(key, []).append(msg.msgid)
        return msg

    def messages_for(self, userid: str, include_dropped: bool = True) -> list[dict[str, Any]]:
        key = userid.lower()
        with self.lock:
            out = []
            for mid in self.data.inbox.get(key, ()):
                m = self.data.messages[mid]
                status = m.recipients.get(key)
                if status is not None and not include_dropped:
                    continue
                v = m.view(include_dropped=False)
                v.pop("delivered")
                v["delivered"] = status is None
                v["drop_reason"] = status
                out.append(v)
            return out

    # ---- directory changes (admin) -------------------------------------------------------------
    def _user_from_spec(self, spec: dict[str, Any]) -> User:
        from .org import user_from_dict

        return user_from_dict(spec, self.data)

    def hire(self, spec: dict[str, Any]) -> User:
        """Add a member (create_user). A previously departed userid is re-hired."""
        with self.lock:
            d = self.data
            user = self._user_from_spec(spec)
            if user.key in d.users:
                raise DirectoryError(f"userid {user.userid!r} already exists (60102)")
            d.users[user.key] = user
            for dep in user.departments:
                d.dept_members.setdefault(dep, {})[user.key] = None
            d.departed.pop(user.key, None)
            d.version += 1
            seq, at = self._next_change()
            record = UserCreated(seq, at, user.userid, user_record(user))
        self._emit([record])
        return user

    def depart(self, userid: str) -> Departed:
        """Delete a member from the directory (离职): delete_user, plus the chat policies."""
        with self.lock:
            d = self.data
            user = self._require_user(userid)
            key = user.key
            del d.users[key]
            for dep in user.departments:
                d.dept_members.get(dep, {}).pop(key, None)
            tag_records = []
            for tag in d.tags.values():
                if tag.users.pop(key, "absent") is None:
                    tag_records.append(tag.tagid)
            for other in d.users.values():
                if any(x.lower() == key for x in other.direct_leader):
                    other.direct_leader = [x for x in other.direct_leader if x.lower() != key]
            for app in d.apps.values():
                app.visibility.users.discard(key)
            rec = Departed(user.userid, user.name, self.now(), user.customer_contact)
            d.departed[key] = rec
            self._member_gone_from_chats(key, self.flags.on_member_delete)
            d.version += 1
            seq, at = self._next_change()
            record = UserDeleted(seq, at, user.userid)
        self._emit([record])
        return rec

    def update_user(self, userid: str, changes: dict[str, Any]) -> User:
        """Change a member's fields (update_user): name, department (move), status (disable/enable),
        position, new_userid (rename), is_leader_in_dept, main_department, direct_leader, mobile…"""
        with self.lock:
            d = self.data
            user = self._require_user(userid)
            old_userid = user.userid
            before = user_record(user)
            changes = dict(changes)
            new_userid = changes.pop("new_userid", None)
            allowed = {
                "name", "department", "order", "is_leader_in_dept", "main_department", "position", "status",
                "direct_leader", "mobile", "gender", "email", "biz_mail", "avatar", "alias", "telephone",
                "address", "english_name", "external_position", "customer_contact", "extattr",
            }  # fmt: skip
            unknown = set(changes) - allowed
            if unknown:
                raise DirectoryError(f"unknown user fields: {sorted(unknown)}")
            if "status" in changes and changes["status"] not in USER_STATUSES:
                raise DirectoryError("status must be 1, 2, 4 or 5")
            if "extattr" in changes:
                from .org import OrgError, extattr_from

                try:
                    changes["extattr"] = extattr_from(changes["extattr"])
                except OrgError as exc:
                    raise DirectoryError(str(exc)) from None
            if "department" in changes:
                depts = changes.pop("department")
                if not isinstance(depts, list) or not depts or any(x not in d.departments for x in depts):
                    raise DirectoryError("department must be a non-empty list of existing department ids")
                if len(depts) > 20:
                    raise DirectoryError("a member is in at most 20 departments (60110)")
                for dep in user.departments:
                    d.dept_members.get(dep, {}).pop(user.key, None)
                user.departments = list(depts)
                user.order = list(changes.pop("order", [0] * len(depts)))
                user.is_leader_in_dept = list(changes.pop("is_leader_in_dept", [0] * len(depts)))
                if user.main_department not in depts:
                    user.main_department = depts[0]
                for dep in depts:
                    d.dept_members.setdefault(dep, {})[user.key] = None
            for name in ("order", "is_leader_in_dept"):
                if name in changes and len(changes[name]) != len(user.departments):
                    raise DirectoryError(f"{name} must be as long as department")
            old_status = user.status
            for name, value in changes.items():
                setattr(user, name, value)
            if new_userid is not None and new_userid != user.userid:
                self._rename(user, new_userid)
            if user.status != old_status:
                if user.status == 2 and self.flags.disabled_member_in_chat == "remove":
                    self._member_gone_from_chats(user.key, "remove")
                elif user.status == 5:
                    self._member_gone_from_chats(user.key, self.flags.on_member_delete)
            d.version += 1
            after = user_record(user)
            diff = {k: v for k, v in after.items() if before.get(k) != v and k != "userid"}
            seq, at = self._next_change()
            record = UserUpdated(seq, at, old_userid, user.userid if user.userid != old_userid else None, diff)
        self._emit([record])
        return user

    def _rename(self, user: User, new_userid: str) -> None:
        d = self.data
        if not USERID_RE.match(new_userid):
            raise DirectoryError(f"invalid userid {new_userid!r} (40003)")
        new_key = new_userid.lower()
        old_key = user.key
        if new_key != old_key and new_key in d.users:
            raise DirectoryError(f"userid {new_userid!r} already exists (60102)")
        user.userid = new_userid
        if new_key == old_key:
            for chatid in d.user_chats.get(old_key, ()):
                d.chats[chatid].members[old_key] = new_userid
            return
        d.users = {(new_key if k == old_key else k): v for k, v in d.users.items()}
        for members in d.dept_members.values():
            if old_key in members:
                rebuilt = {(new_key if k == old_key else k): None for k in members}
                members.clear()
                members.update(rebuilt)
        for tag in d.tags.values():
            if old_key in tag.users:
                tag.users = {(new_key if k == old_key else k): None for k in tag.users}
        for app in d.apps.values():
            if old_key in app.visibility.users:
                app.visibility.users.discard(old_key)
                app.visibility.users.add(new_key)
        for other in d.users.values():
            other.direct_leader = [new_userid if x.lower() == old_key else x for x in other.direct_leader]
        chats = d.user_chats.pop(old_key, {})
        for chatid in chats:
            chat = d.chats[chatid]
            chat.members = {(new_key if k == old_key else k): (new_userid if k == old_key else v)
                            for k, v in chat.members.items()}  # fmt: skip
            if chat.owner == old_key:
                chat.owner = new_key
        if chats:
            d.user_chats[new_key] = chats
        for group in d.customer_groups.values():
            if group.owner.lower() == old_key:
                group.owner = new_userid
            for m in group.members:
                if m["type"] == 1 and m["userid"].lower() == old_key:
                    m["userid"] = new_userid
        if old_key in d.inbox:
            d.inbox[new_key] = d.inbox.pop(old_key)

    def _member_gone_from_chats(self, key: str, policy: str) -> None:
        d = self.data
        if policy != "remove":
            return
        for chatid in list(d.user_chats.get(key, ())):
            chat = d.chats[chatid]
            chat.members.pop(key, None)
            if chat.owner == key:
                chat.owner = self._successor(chat)
        d.user_chats.pop(key, None)
        for group in d.customer_groups.values():
            group.members = [
                m for m in group.members
                if not (m["type"] == 1 and m["userid"].lower() == key and group.owner.lower() != key)
            ]  # fmt: skip

    def _successor(self, chat: AppChat) -> str | None:
        mode = self.flags.owner_succession
        if mode == "none":
            return chat.owner
        candidates = [k for k in chat.members if k in self.data.users]
        if not candidates:
            return None
        if mode == "random":
            return self.rng.choice(candidates)
        return candidates[0]

    def _require_user(self, userid: str) -> User:
        user = self.find_user(userid)
        if user is None:
            raise DirectoryError(f"userid {userid!r} not found (60111)")
        return user

    def create_department(self, spec: dict[str, Any]) -> Department:
        with self.lock:
            d = self.data
            name = spec.get("name")
            parentid = spec.get("parentid", 1)
            if not isinstance(name, str) or not 1 <= len(name) <= 32:
                raise DirectoryError("department name: 1-32 characters (60001)")
            if parentid not in d.departments:
                raise DirectoryError(f"parent department {parentid} not found (60004)")
            if d.depth(parentid) >= 14:
                raise DirectoryError("departments nest at most 15 levels (81002)")
            dep_id = spec.get("id") or (max(d.departments) + 1)
            if dep_id in d.departments:
                raise DirectoryError(f"department {dep_id} already exists (60008)")
            dep = Department(int(dep_id), name, int(parentid), int(spec.get("order", 0)), spec.get("name_en", ""))
            d.departments[dep.id] = dep
            d.rebuild_indexes()
            seq, at = self._next_change()
            record = DepartmentCreated(seq, at, dep.id, dep.name, dep.parentid, dep.order)
        self._emit([record])
        return dep

    def update_department(self, dept_id: int, changes: dict[str, Any]) -> Department:
        with self.lock:
            d = self.data
            dep = d.departments.get(dept_id)
            if dep is None:
                raise DirectoryError(f"department {dept_id} not found (60003)")
            unknown = set(changes) - {"name", "parentid", "order", "name_en"}
            if unknown:
                raise DirectoryError(f"unknown department fields: {sorted(unknown)}")
            if "parentid" in changes:
                parent = changes["parentid"]
                if parent not in d.departments or parent in d.subtree(dept_id):
                    raise DirectoryError("invalid parentid (60004/60010)")
            diff = {k: v for k, v in changes.items() if getattr(dep, k) != v}
            for k, v in diff.items():
                setattr(dep, k, v)
            d.rebuild_indexes()
            seq, at = self._next_change()
            record = DepartmentUpdated(seq, at, dep.id, diff)
        self._emit([record])
        return dep

    def delete_department(self, dept_id: int) -> None:
        with self.lock:
            d = self.data
            if dept_id == 1:
                raise DirectoryError("the root department cannot be deleted (60007)")
            if dept_id not in d.departments:
                raise DirectoryError(f"department {dept_id} not found (60003)")
            if d.dept_members.get(dept_id):
                raise DirectoryError("department has members (60005)")
            if d.children.get(dept_id):
                raise DirectoryError("department has sub-departments (60006)")
            del d.departments[dept_id]
            for tag in d.tags.values():
                if dept_id in tag.parties:
                    tag.parties.remove(dept_id)
            for app in d.apps.values():
                app.visibility.departments.discard(dept_id)
            d.rebuild_indexes()
            seq, at = self._next_change()
            record = DepartmentDeleted(seq, at, dept_id)
        self._emit([record])

    def change_tag(
        self,
        tagid: int,
        add_users: Iterable[str] = (),
        del_users: Iterable[str] = (),
        add_parties: Iterable[int] = (),
        del_parties: Iterable[int] = (),
        tagname: str | None = None,
    ) -> Tag:
        """Create (when ``tagname`` is given for a new id) or change a tag's members (update_tag)."""
        with self.lock:
            d = self.data
            tag = d.tags.get(tagid)
            if tag is None:
                if not tagname:
                    raise DirectoryError(f"tag {tagid} not found (40068)")
                tag = d.tags[tagid] = Tag(tagid, tagname)
            elif tagname:
                tag.tagname = tagname
            added, removed, padd, pdel = [], [], [], []
            for uid in add_users:
                user = self._require_user(uid)
                if user.key not in tag.users:
                    tag.users[user.key] = None
                    added.append(user.userid)
            for uid in del_users:
                key = uid.lower()
                if tag.users.pop(key, "absent") is None:
                    removed.append(d.users[key].userid if key in d.users else uid)
            for p in add_parties:
                if p not in d.departments:
                    raise DirectoryError(f"department {p} not found (60003)")
                if p not in tag.parties:
                    tag.parties.append(p)
                    padd.append(p)
            for p in del_parties:
                if p in tag.parties:
                    tag.parties.remove(p)
                    pdel.append(p)
            d.version += 1
            seq, at = self._next_change()
            record = TagUpdated(seq, at, tagid, tuple(added), tuple(removed), tuple(padd), tuple(pdel))
        self._emit([record])
        return tag

    # ---- customer groups (changes made in the WeCom client: change_external_chat) ---------------
    def create_customer_group(self, spec: dict[str, Any]) -> CustomerGroup:
        """A member creates a customer group in the client (change_external_chat / create)."""
        owner = spec.get("owner")
        if not isinstance(owner, str) or not owner:
            raise DirectoryError("missing 'owner'")
        with self.lock:
            chat_id = spec.get("chat_id") or self.next_id("wr", 30)
            if chat_id in self.data.customer_groups:
                raise DirectoryError(f"customer group {chat_id!r} exists")
            members = spec.get("members") or [{"userid": owner, "type": 1}]
            now = int(self.now())
            group = CustomerGroup(
                chat_id=chat_id,
                name=str(spec.get("name", "")),
                owner=owner,
                create_time=now,
                members=[
                    {"join_time": now, "join_scene": 1, "name": m.get("userid"), "group_nickname": "", **m}
                    for m in members
                ],
                notice=str(spec.get("notice", "")),
                admins=[str(x) for x in spec.get("admins", [])],
            )
            self.data.customer_groups[chat_id] = group
            seq, at = self._next_change()
            record = ExternalChatChanged(seq, at, chat_id, "create")
        self._emit([record])
        return group

    def _group(self, chat_id: str) -> CustomerGroup:
        group = self.data.customer_groups.get(chat_id)
        if group is None:
            raise DirectoryError(f"customer group {chat_id!r} not found (40050)")
        return group

    def change_customer_group_members(
        self,
        chat_id: str,
        add: Iterable[dict[str, Any] | str] = (),
        remove: Iterable[str] = (),
        join_scene: int = 0,
        quit_scene: int = 0,
    ) -> CustomerGroup:
        """Members join (add_member) or leave (del_member) a customer group; one record per direction."""
        records: list[Change] = []
        with self.lock:
            group = self._group(chat_id)
            now = int(self.now())
            present = {m["userid"].lower() for m in group.members}
            version_before_add = group.member_version()
            added: list[str] = []
            for raw in add:
                m = {"userid": raw} if isinstance(raw, str) else dict(raw)
                uid = m.get("userid")
                if not isinstance(uid, str) or not uid:
                    raise DirectoryError("a member needs a 'userid'")
                if uid.lower() in present:
                    continue
                internal = self.find_user(uid) is not None
                m.setdefault("type", 1 if internal else 2)
                group.members.append(
                    {"join_time": now, "join_scene": 3 if join_scene == 3 else 1, "name": uid, "group_nickname": "",
                     **m}
                )  # fmt: skip
                present.add(uid.lower())
                added.append(uid)
            if added:
                seq, at = self._next_change()
                records.append(
                    ExternalChatChanged(seq, at, chat_id, "update", "add_member", join_scene, None,
                                        tuple(added), version_before_add, group.member_version())
                )  # fmt: skip
            wanted = {uid.lower() for uid in remove}
            if group.owner.lower() in wanted:
                raise DirectoryError("the owner cannot leave the group; change the owner first")
            gone = [m["userid"] for m in group.members if m["userid"].lower() in wanted]
            if gone:
                before = group.member_version()
                group.members = [m for m in group.members if m["userid"].lower() not in wanted]
                group.admins = [a for a in group.admins if a.lower() not in wanted]
                seq, at = self._next_change()
                records.append(ExternalChatChanged(seq, at, chat_id, "update", "del_member", None, quit_scene,
                                                   tuple(gone), before, group.member_version()))  # fmt: skip
        self._emit(records)
        return group

    def update_customer_group(self, chat_id: str, changes: dict[str, Any]) -> CustomerGroup:
        """Rename (change_name), edit the notice (change_notice) or hand over (change_owner) in the client."""
        unknown = set(changes) - {"name", "notice", "owner"}
        if unknown:
            raise DirectoryError(f"unknown customer group fields: {sorted(unknown)}")
        records: list[Change] = []
        with self.lock:
            group = self._group(chat_id)
            for name, detail in (("name", "change_name"), ("notice", "change_notice"), ("owner", "change_owner")):
                if name not in changes or getattr(group, name) == changes[name]:
                    continue
                value = str(changes[name])
                if name == "owner":
                    user = self._require_user(value)
                    value = user.userid
                    if user.key not in {m["userid"].lower() for m in group.members}:
                        group.members.append({"userid": value, "type": 1, "join_time": int(self.now()),
                                              "join_scene": 1, "name": value, "group_nickname": ""})  # fmt: skip
                setattr(group, name, value)
                seq, at = self._next_change()
                records.append(ExternalChatChanged(seq, at, chat_id, "update", detail))
        self._emit(records)
        return group

    def dismiss_customer_group(self, chat_id: str) -> None:
        """The owner dismisses the group (change_external_chat / dismiss)."""
        with self.lock:
            self._group(chat_id)
            del self.data.customer_groups[chat_id]
            seq, at = self._next_change()
            record = ExternalChatChanged(seq, at, chat_id, "dismiss")
        self._emit([record])

    # ---- faults --------------------------------------------------------------------------------
    def add_fault(self, spec: dict[str, Any]) -> Fault:
        action = spec.get("action")
        if action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {list(FAULT_ACTIONS)}")
        if action == "errcode" and not isinstance(spec.get("errcode"), int):
            raise ValueError("an errcode fault needs an integer 'errcode'")
        allowed = {f.name for f in fields(Fault)} - {"id", "hits"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        with self.lock:
            self._fault_seq += 1
            fault = Fault(id=self._fault_seq, **spec)
            if fault.endpoint.startswith("/cgi-bin/"):
                fault.endpoint = fault.endpoint[len("/cgi-bin/") :]
            self.faults[fault.id] = fault
            return fault

    def matching_faults(self, endpoint: str, chatids: tuple[str, ...]) -> list[Fault]:
        """Faults that apply to this request (their ``times`` budget is consumed)."""
        if not self.faults:
            return []
        out = []
        with self.lock:
            for fault in list(self.faults.values()):
                if fault.endpoint not in ("*", endpoint):
                    continue
                if fault.chatid is not None and fault.chatid.lower() not in {c.lower() for c in chatids}:
                    continue
                if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                    continue
                fault.hits += 1
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self.faults[fault.id]
                out.append(fault)
        return out


# --------------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------------
def user_record(user: User) -> dict[str, Any]:
    """Every field of a member (admin view; the API applies the 2022 rules on top)."""
    return {
        "userid": user.userid,
        "name": user.name,
        "department": list(user.departments),
        "order": list(user.order),
        "is_leader_in_dept": list(user.is_leader_in_dept),
        "main_department": user.main_department,
        "position": user.position,
        "status": user.status,
        "direct_leader": list(user.direct_leader),
        "mobile": user.mobile,
        "gender": user.gender,
        "email": user.email,
        "biz_mail": user.biz_mail,
        "avatar": user.avatar,
        "alias": user.alias,
        "telephone": user.telephone,
        "address": user.address,
        "english_name": user.english_name,
        "external_position": user.external_position,
        "customer_contact": user.customer_contact,
        "extattr": [dict(a) for a in user.extattr],
    }


def chat_record(chat: AppChat, data: CorpData) -> dict[str, Any]:
    return {
        "chatid": chat.chatid,
        "name": chat.name,
        "owner": chat.members.get(chat.owner, _spelling(chat.owner, data)) if chat.owner else None,
        "userlist": list(chat.members.values()),
        "creator": chat.creator,
        "created_at": chat.created_at,
        "chat_type": chat.chat_type,
    }


def _spelling(key: str | None, data: CorpData) -> str | None:
    if key is None:
        return None
    if key in data.users:
        return data.users[key].userid
    if key in data.departed:
        return data.departed[key].userid
    return key
