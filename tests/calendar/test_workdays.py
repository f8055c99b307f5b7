"""The pure calendar (domain/workdays.py): package data, imported years, the fallback, the file."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

import chinese_calendar
import pytest

from tests.calendar.support import first_missing_year, notice_days, notice_yaml, official_workdays, package_has
from wecom_plugin.domain.workdays import (
    HOLD,
    WEEKDAYS,
    CalendarFileError,
    DayInfo,
    ImportedYear,
    WorkdayCalendar,
    parse_notice,
)

MAKEUP_2026 = [date(2026, 1, 4), date(2026, 2, 14), date(2026, 2, 28), date(2026, 5, 9), date(2026, 9, 20),
               date(2026, 10, 10)]  # fmt: skip


def all_days(year: int):
    day = date(year, 1, 1)
    while day.year == year:
        yield day
        day += timedelta(days=1)


# --- package years ------------------------------------------------------------------------------
def test_package_years_are_derived_from_the_package_data():
    years = WorkdayCalendar.package_years()
    assert all(package_has(y) for y in years)
    assert not package_has(years.start - 1) and not package_has(years.stop)
    assert years.stop == first_missing_year()
    assert 2026 in years  # the years this test file's facts are about


def test_every_workday_of_every_package_year_is_exactly_the_official_one():
    calendar = WorkdayCalendar()
    for year in WorkdayCalendar.package_years():
        for day in all_days(year):
            info = calendar.day(day)
            assert info.source == "package"
            assert info.workday is chinese_calendar.is_workday(day), day
            assert info.makeup is (day in chinese_calendar.workdays), day
            assert info.statutory_holiday is (day in chinese_calendar.holidays), day


def test_2026_the_six_make_up_days_and_national_day():
    calendar = WorkdayCalendar()
    for day in MAKEUP_2026:
        info = calendar.day(day)
        assert info.workday is True and info.makeup and day.weekday() >= 5, day
        assert info.describe()[0].startswith("调休上班（周")
    assert [d for d in all_days(2026) if calendar.day(d).makeup] == MAKEUP_2026
    for i in range(7):
        info = calendar.day(date(2026, 10, 1) + timedelta(days=i))
        assert info.workday is False and info.statutory_holiday and info.holiday_name == "国庆节"
        assert info.describe() == ("国庆节放假", "National Day holiday")
    assert calendar.day(date(2026, 10, 10)).describe() == ("调休上班（周六）", "make-up workday (Saturday)")
    assert calendar.day(date(2026, 10, 11)).describe() == ("周末", "weekend")
    assert calendar.day(date(2026, 10, 12)).describe() == ("工作日", "workday")
    # Counted independently: 261 weekdays, 19 of them holidays, 6 make-up days.
    assert len(official_workdays(calendar, date(2026, 1, 1), date(2026, 12, 31))) == 248


def test_holiday_names_are_chinese_including_2025_extra_days_and_bridges():
    calendar = WorkdayCalendar()
    names = {
        calendar.day(d).holiday_name for y in (2025, 2026) for d in all_days(y) if calendar.day(d).statutory_holiday
    }
    assert names == {"元旦", "春节", "清明节", "劳动节", "端午节", "中秋节", "国庆节"}
    assert calendar.day(date(2025, 2, 4)).holiday_name == "春节"  # one of the 2025 extra days
    assert calendar.day(date(2026, 2, 15)).holiday_name == "春节"  # a Sunday bridging into the break
    assert calendar.day(date(2025, 10, 6)).holiday_name == "中秋节"  # inside the National Day break


# --- a year without data ------------------------------------------------------------------------
def test_the_first_year_without_data_holds_under_hold():
    missing = first_missing_year()
    calendar = WorkdayCalendar(fallback=HOLD)
    assert not calendar.has_data(missing) and calendar.has_data(missing - 1)
    assert calendar.first_year_without_data(missing - 1) == missing
    assert calendar.first_year_without_data(2010) == missing
    for day in all_days(missing):
        info = calendar.day(day)
        assert info == DayInfo(day, None, None, False, "hold")
        assert calendar.is_workday(day) is None
    assert calendar.day(date(missing, 1, 4)).describe() == (
        f"{missing} 年无官方安排，按设置暂停",
        f"no official arrangement for {missing}; held by CALENDAR_FALLBACK=hold",
    )


def test_the_first_year_without_data_is_monday_to_friday_under_weekdays():
    missing = first_missing_year()
    calendar = WorkdayCalendar(fallback=WEEKDAYS)
    for day in all_days(missing):
        info = calendar.day(day)
        assert info.source == "fallback" and info.workday is (day.weekday() < 5)
        assert info.holiday_name is None and not info.makeup and not info.statutory_holiday
    zh, en = calendar.day(date(missing, 1, 1)).describe()
    assert zh == f"{missing} 年无官方安排，按周一至周五推定" and "CALENDAR_FALLBACK=weekdays" in en


def test_an_unknown_fallback_and_a_datetime_are_refused():
    with pytest.raises(ValueError):
        WorkdayCalendar(fallback="guess")
    with pytest.raises(TypeError):
        WorkdayCalendar().day(datetime(2026, 10, 1, 12))


# --- imported years -----------------------------------------------------------------------------
def test_an_imported_year_fills_a_missing_year():
    missing = first_missing_year()
    notice = parse_notice(notice_yaml(missing))
    holidays, makeups = notice_days(missing)
    calendar = WorkdayCalendar({missing: notice}, fallback=HOLD)
    assert calendar.has_data(missing) and calendar.first_year_without_data(missing) == missing + 1
    for day in all_days(missing):
        info = calendar.day(day)
        assert info.source == "import"
        assert info.workday is (day in makeups or (day.weekday() < 5 and day not in holidays)), day
        assert info.holiday_name == holidays.get(day)
        assert info.makeup is (day in makeups)


def test_an_imported_year_replaces_the_package_for_the_whole_year():
    # A correction of 2026: National Day moved a week and no make-up days at all.
    notice = ImportedYear(
        2026, "更正", {date(2026, 10, 8) + timedelta(days=i): "国庆节" for i in range(3)}, frozenset()
    )
    calendar = WorkdayCalendar({2026: notice})
    assert calendar.day(date(2026, 10, 1)).workday is True  # a Thursday, no longer a holiday
    assert calendar.day(date(2026, 10, 8)).statutory_holiday
    assert calendar.day(date(2026, 10, 10)).workday is False and not calendar.day(date(2026, 10, 10)).makeup
    assert calendar.day(date(2026, 2, 16)).workday is True  # the package's 春节 is gone too
    assert all(calendar.day(d).source == "import" for d in all_days(2026))
    assert calendar.day(date(2025, 10, 1)).source == "package"  # other years untouched


def test_a_notice_in_json_reads_like_yaml():
    missing = first_missing_year()
    holidays, makeups = notice_days(missing)
    text = json.dumps({"year": missing, "source": "通知", "workdays": [d.isoformat() for d in makeups],
                       "holidays": [{"name": "元旦", "from": f"{missing}-01-01", "to": f"{missing}-01-03"},
                                    {"name": "国庆", "from": f"{missing}-10-01", "to": f"{missing}-10-07"}]},
                      ensure_ascii=False)  # fmt: skip
    notice = parse_notice(text)
    assert dict(notice.holidays) == holidays  # 国庆 is stored as 国庆节
    assert notice.workdays == frozenset(makeups)


def test_a_one_day_break_needs_no_to_and_an_empty_workdays_list_is_fine():
    notice = parse_notice("year: 2030\nsource: x\nholidays:\n  - {name: 清明, from: 2030-04-05}\nworkdays: []\n")
    assert dict(notice.holidays) == {date(2030, 4, 5): "清明节"} and notice.workdays == frozenset()


# --- the import file's problems, all at once ----------------------------------------------------
BAD = """\
year: 2030
source: 国办发明电〔2029〕1号
colour: red
holidays:
  - name: 元旦
    from: 2030-01-03
    to: 2030-01-01
  - name: 春节
    from: 2030-02-01
    to: 2030-02-20
  - name: 清明节
    from: 2029-04-05
  - name: 劳动节
    from: 2030-05-01
    to: 2030-05-05
    note: five days
  - from: 2030-06-05
  - name: 国庆节
    from: 2030-10-01
    to: 2030-10-07
workdays:
  - 2030-02-04
  - 2030-10-05
  - 2030-02-30
  - 2030-09-29
  - 2030-09-29
"""


def test_every_problem_of_a_file_is_reported_at_once():
    with pytest.raises(CalendarFileError) as caught:
        parse_notice(BAD, filename="2030.yaml")
    problems = caught.value.problems
    text = "\n".join(problems)
    assert "2030.yaml" in str(caught.value) and "10 problem(s)" in str(caught.value)
    expected = [
        ("第 3 行", "colour", "unknown key"),  # unknown top-level key
        ("第 5 行", "holidays[0]", "from 2030-01-03 is after to 2030-01-01"),
        ("第 8 行", "holidays[1]", "a break of 20 days"),  # longer than 15 days
        ("第 12 行", "holidays[2]", "2029-04-05 is outside 2030"),
        ("第 16 行", "holidays[3]", "unknown key 'note'"),
        ("第 17 行", "holidays[4]", "missing field 'name'"),
        ("第 22 行", "workdays[0]", "2030-02-04 is a Monday"),  # a make-up day on a weekday
        ("第 23 行", "workdays[1]", "2030-10-05 is both a holiday"),
        ("第 24 行", "workdays[2]", "'2030-02-30' is not a date"),
        ("第 26 行", "workdays[4]", "listed twice"),
    ]
    assert len(problems) == len(expected), text
    for problem, (line, entry, english) in zip(problems, expected, strict=True):
        zh, _, en = problem.partition(" / ")
        assert zh.startswith(line) and entry in zh and english in en, problem
        assert any("\u4e00" <= ch <= "\u9fff" for ch in zh), problem  # Chinese first


def test_missing_fields_and_wrong_types_are_reported():
    with pytest.raises(CalendarFileError) as caught:
        parse_notice("year: twenty\nholidays: {}\n")
    text = "\n".join(caught.value.problems)
    assert "missing field 'source'" in text and "missing field 'workdays'" in text
    assert "not a year" in text and "non-empty list" in text


@pytest.mark.parametrize("text", ["year: [2030\n", "a: b: c\n", "\tyear: 2030\n", "", "- 1\n- 2\n"])
def test_a_broken_file_is_one_clear_problem(text):
    with pytest.raises(CalendarFileError) as caught:
        parse_notice(text)
    assert len(caught.value.problems) == 1
    assert "Traceback" not in caught.value.problems[0] and " / " in caught.value.problems[0]


def test_a_december_day_in_next_years_file_says_where_it_belongs():
    text = "year: 2030\nsource: x\nholidays:\n  - {name: 元旦, from: 2029-12-30, to: 2030-01-01}\nworkdays: []\n"
    with pytest.raises(CalendarFileError) as caught:
        parse_notice(text)
    [problem] = caught.value.problems
    assert "2029 年的文件" in problem and "go in the 2029 file" in problem


def test_the_examples_in_the_documentation_are_valid_files():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "calendar.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:yaml|json)\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    for block in blocks:
        notice = parse_notice(block)
        assert notice.year == 2027 and notice.holidays and notice.workdays
