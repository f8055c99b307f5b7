"""China's statutory workday calendar (法定工作日，含调休). Pure: dates are passed in, nothing is read
from a clock, a database or a file.

Where a day's answer comes from, in order:

1. an **imported year** (:class:`ImportedYear`, from the State Council's annual notice through
   ``wecom-plugin calendar import``): it replaces everything else for every day of that year, so a
   correction of the package's data is possible;
2. the pinned **chinesecalendar** package (its ``holidays`` and ``workdays`` tables), for the years
   its data covers (:meth:`WorkdayCalendar.package_years`, derived from the data itself);
3. otherwise the year has **no official arrangement** and the configured fallback decides:
   ``hold`` (:data:`HOLD`) answers "unknown" (``workday=None``) so that nothing that depends on the
   calendar is decided by a guess; ``weekdays`` (:data:`WEEKDAYS`) assumes Monday to Friday and
   says so (``source="fallback"``).

For a day of a year with data, workday = (Monday to Friday and not a holiday rest day) or a 调休
make-up day. The import file format is parsed by :func:`parse_notice` (see docs/calendar.md).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType
from typing import Any

import yaml

HOLD, WEEKDAYS = "hold", "weekdays"
FALLBACKS = (HOLD, WEEKDAYS)

SOURCE_PACKAGE = "package"
SOURCE_IMPORT = "import"
SOURCE_FALLBACK = "fallback"
SOURCE_HOLD = "hold"

# A single break of more than this many days is a typo (the longest ever was 9 days: 春节 2026).
MAX_BREAK_DAYS = 15
# The name column of calendar_day (models/calendar.py) holds this many characters.
MAX_NAME_CHARS = 32
MAX_SOURCE_CHARS = 500
MIN_YEAR, MAX_YEAR = 2000, 2100

WEEKDAY_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
WEEKDAY_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# The package's Holiday enum is keyed by English names; its own Chinese labels are abbreviated
# ("清明", "端午", "中秋") and the 2015 special day's is a 27-character title, so the names the
# plugin shows and stores are mapped here.
PACKAGE_NAMES_ZH = {
    "New Year's Day": "元旦",
    "Spring Festival": "春节",
    "Tomb-sweeping Day": "清明节",
    "Labour Day": "劳动节",
    "Dragon Boat Festival": "端午节",
    "Mid-autumn Festival": "中秋节",
    "National Day": "国庆节",
    "Anti-Fascist 70th Day": "抗战胜利70周年纪念日",
}
NAMES_EN = {zh: en for en, zh in PACKAGE_NAMES_ZH.items()}
# Spellings people copy from the notice or write by habit, stored under the canonical name.
NAME_ALIASES = {
    "新年": "元旦",
    "清明": "清明节",
    "五一": "劳动节",
    "劳动": "劳动节",
    "五一劳动节": "劳动节",
    "端午": "端午节",
    "中秋": "中秋节",
    "国庆": "国庆节",
}


def _storable(text: str) -> bool:
    """No control characters (NUL included) and no lone surrogates: text any database stores as read."""
    return not any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def canonical_name(name: str) -> str:
    """The holiday name as stored: trimmed, common short forms expanded (清明 → 清明节)."""
    name = name.strip()
    return NAME_ALIASES.get(name, name)


def english_name(name: str) -> str:
    """An English label for a Chinese holiday name (the name itself when it is not a known one)."""
    return NAMES_EN.get(name, name)


@dataclass(frozen=True)
class DayInfo:
    """What the calendar says about one day, and why.

    * ``day``: the date asked about.
    * ``workday``: True on a statutory workday (a 调休 make-up day included), False on a rest day
      (weekend or holiday); None only for a day of a year without official data while the fallback
      is ``hold``: nobody knows, so nothing may be decided.
    * ``holiday_name``: the Chinese name of the statutory holiday the day belongs to (元旦, 春节,
      清明节, 劳动节, 端午节, 中秋节, 国庆节, ...): every rest day of a break, the bridging weekend
      days and the extra days of 2025+ included. A make-up day from the package carries the name of
      the holiday it makes up for; one from an imported notice has None (the file lists dates only).
      None on every other day.
    * ``makeup``: a 调休 make-up workday, i.e. a Saturday or Sunday that is worked.
    * ``source``: where the answer comes from: ``"package"`` (chinesecalendar), ``"import"`` (an
      imported notice), ``"fallback"`` (no data, CALENDAR_FALLBACK=weekdays: Monday to Friday
      assumed) or ``"hold"`` (no data, CALENDAR_FALLBACK=hold: unknown).
    """

    day: date
    workday: bool | None
    holiday_name: str | None
    makeup: bool
    source: str

    @property
    def statutory_holiday(self) -> bool:
        """A rest day of a statutory holiday break (not an ordinary weekend)."""
        return self.holiday_name is not None and not self.workday

    def describe(self) -> tuple[str, str]:
        """A one-line reason, ``(Chinese, English)``, for previews and delivery records."""
        year = self.day.year
        if self.source == SOURCE_HOLD:
            return (
                f"{year} 年无官方安排，按设置暂停",
                f"no official arrangement for {year}; held by CALENDAR_FALLBACK=hold",
            )
        if self.source == SOURCE_FALLBACK:
            return (
                f"{year} 年无官方安排，按周一至周五推定",
                f"no official arrangement for {year}; Monday to Friday assumed (CALENDAR_FALLBACK=weekdays)",
            )
        if self.makeup:
            weekday = self.day.weekday()
            return (f"调休上班（{WEEKDAY_ZH[weekday]}）", f"make-up workday ({WEEKDAY_EN[weekday]})")
        if self.statutory_holiday:
            name = self.holiday_name or ""
            return (f"{name}放假", f"{english_name(name)} holiday")
        if self.workday:
            return ("工作日", "workday")
        return ("周末", "weekend")


@dataclass(frozen=True)
class ImportedYear:
    """One year's arrangement as the State Council's notice states it (an imported file).

    * ``year``: the calendar year it covers; every date below lies in it.
    * ``source``: where it comes from, e.g. "国务院办公厅关于2027年部分节假日安排的通知（国办发明电〔2026〕N号）".
    * ``holidays``: every rest day of a statutory holiday break, bridging weekend days included,
      mapped to the Chinese holiday name.
    * ``workdays``: the 调休 make-up workdays (Saturdays or Sundays that are worked).
    """

    year: int
    source: str
    holidays: Mapping[date, str]
    workdays: frozenset[date]


class WorkdayCalendar:
    """The calendar: imported years over the pinned package, and the fallback for the rest.

    ``imported`` maps a year to its :class:`ImportedYear`; ``fallback`` is :data:`HOLD` or
    :data:`WEEKDAYS` (CALENDAR_FALLBACK). Instances are immutable and cheap to build.
    """

    def __init__(self, imported: Mapping[int, ImportedYear] | None = None, fallback: str = HOLD) -> None:
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, not {fallback!r}")
        imported = dict(imported or {})
        for year, entry in imported.items():
            if entry.year != year:
                raise ValueError(f"imported year {entry.year} filed under {year}")
        self._imported = MappingProxyType(imported)
        self.fallback = fallback

    @property
    def imported(self) -> Mapping[int, ImportedYear]:
        """The imported years, by year (read-only)."""
        return self._imported

    @staticmethod
    def package_years() -> range:
        """The years the pinned chinesecalendar covers, read from its data (never hard-coded), so
        upgrading the package moves the boundary with it. The package itself refuses dates outside
        the span from its first to its last holiday's year."""
        return _package_years()

    def has_data(self, year: int) -> bool:
        """Whether ``year`` has an official arrangement: imported, or in the package's data."""
        return year in self._imported or year in _package_years()

    def first_year_without_data(self, from_year: int) -> int:
        """The first year from ``from_year`` on (inclusive) that has no official arrangement."""
        year = from_year
        while self.has_data(year):
            year += 1
        return year

    def day(self, d: date) -> DayInfo:
        """What the calendar says about ``d`` (a ``date``; a ``datetime`` is refused: its date
        depends on a time zone the caller must choose)."""
        if not isinstance(d, date) or hasattr(d, "hour"):
            raise TypeError(f"expected a datetime.date, got {type(d).__name__}")
        imported = self._imported.get(d.year)
        if imported is not None:
            return _official(d, imported.holidays.get(d), d in imported.workdays, SOURCE_IMPORT, None)
        if d.year in _package_years():
            holidays, workdays = _package_tables()
            if d in workdays:
                return _official(d, None, True, SOURCE_PACKAGE, _zh(workdays[d]))
            name = holidays.get(d)
            return _official(d, None if name is None else _zh(name), False, SOURCE_PACKAGE, None)
        if self.fallback == WEEKDAYS:
            return DayInfo(d, d.weekday() < 5, None, False, SOURCE_FALLBACK)
        return DayInfo(d, None, None, False, SOURCE_HOLD)

    def is_workday(self, d: date) -> bool | None:
        """True or False; None for a day without official data under the ``hold`` fallback."""
        return self.day(d).workday


def _official(d: date, holiday: str | None, makeup: bool, source: str, makeup_name: str | None) -> DayInfo:
    if makeup:
        return DayInfo(d, True, makeup_name, True, source)
    return DayInfo(d, d.weekday() < 5 and holiday is None, holiday, False, source)


def _zh(package_name: str) -> str:
    # A holiday the package adds after this mapping was written still gets a Chinese name: the
    # enum's own label (shortened to fit the name column).
    if package_name in PACKAGE_NAMES_ZH:
        return PACKAGE_NAMES_ZH[package_name]
    import chinese_calendar

    try:
        return chinese_calendar.Holiday(package_name).chinese[:MAX_NAME_CHARS]
    except (ValueError, AttributeError):
        return package_name[:MAX_NAME_CHARS]


@functools.cache
def _package_tables() -> tuple[Mapping[date, str], Mapping[date, str]]:
    from chinese_calendar import constants

    return constants.holidays, constants.workdays


@functools.cache
def _package_years() -> range:
    holidays, workdays = _package_tables()
    days = [*holidays, *workdays]
    return range(min(days).year, max(days).year + 1)


# --- the import file ------------------------------------------------------------------------------
class CalendarFileError(ValueError):
    """An import file that cannot be used. ``problems`` lists every fault found, one bilingual line
    each (Chinese first, then English), naming the line and entry at fault. Nothing is imported."""

    def __init__(self, problems: list[str], filename: str = "") -> None:
        self.problems = list(problems)
        self.filename = filename
        name = f"{filename}: " if filename else ""
        n = len(self.problems)
        super().__init__(
            f"{name}日历文件有 {n} 处错误，未导入任何数据 / {n} problem(s) in the calendar file, nothing imported"
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that leaves dates as text, so ``2027-02-30`` is one reported problem of its entry
    instead of an exception for the whole file, and YAML and JSON files read the same."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_TOP_KEYS = ("year", "source", "holidays", "workdays")
_BREAK_KEYS = ("name", "from", "to")


def parse_notice(text: str, *, filename: str = "") -> ImportedYear:
    """Parse and check one year's import file (YAML, or the same structure as JSON).

    All or nothing: every problem is collected (dates outside ``year``, ``from`` after ``to``, a
    make-up day that is not a Saturday or Sunday, a date both holiday and workday, a date listed
    twice, unknown keys, missing fields, a break longer than :data:`MAX_BREAK_DAYS` days, malformed
    values) and raised together as :class:`CalendarFileError`; bad YAML is one problem.
    """
    if text.startswith("\ufeff"):
        text = text[1:]  # a BOM from a Windows editor
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"第 {mark.line + 1} 行" if mark is not None else ""
        where_en = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CalendarFileError(
            [f"{where}不是有效的 YAML/JSON / {where_en}not valid YAML or JSON ({problem})"], filename
        ) from None
    finally:
        loader.dispose()
    lines = _line_numbers(node)
    checker = _Checker(lines)
    result = checker.check(data)
    if checker.problems:
        raise CalendarFileError(checker.problems, filename)
    assert result is not None
    return result


def _line_numbers(node: Any) -> dict[tuple, int]:
    """1-based line of each value in the document, keyed by its path (``("holidays", 2, "from")``)."""
    lines: dict[tuple, int] = {}

    def walk(n: Any, path: tuple) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode):
                    walk(value, (*path, key.value))
        elif isinstance(n, yaml.SequenceNode):
            for index, item in enumerate(n.value):
                walk(item, (*path, index))

    if node is not None:
        walk(node, ())
    return lines


class _Checker:
    def __init__(self, lines: dict[tuple, int]) -> None:
        self.lines = lines
        self.found: list[tuple[int, int, str]] = []  # (line, order found, text)
        self.names: dict[int, str] = {}  # holidays entry index -> its name, for labels

    def add(self, path: tuple, zh: str, en: str) -> None:
        line = (self.lines.get(path) or self.lines.get(path[:-1])) if path else None
        where_zh = f"第 {line} 行 " if line else ""
        where_en = f"line {line}, " if line else ""
        label_zh, label_en = self.label(path, "（{}）"), self.label(path, " ({})")
        text = f"{where_zh}{label_zh}：{zh} / {where_en}{label_en}: {en}"
        self.found.append((line or 0, len(self.found), text))

    @property
    def problems(self) -> list[str]:
        """Every problem, in the order of the file's lines."""
        return [text for _, _, text in sorted(self.found)]

    def label(self, path: tuple, name_format: str) -> str:
        """``holidays[2]（国庆节）.from``: the entry by position (counted from 0) and, for a break,
        its name, so a person finds it without counting."""
        if not path:
            return "文件" if "（" in name_format else "file"
        text = str(path[0])
        for depth, part in enumerate(path[1:], start=1):
            if isinstance(part, int):
                text += f"[{part}]"
                name = self.names.get(part) if path[0] == "holidays" and depth == 1 else None
                if name:
                    text += name_format.format(name)
            else:
                text += f".{part}"
        return text

    def date(self, value: Any, path: tuple, year: int | None) -> date | None:
        if isinstance(value, date) and not hasattr(value, "hour"):
            parsed = value
        elif isinstance(value, str):
            try:
                # Exactly YYYY-MM-DD: fromisoformat also reads week dates such as 2027-W40-1.
                if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip(), re.ASCII):
                    raise ValueError(value)
                parsed = date.fromisoformat(value.strip())
            except ValueError:
                self.add(path, f"日期 {value!r} 无效（应为 YYYY-MM-DD）", f"{value!r} is not a date (YYYY-MM-DD)")
                return None
        else:
            self.add(path, f"应为日期 YYYY-MM-DD，而不是 {value!r}", f"expected a date YYYY-MM-DD, not {value!r}")
            return None
        if year is not None and parsed.year != year:
            hint_zh = hint_en = ""
            if parsed.year == year - 1 and parsed.month == 12:
                # 元旦 breaks sometimes start in late December (2018-12-30, 2023-12-30): those days
                # belong to the previous year's calendar.
                hint_zh = f"；跨年的元旦假期，12 月的日期请写入 {year - 1} 年的文件"
                hint_en = f"; December days of a New Year break that starts in {year - 1} go in the {year - 1} file"
            self.add(path, f"{parsed} 不在 {year} 年内{hint_zh}", f"{parsed} is outside {year}{hint_en}")
            return None
        return parsed

    def keys(self, value: dict, allowed: tuple[str, ...], required: tuple[str, ...], path: tuple) -> None:
        for key in value:
            if key not in allowed:
                self.add(
                    (*path, key),
                    f"未知字段 {key!r}（可用：{', '.join(allowed)}）",
                    f"unknown key {key!r} (allowed: {', '.join(allowed)})",
                )
        for key in required:
            if key not in value:
                self.add(path, f"缺少字段 {key}", f"missing field {key!r}")

    def check(self, data: Any) -> ImportedYear | None:
        if data is None:
            self.add((), "文件是空的", "the file is empty")
            return None
        if not isinstance(data, dict):
            self.add((), "文件应为一个映射（year、source、holidays、workdays）", "the file must be a mapping "
                     "with year, source, holidays and workdays")  # fmt: skip
            return None
        self.keys(data, _TOP_KEYS, _TOP_KEYS, ())
        year = data.get("year")
        if "year" in data and (isinstance(year, bool) or not isinstance(year, int) or not MIN_YEAR <= year <= MAX_YEAR):
            self.add(("year",), f"年份 {year!r} 无效", f"{year!r} is not a year between {MIN_YEAR} and {MAX_YEAR}")
            year = None
        if not isinstance(year, int):
            year = None
        source = data.get("source")
        if "source" in data and (not isinstance(source, str) or not source.strip()):
            self.add(("source",), "应为非空文本（通知标题与文号）", "must be non-empty text (the notice's title)")
        elif isinstance(source, str) and len(source.strip()) > MAX_SOURCE_CHARS:
            self.add(("source",), f"超过 {MAX_SOURCE_CHARS} 个字符", f"longer than {MAX_SOURCE_CHARS} characters")
        elif isinstance(source, str) and not _storable(source):
            self.add(("source",), "含有控制字符或无效字符", "holds a control or invalid character")
        holidays = self.holidays(data.get("holidays"), year) if "holidays" in data else {}
        workdays = self.workdays(data.get("workdays"), year) if "workdays" in data else {}
        for day, index in sorted(workdays.items()):
            if day in holidays:
                name, break_index = holidays[day]
                self.add(
                    ("workdays", index),
                    f"{day} 同时是假日（holidays[{break_index}] {name}）和调休上班日",
                    f"{day} is both a holiday (holidays[{break_index}] {name}) and a make-up workday",
                )
        if self.problems or year is None:
            return None
        return ImportedYear(
            year=year,
            source=str(source).strip(),
            holidays=MappingProxyType({d: name for d, (name, _) in sorted(holidays.items())}),
            workdays=frozenset(workdays),
        )

    def holidays(self, value: Any, year: int | None) -> dict[date, tuple[str, int]]:
        """Every rest day -> (name, index of its entry)."""
        days: dict[date, tuple[str, int]] = {}
        if not isinstance(value, list) or not value:
            self.add(("holidays",), "应为非空列表（每项 name、from、to）", "must be a non-empty list of "
                     "breaks (name, from, to)")  # fmt: skip
            return days
        for index, entry in enumerate(value):
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                self.names[index] = entry["name"].strip()[:MAX_NAME_CHARS]
        for index, entry in enumerate(value):
            path = ("holidays", index)
            if not isinstance(entry, dict):
                self.add(path, "应为映射（name、from、to）", "must be a mapping with name, from and to")
                continue
            self.keys(entry, _BREAK_KEYS, ("name", "from"), path)
            name = entry.get("name")
            if "name" in entry and (not isinstance(name, str) or not name.strip()):
                self.add((*path, "name"), "假日名称应为非空文本", "the holiday name must be non-empty text")
                name = None
            elif isinstance(name, str) and len(canonical_name(name)) > MAX_NAME_CHARS:
                self.add((*path, "name"), f"名称超过 {MAX_NAME_CHARS} 个字符", f"name longer than {MAX_NAME_CHARS}")
                name = None
            elif isinstance(name, str) and not _storable(name):
                self.add((*path, "name"), "名称含有控制字符或无效字符", "the name holds a control or invalid character")
                name = None
            start = self.date(entry["from"], (*path, "from"), year) if "from" in entry else None
            end = self.date(entry["to"], (*path, "to"), year) if entry.get("to") is not None else start
            if start is None or end is None or not isinstance(name, str):
                continue
            if start > end:
                self.add(path, f"开始 {start} 晚于结束 {end}", f"from {start} is after to {end}")
                continue
            length = (end - start).days + 1
            if length > MAX_BREAK_DAYS:
                self.add(path, f"假期 {length} 天，超过 {MAX_BREAK_DAYS} 天", f"a break of {length} days, longer "
                         f"than {MAX_BREAK_DAYS}")  # fmt: skip
                continue
            name = canonical_name(name)
            overlaps: dict[int, list[date]] = {}  # earlier entry -> its days this one repeats
            for offset in range(length):
                day = start + timedelta(days=offset)
                if day in days:
                    overlaps.setdefault(days[day][1], []).append(day)
                else:
                    days[day] = (name, index)
            for other, repeated in overlaps.items():
                span = f"{repeated[0]}" if len(repeated) == 1 else f"{repeated[0]}..{repeated[-1]}"
                other_name = self.names.get(other, "")
                self.add(path, f"{span} 已在 holidays[{other}]（{other_name}）中", f"{span} already in "
                         f"holidays[{other}] ({other_name})")  # fmt: skip
        return days

    def workdays(self, value: Any, year: int | None) -> dict[date, int]:
        """Every make-up day -> index of its entry."""
        days: dict[date, int] = {}
        if value is None:
            value = []  # `workdays:` with nothing under it: a year without make-up days
        if not isinstance(value, list):
            self.add(("workdays",), "应为日期列表（可为空 []）", "must be a list of dates (may be empty: [])")
            return days
        for index, item in enumerate(value):
            path = ("workdays", index)
            day = self.date(item, path, year)
            if day is None:
                continue
            if day.weekday() < 5:
                self.add(
                    path,
                    f"{day} 是{WEEKDAY_ZH[day.weekday()]}，调休上班日应为周六或周日",
                    f"{day} is a {WEEKDAY_EN[day.weekday()]}; a make-up workday is a Saturday or Sunday",
                )
                continue
            if day in days:
                self.add(path, f"{day} 重复（workdays[{days[day]}]）", f"{day} is listed twice (workdays[{days[day]}])")
                continue
            days[day] = index
        return days
