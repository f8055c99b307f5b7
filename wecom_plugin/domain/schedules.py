"""Schedule specs and their occurrence times. Pure: the caller passes ``after`` and the zone.

Spec kinds (a JSON object with ``kind``):

* ``{"kind": "interval", "seconds": 3600}``: every N seconds after the previous occurrence.
* ``{"kind": "daily", "times": ["09:00", "17:30"], "weekdays": [0, 1, 2, 3, 4]}``: at local wall
  times in the schedule's zone; ``weekdays`` (Monday = 0) is optional.
* ``{"kind": "bulletin", ...}``: a bulletin's schedule on China's statutory workday calendar
  (:mod:`wecom_plugin.domain.bulletin_schedule`); it needs the ``calendar`` argument.

Daylight saving policy for wall-clock kinds (Asia/Shanghai has none, but a deployment may set
another zone): a wall time that does not exist on a spring-forward day runs once, shifted
forward by the gap; a wall time that happens twice on a fall-back day runs once, at its first
instance.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MIN_INTERVAL_SECONDS = 1
MAX_OCCURRENCE_SCAN_DAYS = 366 * 2

# next_after(spec, zone, after, calendar): calendar is a WorkdayCalendar, or None for kinds without one.
NextFn = Callable[[dict[str, Any], ZoneInfo, datetime, Any], datetime]
_KINDS: dict[str, tuple[Callable[[dict[str, Any]], None], NextFn]] = {}


class SpecError(ValueError):
    """A schedule spec is malformed; the message says what is wrong, in English."""


def register_kind(kind: str, validate: Callable[[dict[str, Any]], None], next_after: NextFn) -> None:
    _KINDS[kind] = (validate, next_after)


def validate(spec: Any) -> dict[str, Any]:
    """Return ``spec`` if it is a well-formed spec, else raise :class:`SpecError`."""
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise SpecError('a schedule spec is an object with a "kind"')
    kind = spec["kind"]
    if kind not in _KINDS:
        raise SpecError(f"unknown schedule kind {kind!r}; known: {', '.join(sorted(_KINDS))}")
    _KINDS[kind][0](spec)
    return spec


def next_after(spec: dict[str, Any], tz: ZoneInfo, after: datetime, calendar: Any = None) -> datetime:
    """The first occurrence strictly after ``after`` (aware), as an aware UTC datetime.

    ``calendar`` (a ``WorkdayCalendar``) is required by kinds that follow the workday calendar."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    validate(spec)
    return _KINDS[spec["kind"]][1](spec, tz, after, calendar).astimezone(UTC)


def occurrences_between(
    spec: dict[str, Any], tz: ZoneInfo, start: datetime, end: datetime, limit: int, calendar: Any = None
) -> tuple[list[datetime], datetime]:
    """Occurrences ``t`` with ``start <= t <= end`` (``start`` is itself an occurrence), at most
    ``limit`` of them, and the first occurrence after the last one listed."""
    times: list[datetime] = []
    current = start.astimezone(UTC)
    while current <= end and len(times) < limit:
        times.append(current)
        current = next_after(spec, tz, current, calendar)
    return times, current


# --- interval -----------------------------------------------------------------------------------
def _validate_interval(spec: dict[str, Any]) -> None:
    seconds = spec.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < MIN_INTERVAL_SECONDS:
        raise SpecError(f"interval spec needs seconds >= {MIN_INTERVAL_SECONDS}")


def _next_interval(spec: dict[str, Any], tz: ZoneInfo, after: datetime, calendar: Any = None) -> datetime:
    return after + timedelta(seconds=spec["seconds"])


# --- daily ----------------------------------------------------------------------------------------
def parse_wall_time(text: Any) -> time:
    if not isinstance(text, str):
        raise SpecError(f"a time of day is written HH:MM, got {text!r}")
    try:
        hour, minute = (int(part, 10) for part in text.split(":"))
        return time(hour, minute)
    except ValueError:
        raise SpecError(f"a time of day is written HH:MM, got {text!r}") from None


def _validate_daily(spec: dict[str, Any]) -> None:
    times = spec.get("times")
    if not isinstance(times, list) or not times:
        raise SpecError('daily spec needs "times": ["HH:MM", ...]')
    for text in times:
        parse_wall_time(text)
    weekdays = spec.get("weekdays")
    if weekdays is not None and (
        not isinstance(weekdays, list) or not weekdays or any(d not in range(7) for d in weekdays)
    ):
        raise SpecError('"weekdays" lists days 0 (Monday) to 6 (Sunday)')


def _next_daily(spec: dict[str, Any], tz: ZoneInfo, after: datetime, calendar: Any = None) -> datetime:
    wall_times = sorted(parse_wall_time(t) for t in spec["times"])
    weekdays = set(spec.get("weekdays") or range(7))
    return next_wall_time(tz, after, wall_times, lambda day: day.weekday() in weekdays)


def next_wall_time(tz: ZoneInfo, after: datetime, wall_times: list[time], day_ok: Callable[[date], bool]) -> datetime:
    """The first ``wall_times`` instant on a day accepted by ``day_ok``, strictly after ``after``."""
    day = after.astimezone(tz).date()
    for _ in range(MAX_OCCURRENCE_SCAN_DAYS):
        if day_ok(day):
            # The earliest instant, not the first in wall-clock order: on a DST day a shifted
            # time can land after a later wall time.
            later = [c for c in (resolve_local(tz, day, wall) for wall in wall_times) if c > after]
            if later:
                return min(later)
        day += timedelta(days=1)
    raise SpecError("no occurrence within two years; check the spec")


def resolve_local(tz: ZoneInfo, day: date, wall: time) -> datetime:
    """A local wall time as an aware instant, by the DST policy in the module docstring.

    PEP 495's ``fold=0`` gives exactly that policy: inside a spring-forward gap it reads the
    wall time with the offset from before the gap (so the instant lands after the gap, shifted
    forward by its length); in a fall-back overlap it picks the first instance.
    """
    return datetime.combine(day, wall).replace(tzinfo=tz, fold=0).astimezone(UTC)


register_kind("interval", _validate_interval, _next_interval)
register_kind("daily", _validate_daily, _next_daily)

# Kinds defined in their own modules register themselves on import.
from wecom_plugin.domain import bulletin_schedule as _bulletin_schedule  # noqa: E402,F401
