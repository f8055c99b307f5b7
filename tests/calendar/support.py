"""Shared helpers of the calendar tests: the first year the package has no data for (found, never
written down), and a plausible import file for any year."""

from __future__ import annotations

from datetime import date, timedelta

import chinese_calendar

from wecom_plugin.domain.workdays import WorkdayCalendar


def package_has(year: int) -> bool:
    """Ask the package itself (it raises NotImplementedError for a year it has no data for)."""
    try:
        chinese_calendar.is_workday(date(year, 6, 1))
    except NotImplementedError:
        return False
    return True


def first_missing_year() -> int:
    """The first year after the package's data, found by probing the package."""
    year = date.today().year - 5
    while not package_has(year):  # (a future package version may start later than this)
        year += 1
    while package_has(year):
        year += 1
    return year


def weekend_after(day: date) -> date:
    """The first Saturday or Sunday on or after ``day``."""
    while day.weekday() < 5:
        day += timedelta(days=1)
    return day


def notice_days(year: int) -> tuple[dict[date, str], list[date]]:
    """The rest days and make-up days :func:`notice_yaml` describes."""
    holidays = {date(year, 1, 1) + timedelta(days=i): "元旦" for i in range(3)}
    holidays |= {date(year, 10, 1) + timedelta(days=i): "国庆节" for i in range(7)}
    makeups = [weekend_after(date(year, 9, 20)), weekend_after(date(year, 10, 8))]
    return holidays, makeups


def notice_yaml(
    year: int, source: str = "国务院办公厅关于{year}年部分节假日安排的通知（国办发明电〔测试〕1号）"
) -> str:
    _, makeups = notice_days(year)
    return (
        f"year: {year}\n"
        f"source: {source.format(year=year)}\n"
        "holidays:\n"
        "  - name: 元旦\n"
        f"    from: {year}-01-01\n"
        f"    to: {year}-01-03\n"
        "  - name: 国庆节  # 中秋 falls elsewhere this year\n"
        f"    from: {year}-10-01\n"
        f"    to: {year}-10-07\n"
        "workdays:\n" + "".join(f"  - {d}\n" for d in makeups)
    )


def official_workdays(calendar: WorkdayCalendar, first: date, last: date) -> list[date]:
    days = []
    day = first
    while day <= last:
        if calendar.is_workday(day):
            days.append(day)
        day += timedelta(days=1)
    return days
