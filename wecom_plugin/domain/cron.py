"""Five-field cron expressions (minute hour day-of-month month day-of-week), parsed into sets.

Supported per field: ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``a,b``; month and
weekday names (``jan``, ``mon``); weekday 0 and 7 are both Sunday. As in Vixie cron, when both
day-of-month and day-of-week are restricted a day matches if *either* does. No seconds, no ``L``/``W``/``#``
(the "last workday of the month" is a day rule of its own, see :mod:`wecom_plugin.domain.bulletin_schedule`).

Occurrence times are resolved by :func:`wecom_plugin.domain.schedules.next_wall_time`, so a cron bulletin
follows the same daylight-saving policy as every other wall-clock schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time

MONTHS = {name: i for i, name in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
WEEKDAYS = {name: i for i, name in enumerate("sun mon tue wed thu fri sat".split())}
# (low, high, names) per field
FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)
MAX_TIMES_PER_DAY = 24 * 12  # every 5 minutes at most: a bulletin is not a ticker


class CronError(ValueError):
    """A malformed cron expression; the message names the field."""


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # cron numbering: 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def times(self) -> list[time]:
        return sorted(time(h, m) for h in self.hours for m in self.minutes)


def parse(expression: str) -> Cron:
    if not isinstance(expression, str):
        raise CronError("a cron expression is a string of five fields")
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(f"a cron expression has five fields (minute hour day month weekday), got {len(parts)}")
    sets = [_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        # Vixie cron: a day field starting with "*" (also "*/2") counts as unrestricted.
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if len(cron.minutes) * len(cron.hours) > MAX_TIMES_PER_DAY:
        raise CronError(f"at most {MAX_TIMES_PER_DAY} times a day")
    return cron


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = _number(step_text, name, names={}) if step_text else 1
        if step < 1:
            raise CronError(f"{name}: step must be at least 1")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            first, last = _number(a, name, names), _number(b, name, names)
        else:
            first = _number(base, name, names)
            last = high if step_text else first
        if not (low <= first <= high and low <= last <= high) or first > last:
            raise CronError(f"{name}: {item!r} is outside {low}-{high}")
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(text: str, name: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not (text.isascii() and text.isdigit()):
        raise CronError(f"{name}: {text!r} is not a number")
    return int(text)
