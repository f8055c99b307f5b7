"""Send budgets: WeCom's frequency limits as named constants, and the :class:`Budget` protocol.

WeCom enforces per-corp, per-member and per-robot limits (contract §3, §4, §5, §6, §10.2). Some answer
45009 when exceeded; others drop the excess *silently* while the API still answers errcode 0 (app-chat
person-times, per-member app messages). Both are worse than waiting, so every process spends from one
budget kept in the database (:class:`wecom_plugin.services.budget.DbBudget`) before it acts, and keeps
below the limit by a headroom (90 % by default: 900 chat changes an hour, not 1,000).

A budget counts in **fixed windows of the database clock**: minutes, hours, and natural days in the
corp's time zone (Asia/Shanghai, WeCom's day). A fixed window lets twice the budget through across a
boundary in the worst case, which the headroom does not cover; WeCom's own windows are undocumented
(the robot's "fixed or sliding" question is unanswered), so callers that must never see 45009 should
also honour the ``retry_after`` of :class:`~wecom_plugin.wecom.errors.WeComRateLimited`.

Usage: ``grant = budget.acquire("appchat.update")``; if ``not grant.ok``, act again at
``grant.retry_at`` (or raise :class:`BudgetExhausted`, which the job runtime turns into a reschedule that
spends no attempt). ``acquire_many`` takes several at once, all or nothing (a chat message spends corp
person-times and each member's allowance together).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import NamedTuple, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from wecom_plugin.errors import RateLimitedError

MINUTE, HOUR, DAY = "minute", "hour", "day"
WINDOWS = (MINUTE, HOUR, DAY)
DEFAULT_HEADROOM = 0.9
DEFAULT_TIMEZONE = "Asia/Shanghai"
CORP = "corp"  # the key of corp-wide limits


@dataclass(frozen=True)
class Limit:
    """One WeCom frequency limit.

    Attributes:
        name: stable id, e.g. ``"appchat.update"`` (also part of the counter's bucket name).
        capacity: what WeCom allows per window (before headroom).
        window: ``"minute"``, ``"hour"`` or ``"day"`` (natural day in the corp's time zone).
        per: what the key of an ``acquire`` names: ``corp``, ``member``, ``robot``, ``api``, ``handover``.
        source: where the number comes from (contract section and doc page).
        silent: True when WeCom drops the excess silently (errcode 0) instead of answering 45009.
    """

    name: str
    capacity: int
    window: str
    per: str
    source: str
    silent: bool = False

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"{self.name}: window must be one of {WINDOWS}")
        if self.capacity < 1:
            raise ValueError(f"{self.name}: capacity must be at least 1")

    @property
    def spans_two_windows(self) -> bool:
        """Whether a grant must also count the previous window (see :func:`previous_window_start`).

        WeCom drops the excess of a *silent* limit without an error, and whether its minute and hour
        windows are fixed or sliding is undocumented. A fixed-window count alone lets twice the limit
        through within one sliding period across a boundary; counting the previous window too keeps
        any period's total within the limit under either reading. Day limits follow the natural day."""
        return self.silent and self.window in (MINUTE, HOUR)

    def allowed(self, headroom: float = DEFAULT_HEADROOM) -> int:
        """What the budget grants per window: ``floor(capacity * headroom)``, at least 1."""
        return max(1, math.floor(self.capacity * headroom + 1e-9))


# --- the limits (contract §3.1, §3.2, §3.4, §4, §5, §6.3, §10.2) ---------------------------------
APPCHAT_UPDATE = Limit("appchat.update", 1000, HOUR, "corp", "§3.2 doc 98913: 1000 updates/hour per corp")
#: Ours, not WeCom's: routine updates (the member check, rule edits) also take from this 80 % share of
#: ``appchat.update``, so they can never spend the last 20 % of the hour: offboarding always finds it.
APPCHAT_UPDATE_ROUTINE = Limit(
    "appchat.update.routine", 800, HOUR, "corp", "§3.2, our share: routine updates leave 20 % of 1000/h to offboarding"
)
APPCHAT_CREATE = Limit("appchat.create", 1000, DAY, "corp", "§3.1 doc 90245: 1000 chats/day per corp (all apps)")
APPCHAT_SEND_CORP_MINUTE = Limit(
    "appchat.send.corp_minute", 20_000, MINUTE, "corp", "§3.4 doc 90248/90454: 20,000 person-times/min per corp",
    silent=True,
)  # fmt: skip
APPCHAT_SEND_CORP_HOUR_NAME = "appchat.send.corp_hour"  # one name; the capacity depends on the corp size
#: Hourly person-times per corp by WECOM_CORP_SIZE (§3.4, §10.2: unverified/small 150k, medium 350k, large 700k).
APPCHAT_SEND_CORP_HOUR = {
    "small": Limit(APPCHAT_SEND_CORP_HOUR_NAME, 150_000, HOUR, "corp", "§3.4 doc 90248: small/unverified corp 150k/h",
                   silent=True),
    "medium": Limit(APPCHAT_SEND_CORP_HOUR_NAME, 350_000, HOUR, "corp", "§3.4 doc 90248: medium corp 350k/h",
                    silent=True),
    "large": Limit(APPCHAT_SEND_CORP_HOUR_NAME, 700_000, HOUR, "corp", "§3.4 doc 90248: large corp 700k/h",
                   silent=True),
}  # fmt: skip
APPCHAT_SEND_MEMBER_MINUTE = Limit(
    "appchat.send.member_minute", 200, MINUTE, "member", "§3.4: 200 msgs/min per member from one app", silent=True
)
APPCHAT_SEND_MEMBER_DAY = Limit(
    "appchat.send.member_day", 10_000, DAY, "member", "§3.4: 10,000 msgs/day per member from one app", silent=True
)
MESSAGE_MEMBER_MINUTE = Limit(
    "message.member_minute", 30, MINUTE, "member", "§4 doc 90236: 30/min per app per member", silent=True
)
MESSAGE_MEMBER_HOUR = Limit(
    "message.member_hour", 1000, HOUR, "member", "§4 doc 90236: 1000/h per app per member", silent=True
)
ROBOT_MINUTE = Limit("robot.minute", 20, MINUTE, "robot", "§5 doc 91770/99110: 20 msgs/min per robot")
GROUPCHAT_TRANSFER_DAY = Limit(
    "groupchat.transfer_day", 300, DAY, "handover", "§6.3/§6.4: 300 groups/day from one person to a new owner"
)
API_MINUTE = Limit("api.minute", 10_000, MINUTE, "api", "§10.2 doc 90454: 10,000/min per corp per API")
API_HOUR = Limit("api.hour", 150_000, HOUR, "api", "§10.2 doc 90454: 150,000/h per corp per API")


def message_app_day(accounts: int) -> Limit:
    """``message/send`` per app per day: account cap × 200 person-times (§4; the cap is the corp's licence)."""
    return Limit("message.app_day", max(1, accounts) * 200, DAY, "corp", "§4 doc 90236: accounts × 200/day per app",
                 silent=True)  # fmt: skip


def limits_for(corp_size: str = "small", extra: Iterable[Limit] = ()) -> dict[str, Limit]:
    """Every named limit, with the hourly app-chat cap of ``corp_size`` (small, medium, large)."""
    if corp_size not in APPCHAT_SEND_CORP_HOUR:
        raise ValueError(f"corp_size must be one of {sorted(APPCHAT_SEND_CORP_HOUR)}")
    table = [
        APPCHAT_UPDATE,
        APPCHAT_UPDATE_ROUTINE,
        APPCHAT_CREATE,
        APPCHAT_SEND_CORP_MINUTE,
        APPCHAT_SEND_CORP_HOUR[corp_size],
        APPCHAT_SEND_MEMBER_MINUTE,
        APPCHAT_SEND_MEMBER_DAY,
        MESSAGE_MEMBER_MINUTE,
        MESSAGE_MEMBER_HOUR,
        ROBOT_MINUTE,
        GROUPCHAT_TRANSFER_DAY,
        API_MINUTE,
        API_HOUR,
        *extra,
    ]
    return {limit.name: limit for limit in table}


# --- keys and windows ---------------------------------------------------------------------------
def member_key(userid: str) -> str:
    """The key of a per-member limit: the userid case-folded (WeCom userids are case-insensitive)."""
    return userid.casefold()


def robot_key(webhook_key: str) -> str:
    """The key of a robot's limit: a hash of its webhook key (the key is a credential; never stored)."""
    return "r" + hashlib.sha256(webhook_key.encode()).hexdigest()[:24]


def handover_key(old_owner: str, new_owner: str) -> str:
    """The key of the transfer limit: from one person to one new owner."""
    return f"{old_owner.casefold()}>{new_owner.casefold()}"


def block_bucket(limit_name: str, key: str) -> str:
    """The row marking that WeCom blocks ``limit_name`` for ``key`` (after a 45009)."""
    return "block:" + bucket(limit_name, key)[len("budget:") :]


def bucket(limit_name: str, key: str) -> str:
    """The counter name (``rate_counter.bucket``, at most 200 characters) of ``limit_name`` for ``key``."""
    name = f"budget:{limit_name}:{key}"
    if len(name) <= 200:
        return name
    return f"budget:{limit_name}:#{hashlib.sha256(key.encode()).hexdigest()}"


def _zone(tz: tzinfo | str) -> tzinfo:
    return ZoneInfo(tz) if isinstance(tz, str) else tz


def previous_window_start(window: str, start: int) -> int:
    """The start of the fixed minute or hour window before the one starting at ``start``."""
    return start - (60 if window == MINUTE else 3600)


def window_bounds(window: str, epoch: float, tz: tzinfo | str = DEFAULT_TIMEZONE) -> tuple[int, int]:
    """``(start, end)`` in epoch seconds of the fixed ``window`` containing ``epoch``.

    Minutes and hours start on the local minute/hour, days at local midnight of ``tz``.
    """
    zone = _zone(tz)
    local = datetime.fromtimestamp(epoch, UTC).astimezone(zone)
    if window == MINUTE:
        start = local.replace(second=0, microsecond=0)
        return int(start.timestamp()), int(start.timestamp()) + 60
    if window == HOUR:
        start = local.replace(minute=0, second=0, microsecond=0)
        return int(start.timestamp()), int(start.timestamp()) + 3600
    if window == DAY:
        midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=zone)
        following = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
        return int(midnight.timestamp()), int(following.timestamp())
    raise ValueError(f"unknown window {window!r}")


# --- grants and the protocol --------------------------------------------------------------------
class Ask(NamedTuple):
    """One part of an ``acquire_many``: ``n`` units of ``limit_name`` for ``key``."""

    limit_name: str
    key: str = CORP
    n: int = 1


def read_asks(path: str, n: int = 1) -> list[Ask]:
    """The basic per-API limits (§10.2: 10,000/min and 150,000/h per corp per API) for ``n`` calls of ``path``."""
    return [Ask(API_MINUTE.name, path, n), Ask(API_HOUR.name, path, n)]


@dataclass(frozen=True)
class Grant:
    """The answer of a budget.

    Attributes:
        ok: the units were granted (and counted).
        retry_at: when denied, the (database-clock) time the blocking window ends; None when granted.
        wait: seconds from the budget's ``now`` to ``retry_at`` (0 when granted).
        limit_name: when denied, the limit that blocked (the latest-ending one).
    """

    ok: bool
    retry_at: datetime | None = None
    wait: float = 0.0
    limit_name: str | None = None


class BudgetExhausted(RateLimitedError):
    """Our own budget for a WeCom limit is spent: act again at ``retry_at`` (``retry_after`` seconds).

    A :class:`~wecom_plugin.errors.RateLimitedError`, so a job is rescheduled without spending an attempt.
    Nothing was sent.
    """

    def __init__(self, grant: Grant, key: str = CORP):
        super().__init__(
            f"budget {grant.limit_name} for {key} is spent until {grant.retry_at:%Y-%m-%d %H:%M:%S %Z}"
            if grant.retry_at
            else f"budget {grant.limit_name} for {key} is spent",
            retry_after=max(1.0, grant.wait),
        )
        self.limit_name = grant.limit_name
        self.key = key
        self.retry_at = grant.retry_at


@runtime_checkable
class Budget(Protocol):
    """Counts what every process spends against WeCom's limits (minimum contract).

    * ``acquire(limit_name, key, n)``: atomically add ``n`` to the current window of
      ``limit_name``/``key`` if the result stays within the allowed amount; a denied ask counts nothing.
    * ``acquire_many(asks)``: the same for several asks, all or nothing.
    * ``exhaust(limit_name, key)``: WeCom answered 45009 anyway; count the current window as used up.
    * Unknown limit names raise ``KeyError``; an ``n`` larger than the window's allowance ``ValueError``
      (it could never be granted: split the work).
    """

    def acquire(self, limit_name: str, key: str = CORP, n: int = 1) -> Grant: ...

    def acquire_many(self, asks: Iterable[Ask | tuple[str, str, int]]) -> Grant: ...

    def exhaust(self, limit_name: str, key: str = CORP, *, block_seconds: float | None = None) -> None: ...


class LimitTable:
    """The limits a budget knows, with headroom applied; shared by the implementations."""

    def __init__(
        self,
        *,
        corp_size: str = "small",
        headroom: float = DEFAULT_HEADROOM,
        timezone: tzinfo | str = DEFAULT_TIMEZONE,
        limits: Mapping[str, Limit] | None = None,
        extra: Iterable[Limit] = (),
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        self.headroom = headroom
        self.timezone = _zone(timezone)
        self.limits = dict(limits) if limits is not None else limits_for(corp_size, extra)
        if limits is not None:
            self.limits.update({limit.name: limit for limit in extra})

    def limit(self, name: str) -> Limit:
        try:
            return self.limits[name]
        except KeyError:
            raise KeyError(f"unknown budget limit {name!r}") from None

    def allowed(self, name: str) -> int:
        return self.limit(name).allowed(self.headroom)

    def merged(self, asks: Iterable[Ask | tuple[str, str, int]]) -> list[tuple[Limit, str, int]]:
        """Asks validated, duplicates summed, sorted by bucket (a fixed lock order across processes)."""
        total: dict[tuple[str, str], int] = {}
        for ask in asks:
            name, key, n = Ask(*ask)
            if n < 1:
                raise ValueError("n must be at least 1")
            self.limit(name)
            total[(name, key)] = total.get((name, key), 0) + int(n)
        out = []
        for (name, key), n in sorted(total.items(), key=lambda item: bucket(*item[0])):
            limit = self.limit(name)
            if n > limit.allowed(self.headroom):
                allowed = limit.allowed(self.headroom)
                raise ValueError(f"{n} units of {name} can never be granted (allowed {allowed} per {limit.window})")
            out.append((limit, key, n))
        return out


class MemoryBudget(LimitTable):
    """A :class:`Budget` in this process's memory (thread-safe), for tests and single-process tools.

    ``clock`` returns epoch seconds (default ``time.time``).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, **options) -> None:
        super().__init__(**options)
        self._clock = clock
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, int], int] = {}
        self.blocks: dict[str, float] = {}  # bucket -> epoch until which WeCom blocks it (after a 45009)

    def acquire(self, limit_name: str, key: str = CORP, n: int = 1) -> Grant:
        return self.acquire_many([Ask(limit_name, key, n)])

    def acquire_many(self, asks: Iterable[Ask | tuple[str, str, int]]) -> Grant:
        plan = self.merged(asks)
        with self._lock:
            now = self._clock()
            blocked: tuple[int, str] | None = None
            writes = []
            for limit, key, n in plan:
                until = self.blocks.get(bucket(limit.name, key), 0)
                if until > now and (blocked is None or until > blocked[0]):
                    blocked = (int(until), limit.name)
                start, end = window_bounds(limit.window, now, self.timezone)
                slot = (bucket(limit.name, key), start)
                used = self.counts.get(slot, 0)
                if limit.spans_two_windows:
                    used += self.counts.get((slot[0], previous_window_start(limit.window, start)), 0)
                if used + n > limit.allowed(self.headroom):
                    if blocked is None or end > blocked[0]:
                        blocked = (end, limit.name)
                writes.append((slot, n))
            if blocked is not None:
                return _denied(blocked, now)
            for slot, n in writes:
                self.counts[slot] = self.counts.get(slot, 0) + n
            return Grant(True)

    def exhaust(self, limit_name: str, key: str = CORP, *, block_seconds: float | None = None) -> None:
        limit = self.limit(limit_name)
        with self._lock:
            now = self._clock()
            start, _end = window_bounds(limit.window, now, self.timezone)
            slot = (bucket(limit_name, key), start)
            self.counts[slot] = max(self.counts.get(slot, 0), limit.allowed(self.headroom))
            if block_seconds:
                name = bucket(limit_name, key)
                self.blocks[name] = max(self.blocks.get(name, 0), now + block_seconds)


def _denied(blocked: tuple[int, str], now: float) -> Grant:
    end, name = blocked
    return Grant(False, datetime.fromtimestamp(end, UTC), max(0.0, end - now), name)


def denied_grant(window_end: int, limit_name: str, now: float) -> Grant:
    """A denied :class:`Grant` for a window ending at ``window_end`` (epoch seconds), seen at ``now``."""
    return _denied((window_end, limit_name), now)
