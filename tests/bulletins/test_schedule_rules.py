"""The bulletin schedule kind as the clock runs it: occurrences through a year on the statutory
calendar, the first year without official data, day rules, cron, skip/extra dates, quiet windows."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import chinese_calendar
import pytest

from wecom_plugin.domain import bulletin_schedule as bs
from wecom_plugin.domain import cron, schedules
from wecom_plugin.domain.workdays import HOLD, WEEKDAYS, ImportedYear, WorkdayCalendar
from wecom_plugin.services.bulletins import defer_window

SHANGHAI = ZoneInfo("Asia/Shanghai")
MAKEUP_DAYS_2026 = ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09", "2026-09-20", "2026-10-10"]


def spec(rule: dict, times=("09:00",), **extra) -> dict:
    return {"kind": "bulletin", **bs.validate({"times": list(times), "days": rule, **extra})}


def occurrences(doc: dict, start: datetime, end: datetime, calendar) -> list[datetime]:
    out, current = [], start
    while True:
        current = schedules.next_after(doc, SHANGHAI, current, calendar)
        if current > end:
            return out
        out.append(current)


def local_days(times: list[datetime]) -> list[str]:
    return [t.astimezone(SHANGHAI).date().isoformat() for t in times]


def test_every_workday_at_nine_through_2026_is_exactly_the_official_workdays():
    doc = spec({"rule": "workdays"})
    start = datetime(2025, 12, 31, 16, 0, tzinfo=UTC)  # 2026-01-01 00:00 in Shanghai
    end = datetime(2026, 12, 31, 15, 59, tzinfo=UTC)
    found = occurrences(doc, start, end, WorkdayCalendar(fallback=HOLD))
    assert all(t.astimezone(SHANGHAI).strftime("%H:%M") == "09:00" for t in found)
    official = [
        d.isoformat()
        for d in (date(2026, 1, 1) + timedelta(days=i) for i in range(365))
        if chinese_calendar.is_workday(d)
    ]
    assert local_days(found) == official
    for makeup in MAKEUP_DAYS_2026:
        assert makeup in local_days(found)
        assert date.fromisoformat(makeup).weekday() >= 5  # a weekend day that is worked
    golden_week = {(date(2026, 10, 1) + timedelta(days=i)).isoformat() for i in range(7)}
    assert not golden_week & set(local_days(found))


def first_year_without_data() -> int:
    year = date.today().year
    calendar = WorkdayCalendar()
    while calendar.has_data(year):
        year += 1
    # Found from the package's data, not assumed: the package really has no answer for it.
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(date(year, 3, 2))
    return year


def test_the_first_year_without_data_is_held_never_guessed():
    year = first_year_without_data()
    doc = spec({"rule": "workdays"})
    verdict = bs.day_verdict(doc, date(year, 1, 4), WorkdayCalendar(fallback=HOLD))
    assert verdict.state == bs.HOLD
    assert str(year) in verdict.zh
    # Held days still produce occurrences, so the firing job can record each as held and alert.
    start = datetime(year - 1, 12, 31, 16, 0, tzinfo=UTC)
    found = occurrences(doc, start, start + timedelta(days=7), WorkdayCalendar(fallback=HOLD))
    assert len(found) == 7


def test_the_weekdays_fallback_is_monday_to_friday_and_says_so():
    year = first_year_without_data()
    doc = spec({"rule": "workdays"})
    calendar = WorkdayCalendar(fallback=WEEKDAYS)
    start = datetime(year - 1, 12, 31, 16, 0, tzinfo=UTC)
    found = occurrences(doc, start, start + timedelta(days=14), calendar)
    assert all(date.fromisoformat(d).weekday() < 5 for d in local_days(found))
    assert len(found) == 10  # two full weeks, Monday to Friday, whatever the holidays will be
    verdict = bs.day_verdict(doc, date(year, 1, 5), calendar)
    assert verdict.state == bs.YES and "周一至周五" in verdict.zh


def test_an_imported_notice_decides_the_year():
    year = first_year_without_data()
    jan_1 = date(year, 1, 1)
    saturday = next(jan_1 + timedelta(days=i) for i in range(7) if (jan_1 + timedelta(days=i)).weekday() == 5)
    imported = ImportedYear(year=year, source="test", holidays={jan_1: "元旦"}, workdays=frozenset({saturday}))
    calendar = WorkdayCalendar({year: imported}, fallback=HOLD)
    doc = spec({"rule": "workdays"})
    assert bs.day_verdict(doc, jan_1, calendar).state == bs.NO
    assert "元旦" in bs.day_verdict(doc, jan_1, calendar).zh
    assert bs.day_verdict(doc, saturday, calendar).state == bs.YES


def test_statutory_holidays_rule():
    doc = spec({"rule": "holidays"})
    calendar = WorkdayCalendar()
    found = occurrences(doc, datetime(2026, 9, 28, tzinfo=UTC), datetime(2026, 10, 20, tzinfo=UTC), calendar)
    assert local_days(found) == [(date(2026, 10, 1) + timedelta(days=i)).isoformat() for i in range(7)]


def test_last_and_first_workday_of_the_month():
    calendar = WorkdayCalendar()
    doc = spec({"rule": "days_of_month", "days": ["last_workday", "first_workday"]})
    found = occurrences(doc, datetime(2026, 9, 2, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), calendar)
    # September 2026 ends on Wednesday the 30th (a workday); October's first workday comes after the
    # National Day break (the package says which day); its last is Friday the 30th.
    first_october = next(
        (date(2026, 10, 1) + timedelta(days=i)).isoformat()
        for i in range(31)
        if chinese_calendar.is_workday(date(2026, 10, 1) + timedelta(days=i))
    )
    assert local_days(found) == ["2026-09-30", first_october, "2026-10-30"]


def test_skip_extra_start_and_end_dates():
    doc = spec({"rule": "weekdays"}, start="2026-12-01", end="2026-12-31", skip=["2026-12-02"], extra=["2026-12-06"])
    calendar = WorkdayCalendar()
    found = local_days(
        occurrences(doc, datetime(2026, 11, 20, tzinfo=UTC), datetime(2027, 1, 10, tzinfo=UTC), calendar)
    )
    assert found[0] == "2026-12-01" and "2026-12-02" not in found and "2026-12-06" in found
    assert found[-1] == "2026-12-31"
    reason = bs.day_verdict(doc, date(2026, 12, 2), calendar)
    assert reason.state == bs.NO and "跳过" in reason.zh


def test_cron_rule_follows_vixie_semantics():
    doc = spec({"rule": "cron", "expr": "30 8 1 * 1"}, times=())
    found = local_days(occurrences(doc, datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 6, 30, tzinfo=UTC), None))
    # Day 1 OR Monday (both fields restricted).
    assert found == ["2026-06-01", "2026-06-08", "2026-06-15", "2026-06-22", "2026-06-29"]
    with pytest.raises(schedules.SpecError):
        bs.validate({"days": {"rule": "cron", "expr": "61 8 * * *"}})
    with pytest.raises(schedules.SpecError):
        bs.validate({"times": ["09:00"], "days": {"rule": "cron", "expr": "0 9 * * *"}})
    assert cron.parse("*/15 9-10 * * mon-fri").times()[:3] == [
        datetime(2026, 1, 1, 9, 0).time(),
        datetime(2026, 1, 1, 9, 15).time(),
        datetime(2026, 1, 1, 9, 30).time(),
    ]


@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"times": ["09:00"]}, "rule"),
        ({"times": ["25:00"], "days": {"rule": "every_day"}}, "HH:MM"),
        ({"times": ["09:00"], "days": {"rule": "days_of_week", "days": [7]}}, "0 (Monday)"),
        ({"times": ["09:00"], "days": {"rule": "days_of_month", "days": [32]}}, "1-31"),
        ({"times": ["09:00"], "days": {"rule": "every_day"}, "start": "2026-12-02", "end": "2026-12-01"}, "before"),
        ({"times": ["09:00"], "days": {"rule": "every_day"}, "skip": ["2026-12-01"], "extra": ["2026-12-01"]}, "both"),
        ({"times": ["09:00"], "days": {"rule": "every_day"}, "every": 2}, "unknown"),
    ],
)
def test_malformed_schedules_are_refused_with_the_reason(doc, problem):
    with pytest.raises(schedules.SpecError, match=re.escape(problem)):
        bs.validate(doc)


def test_quiet_windows_defer_to_the_end_and_chain_across_midnight():
    at = datetime(2026, 12, 1, 12, 30, tzinfo=SHANGHAI)
    assert defer_window(["12:00-13:30"], at)[1] == datetime(2026, 12, 1, 13, 30, tzinfo=SHANGHAI)
    assert defer_window(["12:00-13:30"], at.replace(hour=14)) is None
    # Back-to-back windows: quiet ends where the last one ends.
    assert defer_window(["12:00-13:00", "13:00-14:00"], at)[1] == datetime(2026, 12, 1, 14, 0, tzinfo=SHANGHAI)
    night = datetime(2026, 12, 1, 23, 0, tzinfo=SHANGHAI)
    assert defer_window(["22:00-07:00"], night)[1] == datetime(2026, 12, 2, 7, 0, tzinfo=SHANGHAI)
    early = datetime(2026, 12, 2, 6, 0, tzinfo=SHANGHAI)
    assert defer_window(["22:00-07:00"], early)[1] == datetime(2026, 12, 2, 7, 0, tzinfo=SHANGHAI)


def test_preview_explains_skipped_weekdays_with_the_holiday_name():
    doc = spec({"rule": "workdays"})
    days = bs.explain(doc, SHANGHAI, datetime(2026, 9, 29, tzinfo=UTC), WorkdayCalendar(), count=5)
    skipped = [d for d in days if not d.times]
    assert [d.day.isoformat() for d in skipped][:1] == ["2026-10-01"]
    assert "国庆" in skipped[0].verdict.zh
    sent = [d.day.isoformat() for d in days if d.times]
    assert "2026-10-10" in sent  # the Saturday make-up day
