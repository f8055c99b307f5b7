"""Clocks for the sandbox tenant.

Every time-dependent rule of the emulator (token expiry, OAuth code lifetime, rate windows, daily limits,
media expiry) reads the tenant's clock, never :func:`time.time` directly, so tests can use a
:class:`ManualClock` and move time forward with :meth:`ManualClock.advance` instead of sleeping.

Daily limits follow WeCom's "natural day" in China: the day boundary is midnight Asia/Shanghai
(UTC+8, no DST), whatever the host's time zone is.
"""

from __future__ import annotations

import threading
import time
from datetime import date, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

#: Default start of a manual clock: Monday 2025-03-03 09:00:00 Asia/Shanghai (a working day, not on :00/:30).
DEFAULT_MANUAL_START = datetime(2025, 3, 3, 9, 7, 0, tzinfo=SHANGHAI).timestamp()


class Clock(Protocol):
    """What the emulator needs from a clock: the current time as Unix seconds."""

    def now(self) -> float: ...


class RealClock:
    """Wall-clock time."""

    manual = False

    def now(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "RealClock()"


class ManualClock:
    """A clock that only moves when told to; thread-safe.

    Args:
        start: Unix seconds to start at (default :data:`DEFAULT_MANUAL_START`).
    """

    manual = True

    def __init__(self, start: float = DEFAULT_MANUAL_START) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (must be >= 0); returns the new time."""
        if seconds < 0:
            raise ValueError("a manual clock only moves forward")
        with self._lock:
            self._now += float(seconds)
            return self._now

    def set(self, timestamp: float) -> float:
        """Jump to ``timestamp`` (must not be earlier than now); returns the new time."""
        with self._lock:
            if timestamp < self._now:
                raise ValueError("a manual clock only moves forward")
            self._now = float(timestamp)
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def local_day(timestamp: float) -> date:
    """The Asia/Shanghai calendar day of ``timestamp`` (the unit of WeCom's daily limits)."""
    return datetime.fromtimestamp(timestamp, SHANGHAI).date()


def local_day_index(timestamp: float) -> int:
    """A monotonically increasing integer per Asia/Shanghai day (for fixed daily windows)."""
    return local_day(timestamp).toordinal()


def advance(clock: Clock, seconds: float) -> float:
    """Advance ``clock`` if it is manual; raise :class:`TypeError` for a real clock."""
    if not getattr(clock, "manual", False):
        raise TypeError("the tenant runs on a real clock; it cannot be advanced")
    return clock.advance(seconds)  # type: ignore[attr-defined]
