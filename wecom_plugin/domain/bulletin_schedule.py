"""When a bulletin fires: times of day, a day rule, the time zone, start/end, skip and extra dates.

A bulletin schedule document (stored on the bulletin; the clock's ``schedule`` row holds it with
``"kind": "bulletin"``)::

    {"times": ["09:00", "17:30"],
     "days": {"rule": "workdays"},
     "start": "2026-12-01", "end": null,
     "skip": ["2026-12-24"], "extra": ["2026-12-27"]}

Day rules (``days.rule``):

* ``every_day``; ``weekdays`` (Monday to Friday, holidays or not);
* ``workdays``: China's statutory workdays, 调休 make-up days included, from the workday calendar;
* ``holidays``: the statutory holiday days (the whole break, e.g. 10-01 to 10-07);
* ``days_of_week`` with ``days`` (0 = Monday ... 6 = Sunday);
* ``days_of_month`` with ``days``: numbers 1-31 (a month without that day has no occurrence) and the
  words ``last`` (last day), ``first_workday`` and ``last_workday`` (statutory workdays of the month);
* ``cron`` with ``expr`` (five fields, :mod:`wecom_plugin.domain.cron`); ``times`` is then not used.

``skip`` dates never fire; ``extra`` dates fire (at ``times``) whatever the rule says. A day is judged by
:func:`day_verdict`: ``yes``, ``no`` (with the reason, e.g. the holiday's name) or ``hold``: the workday
calendar has no official data for that year and ``CALENDAR_FALLBACK=hold``. Held days still produce an
occurrence, so the firing job can record it as held and alert, and re-judge the day with the calendar it
sees then (an import may have arrived in between). Nothing here guesses at a year the State Council has
not announced: :class:`~wecom_plugin.domain.workdays.WorkdayCalendar` decides that, visibly.

Pure: the calendar and the instants are passed in.
"""

from __future__ import annotations

from calendar import monthrange
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from wecom_plugin.domain import cron as crontab
from wecom_plugin.domain import schedules
from wecom_plugin.domain.schedules import SpecError, parse_wall_time

KIND = "bulletin"
RULES = ("every_day", "weekdays", "workdays", "holidays", "days_of_week", "days_of_month", "cron")
MONTH_WORDS = ("last", "first_workday", "last_workday")
MAX_TIMES = 24
MAX_DATES = 400
WEEKDAY_ZH = "一二三四五六日"

YES, NO, HOLD = "yes", "no", "hold"
CALENDAR_RULES = ("workdays", "holidays", "days_of_month")
# The next occurrence of a schedule past its end date: far enough to never be due.
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Verdict:
    """Whether a day is a day of the rule: ``state`` yes | no | hold, and why (zh, en)."""

    state: str
    zh: str
    en: str


def validate(doc: Any) -> dict[str, Any]:
    """Return the normalised schedule document or raise :class:`SpecError` (English; the services add
    Chinese). Times are normalised to HH:MM and sorted, dates to ISO strings."""
    if not isinstance(doc, dict):
        raise SpecError("a bulletin schedule is an object with times and days")
    unknown = set(doc) - {"kind", "times", "days", "start", "end", "skip", "extra"}
    if unknown:
        raise SpecError(f"unknown schedule field(s): {', '.join(sorted(unknown))}")
    days = doc.get("days")
    if not isinstance(days, dict) or days.get("rule") not in RULES:
        raise SpecError(f'"days" needs a "rule", one of: {", ".join(RULES)}')
    rule = days["rule"]
    out_days: dict[str, Any] = {"rule": rule}
    if rule == "days_of_week":
        values = days.get("days")
        if not isinstance(values, list) or not values or any(type(d) is not int or d not in range(7) for d in values):
            raise SpecError('"days_of_week" lists "days" 0 (Monday) to 6 (Sunday)')
        out_days["days"] = sorted(set(values))
    elif rule == "days_of_month":
        values = days.get("days")
        ok = isinstance(values, list) and values
        for value in values if ok else ():
            if isinstance(value, bool) or not (
                (isinstance(value, int) and 1 <= value <= 31) or (isinstance(value, str) and value in MONTH_WORDS)
            ):
                ok = False
        if not ok:
            raise SpecError(f'"days_of_month" lists "days" 1-31 and/or {", ".join(MONTH_WORDS)}')
        out_days["days"] = sorted({v for v in values if isinstance(v, int)}) + [w for w in MONTH_WORDS if w in values]
    elif rule == "cron":
        try:
            crontab.parse(days.get("expr"))
        except crontab.CronError as exc:
            raise SpecError(f"cron: {exc}") from None
        out_days["expr"] = " ".join(days["expr"].split())
    extra_keys = set(days) - {"rule", "days", "expr"}
    if extra_keys:
        raise SpecError(f"unknown day-rule field(s): {', '.join(sorted(extra_keys))}")
    times = doc.get("times") or []
    if rule == "cron":
        if times:
            raise SpecError('a cron rule carries its own times: leave "times" empty')
    else:
        if not isinstance(times, list) or not times:
            raise SpecError('"times" lists times of day as "HH:MM"')
        if len(times) > MAX_TIMES:
            raise SpecError(f"at most {MAX_TIMES} times a day")
    norm_times = sorted({parse_wall_time(t).strftime("%H:%M") for t in times})
    start, end = _date(doc.get("start"), "start"), _date(doc.get("end"), "end")
    if start and end and end < start:
        raise SpecError("end is before start")
    skip = _dates(doc.get("skip"), "skip")
    extra = _dates(doc.get("extra"), "extra")
    both = set(skip) & set(extra)
    if both:
        raise SpecError(f"a date cannot be both skipped and extra: {', '.join(sorted(both))}")
    return {
        "times": norm_times,
        "days": out_days,
        "start": start.isoformat() if start else None,
        "end": end.isoformat() if end else None,
        "skip": skip,
        "extra": extra,
    }


def _date(value: Any, name: str) -> date | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        raise SpecError(f"{name}: a date is written YYYY-MM-DD, without a time; got {value!r}")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise SpecError(f"{name}: a date is written YYYY-MM-DD, got {value!r}") from None


def _dates(values: Any, name: str) -> list[str]:
    if values in (None, ""):
        return []
    if not isinstance(values, list):
        raise SpecError(f'"{name}" lists dates as YYYY-MM-DD')
    if len(values) > MAX_DATES:
        raise SpecError(f'"{name}" lists at most {MAX_DATES} dates')
    return sorted({_date(v, name).isoformat() for v in values})  # type: ignore[union-attr]


# --- judging a day --------------------------------------------------------------------------------
def day_verdict(doc: dict[str, Any], day: date, calendar) -> Verdict:
    """Is ``day`` a day of this schedule? ``calendar`` is a ``WorkdayCalendar``."""
    iso = day.isoformat()
    if doc.get("start") and iso < doc["start"]:
        return Verdict(NO, f"早于开始日期 {doc['start']}", f"before the start date {doc['start']}")
    if doc.get("end") and iso > doc["end"]:
        return Verdict(NO, f"晚于结束日期 {doc['end']}", f"after the end date {doc['end']}")
    if iso in doc.get("skip", ()):
        return Verdict(NO, "指定跳过的日期", "an explicit skip date")
    if iso in doc.get("extra", ()):
        return Verdict(YES, "指定增加的日期", "an explicit extra date")
    days = doc["days"]
    rule = days["rule"]
    weekday = f"星期{WEEKDAY_ZH[day.weekday()]}"
    if rule == "every_day":
        return Verdict(YES, "每天", "every day")
    if rule == "weekdays":
        if day.weekday() < 5:
            return Verdict(YES, "周一至周五", "Monday to Friday")
        return Verdict(NO, f"周末（{weekday}）", "weekend")
    if rule == "days_of_week":
        if day.weekday() in days["days"]:
            return Verdict(YES, weekday, day.strftime("%A"))
        return Verdict(NO, f"{weekday}不在规则内", f"{day.strftime('%A')} is not in the rule")
    if rule == "cron":
        if crontab.parse(days["expr"]).matches_day(day):
            return Verdict(YES, "符合 cron 表达式", "matches the cron expression")
        return Verdict(NO, "不符合 cron 表达式", "does not match the cron expression")
    info = calendar.day(day)
    if rule == "workdays":
        return _from_info(info, info.workday)
    if rule == "holidays":
        if info.workday is None:
            return _from_info(info, None)
        return _from_info(info, info.statutory_holiday)
    return _day_of_month(days["days"], day, calendar)


def _from_info(info, selected: bool | None) -> Verdict:
    zh, en = info.describe()
    if selected is None:
        return Verdict(HOLD, zh, en)
    return Verdict(YES if selected else NO, zh, en)


def _day_of_month(values: list[Any], day: date, calendar) -> Verdict:
    last = monthrange(day.year, day.month)[1]
    if day.day in values or ("last" in values and day.day == last):
        return Verdict(YES, f"每月 {day.day} 日", f"day {day.day} of the month")
    wanted = [w for w in ("first_workday", "last_workday") if w in values]
    if not wanted:
        return Verdict(NO, "不是规则中的日期", "not a day of the rule")
    info = calendar.day(day)
    if info.workday is None:
        return _from_info(info, None)
    if not info.workday:
        zh, en = info.describe()
        return Verdict(NO, zh, en)
    for word in wanted:
        if word == "first_workday":
            others = [day.replace(day=d) for d in range(1, day.day)]
            zh, en = "本月第一个工作日", "first workday of the month"
        else:
            others = [day.replace(day=d) for d in range(day.day + 1, last + 1)]
            zh, en = "本月最后一个工作日", "last workday of the month"
        states = [calendar.day(other).workday for other in others]
        if True in states:
            continue
        if None in states:
            return Verdict(HOLD, f"{zh}无法确定（日历缺少数据）", f"{en} unknown (no calendar data)")
        return Verdict(YES, zh, en)
    return Verdict(NO, "不是本月第一个/最后一个工作日", "not the first/last workday of the month")


# --- occurrences ----------------------------------------------------------------------------------
def wall_times(doc: dict[str, Any]) -> list[time]:
    if doc["days"]["rule"] == "cron":
        return crontab.parse(doc["days"]["expr"]).times()
    return [parse_wall_time(t) for t in doc["times"]]


def next_occurrence(doc: dict[str, Any], tz: ZoneInfo, after: datetime, calendar) -> datetime:
    """The first occurrence strictly after ``after``: a wall time on a day judged yes or hold;
    :data:`NEVER` once the schedule's end date has passed."""
    if calendar is None and doc["days"]["rule"] in CALENDAR_RULES:
        raise SpecError("a bulletin schedule needs the workday calendar")
    end = date.fromisoformat(doc["end"]) if doc.get("end") else None
    if end is not None and after.astimezone(tz).date() > end:
        return NEVER
    try:
        return schedules.next_wall_time(
            tz, after, wall_times(doc), lambda day: day_verdict(doc, day, calendar).state != NO
        )
    except SpecError:
        if end is not None:
            return NEVER  # nothing left before the end date
        raise


@dataclass(frozen=True)
class PreviewDay:
    """One day of a preview: its occurrences (UTC instants) or why it has none."""

    day: date
    verdict: Verdict
    times: list[datetime]


def explain(doc: dict[str, Any], tz: ZoneInfo, after: datetime, calendar, *, count: int, max_days: int = 400):
    """Days from ``after`` on until ``count`` occurrences are found (or ``max_days`` days): every day
    with an occurrence, and every day the rule would normally include but the calendar, a skip date or
    the start/end dates rule out (weekends of a workday rule, say), with the reason."""
    out: list[PreviewDay] = []
    found = 0
    day = after.astimezone(tz).date()
    walls = wall_times(doc)
    for _ in range(max_days):
        verdict = day_verdict(doc, day, calendar)
        if verdict.state != NO:
            times = [t for t in (schedules.resolve_local(tz, day, w) for w in walls) if t > after]
            times = sorted(times)[: count - found]
            if times:
                out.append(PreviewDay(day, verdict, times))
                found += len(times)
        elif _worth_explaining(doc, day, verdict):
            out.append(PreviewDay(day, verdict, []))
        if found >= count:
            break
        day += timedelta(days=1)
    return out


def _worth_explaining(doc: dict[str, Any], day: date, verdict: Verdict) -> bool:
    """A skipped day is listed when a reader would have expected an occurrence on it: a weekday
    (Monday-Friday) under a calendar rule, or an explicit skip date. Plain weekends are not."""
    if day.isoformat() in doc.get("skip", ()):
        return True
    rule = doc["days"]["rule"]
    return rule in ("workdays", "days_of_month") and day.weekday() < 5


# The clock's kind: {"kind": "bulletin", ...the document above}.
def _validate_kind(spec: dict[str, Any]) -> None:
    validate({k: v for k, v in spec.items() if k != "kind"})


def _next_kind(spec: dict[str, Any], tz: ZoneInfo, after: datetime, calendar=None) -> datetime:
    return next_occurrence(spec, tz, after, calendar)


schedules.register_kind(KIND, _validate_kind, _next_kind)
