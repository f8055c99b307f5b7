"""The workday calendar as the rest of the plugin uses it: imported years from the database over
the pinned chinesecalendar package (the rules are in :mod:`wecom_plugin.domain.workdays`).

* :func:`load_calendar`: the calendar every process uses, cached per engine and rebuilt when an
  import changes the ``calendar_year`` table (one small query per call), so the clock may call it
  on every tick and an import is seen by every process on its next call.
* :func:`import_notice`: one year's State Council notice, all or nothing, audited; it closes the
  "calendar year missing" alert of that year.
* :func:`check_coverage`: the daily look ahead (``calendar.coverage`` job): an alert
  CALENDAR_ALERT_DAYS before the first day of a year without official data, so the year boundary
  never arrives unannounced.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.workdays import (
    HOLD,
    CalendarFileError,
    ImportedYear,
    WorkdayCalendar,
    parse_notice,
)
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.calendar import HOLIDAY, WORKDAY, CalendarDay, CalendarYear
from wecom_plugin.models.ops import Alert

__all__ = [
    "CalendarFileError",
    "ImportResult",
    "alert_key",
    "check_coverage",
    "coverage",
    "export_notice",
    "import_notice",
    "imported_years",
    "load_calendar",
]

YEAR = CalendarYear.__table__
DAY = CalendarDay.__table__
ALERT = Alert.__table__
ALERT_PREFIX = "calendar.year_missing:"
SYSTEM_ACTOR = "system:calendar"

Executor = Session | sa.Connection


def alert_key(year: int) -> str:
    """The alert raised while ``year`` has no official data (deduplicated while open)."""
    return f"{ALERT_PREFIX}{year}"


# --- loading ------------------------------------------------------------------------------------
# Per engine: the version and the calendars built for it, by fallback. The version is every
# (year, imported_at) pair of calendar_year: a handful of rows, and any import or re-import changes
# it, even one whose host clock runs behind the previous importer's (max(imported_at) alone would
# miss that), or one rolled back after this process read it.
_cache: weakref.WeakKeyDictionary[sa.Engine, tuple[tuple, dict[str, WorkdayCalendar]]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _engine(executor: Executor) -> sa.Engine:
    bind = executor.engine if isinstance(executor, sa.Connection) else executor.get_bind()
    return bind.engine if isinstance(bind, sa.Connection) else bind


def load_calendar(conn_or_session: Executor, fallback: str) -> WorkdayCalendar:
    """The workday calendar: the imported years in the database over the package, ``fallback``
    (CALENDAR_FALLBACK) for years with neither.

    Joins the caller's transaction with one small query (one more only when an import changed the
    table since this process last looked); the same calendar object is returned while nothing
    changed. On SQLite, a caller that only reads should use a connection with
    ``execution_options(sqlite_begin="DEFERRED")`` so no write lock is taken.
    """
    version = _version(conn_or_session.execute(sa.select(YEAR.c.year, YEAR.c.imported_at)))
    engine = _engine(conn_or_session)
    with _cache_lock:
        cached = _cache.get(engine)
        if cached is not None and cached[0] == version and fallback in cached[1]:
            return cached[1][fallback]
    if cached is not None and cached[0] == version:
        calendar = WorkdayCalendar(next(iter(cached[1].values())).imported, fallback=fallback)
    else:
        # Cached under the version the years were read with (one statement, one snapshot): an
        # import committed since the first query is then picked up by the next call.
        version, years = _read_imported(conn_or_session)
        calendar = WorkdayCalendar(years, fallback=fallback)
    with _cache_lock:
        cached = _cache.get(engine)
        if cached is None or cached[0] != version:
            cached = (version, {})
            _cache[engine] = cached
        return cached[1].setdefault(fallback, calendar)


def imported_years(conn_or_session: Executor) -> Mapping[int, ImportedYear]:
    """Every imported year, read from the tables (uncached)."""
    return _read_imported(conn_or_session)[1]


def _version(rows) -> tuple:
    return tuple(sorted({(row.year, row.imported_at.isoformat()) for row in rows}))


def _read_imported(conn_or_session: Executor) -> tuple[tuple, Mapping[int, ImportedYear]]:
    # One statement, so the years and their days come from one snapshot even under READ COMMITTED
    # while another process imports.
    rows = conn_or_session.execute(
        sa.select(YEAR.c.year, YEAR.c.imported_at, YEAR.c.source, DAY.c.day, DAY.c.kind, DAY.c.name)
        .select_from(YEAR.outerjoin(DAY, DAY.c.year == YEAR.c.year))
        .order_by(YEAR.c.year, DAY.c.day)
    ).all()
    sources: dict[int, str] = {}
    holidays: dict[int, dict[date, str]] = {}
    workdays: dict[int, set[date]] = {}
    for row in rows:
        sources[row.year] = row.source
        holidays.setdefault(row.year, {})
        workdays.setdefault(row.year, set())
        if row.day is None:
            continue  # a year without rows (not written by import_notice, but harmless)
        if row.kind == WORKDAY:
            workdays[row.year].add(row.day)
        else:
            holidays[row.year][row.day] = row.name or ""
    years = {
        year: ImportedYear(year, source, MappingProxyType(holidays[year]), frozenset(workdays[year]))
        for year, source in sources.items()
    }
    return _version(rows), MappingProxyType(years)


# --- importing ----------------------------------------------------------------------------------
@dataclass
class ImportResult:
    """What an import did (or, dry run, would do).

    ``breaks`` are the holiday breaks as (name, first day, last day); ``changed_days`` the days
    whose answer (workday or not, holiday name) differs from what the calendar said before, when
    the year had data before (``previous`` is ``"package"`` or ``"import"``; None: no data, every
    day is new).
    """

    year: int
    source: str
    holiday_days: int
    makeup_days: tuple[date, ...]
    breaks: tuple[tuple[str, date, date], ...]
    previous: str | None
    changed_days: tuple[date, ...] = ()
    dry_run: bool = False
    alert_closed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "year": self.year,
            "source": self.source,
            "holiday_days": self.holiday_days,
            "makeup_days": [d.isoformat() for d in self.makeup_days],
            "breaks": [{"name": n, "from": a.isoformat(), "to": b.isoformat()} for n, a, b in self.breaks],
            "previous": self.previous,
            "changed_days": [d.isoformat() for d in self.changed_days],
            "dry_run": self.dry_run,
            "alert_closed": self.alert_closed,
        }


def import_notice(session: Session, text: str, *, filename: str, actor: str, dry_run: bool = False) -> ImportResult:
    """Import one year's notice (the file's text): replace that year's rows, audit, and close the
    year's "calendar missing" alert. Joins the caller's transaction, which the caller commits (or,
    ``dry_run``, rolls back: nothing is written then). Raises :class:`CalendarFileError` with every
    problem of the file, having written nothing.
    """
    notice = parse_notice(text, filename=filename)
    before = load_calendar(session, HOLD)
    after = WorkdayCalendar({**before.imported, notice.year: notice}, fallback=HOLD)
    previous = None
    if notice.year in before.imported:
        previous = "import"
    elif before.has_data(notice.year):
        previous = "package"
    changed: list[date] = []
    if previous is not None:
        day = date(notice.year, 1, 1)
        while day.year == notice.year:
            old, new = before.day(day), after.day(day)
            if (old.workday, old.holiday_name if old.statutory_holiday else None) != (
                new.workday,
                new.holiday_name if new.statutory_holiday else None,
            ):
                changed.append(day)
            day += timedelta(days=1)
    result = ImportResult(
        year=notice.year,
        source=notice.source,
        holiday_days=len(notice.holidays),
        makeup_days=tuple(sorted(notice.workdays)),
        breaks=_breaks(notice),
        previous=previous,
        changed_days=tuple(changed),
        dry_run=dry_run,
    )
    if dry_run:
        return result
    # The year's row first, as an upsert: it locks the row, so two imports of one year at once
    # run one after the other (the second replaces the first) instead of colliding on the key.
    values = {
        "source": notice.source,
        "imported_at": utcnow(),
        "imported_by": actor[:64],
        "holiday_count": len(notice.holidays),
        "workday_count": len(notice.workdays),
    }
    upsert = insert_for(session, YEAR).values(year=notice.year, **values)
    session.execute(upsert.on_conflict_do_update(index_elements=["year"], set_=values))
    session.execute(sa.delete(DAY).where(DAY.c.year == notice.year))
    rows = [{"day": d, "year": notice.year, "kind": HOLIDAY, "name": n} for d, n in notice.holidays.items()]
    rows += [{"day": d, "year": notice.year, "kind": WORKDAY, "name": None} for d in sorted(notice.workdays)]
    session.execute(sa.insert(DAY), rows)
    from wecom_plugin.services import alerts, audit

    audit.record(
        actor,
        "calendar.import",
        target=f"calendar:{notice.year}",
        reason=notice.source,
        detail={"file": filename, **result.as_dict()},
        session=session,
    )
    # Bulletin schedules computed with the old calendar move to the new one's next occurrence at once.
    from flask import current_app

    from wecom_plugin.services.bulletins import reschedule_after_calendar_change

    reschedule_after_calendar_change(session, current_app.extensions["wecom_settings"])
    open_alert = sa.select(ALERT.c.id).where(ALERT.c.key == alert_key(notice.year), ALERT.c.state == "open")
    open_id = session.scalar(open_alert)
    if open_id is not None:
        result.alert_closed = alerts.acknowledge(session, open_id, actor)
    return result


def _breaks(notice: ImportedYear) -> tuple[tuple[str, date, date], ...]:
    """Consecutive rest days of one name, as (name, first, last)."""
    breaks: list[list[Any]] = []
    for day, name in sorted(notice.holidays.items()):
        if breaks and breaks[-1][0] == name and breaks[-1][2] + timedelta(days=1) == day:
            breaks[-1][2] = day
        else:
            breaks.append([name, day, day])
    return tuple((n, a, b) for n, a, b in breaks)


def export_notice(calendar: WorkdayCalendar, year: int, *, package_label: str = "chinesecalendar") -> str:
    """``year`` as an import file (YAML) that :func:`parse_notice` reads back to the same days:
    the way to correct a year (export, edit, import). ``year`` must have data."""
    if not calendar.has_data(year):
        raise ValueError(f"{year} has no official data")
    imported = calendar.imported.get(year)
    holidays: dict[date, str] = {}
    makeups: list[date] = []
    day = date(year, 1, 1)
    while day.year == year:
        info = calendar.day(day)
        if info.makeup:
            makeups.append(day)
        elif info.statutory_holiday:
            holidays[day] = info.holiday_name or ""
        day += timedelta(days=1)
    source = imported.source if imported is not None else f"{package_label} ({year})"
    notice = ImportedYear(year, source, holidays, frozenset(makeups))
    # JSON strings are valid YAML double-quoted scalars: any source or name round-trips.
    lines = [f"year: {year}", f"source: {json.dumps(source, ensure_ascii=False)}", "holidays:"]
    for name, first, last in _breaks(notice):
        lines += [f"  - name: {json.dumps(name, ensure_ascii=False)}", f"    from: {first}", f"    to: {last}"]
    lines.append("workdays:" if makeups else "workdays: []")
    lines += [f"  - {d}" for d in makeups]
    return "\n".join(lines) + "\n"


# --- coverage -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coverage:
    """The look ahead from ``today``: the first year without data and whether its alert is due."""

    today: date
    window_end: date
    first_year_without_data: int
    alert_due: bool
    begun: bool

    @property
    def first_day(self) -> date:
        """The first day that has no official data (today, once that year has begun)."""
        return max(self.today, date(self.first_year_without_data, 1, 1))


def coverage(calendar: WorkdayCalendar, today: date, alert_days: int) -> Coverage:
    """Pure: is a day in [today, today + alert_days] in a year without official data?"""
    end = today + timedelta(days=alert_days)
    missing = calendar.first_year_without_data(today.year)
    return Coverage(today, end, missing, missing <= end.year, missing <= today.year)


def check_coverage(session_or_conn: Executor, settings: Any, today: date) -> int | None:
    """Raise ``calendar.year_missing:{year}`` when a day from ``today`` to ``today`` +
    CALENDAR_ALERT_DAYS (``today`` in WECOM_TIMEZONE, passed in) lies in a year without official
    data; return that year, else None. Joins the caller's transaction (the caller commits).

    Severity ``warning`` ahead of the year, ``error`` once it has begun: an open warning is then
    closed (by ``system:calendar``, audited) and an error raised in its place, so it is delivered
    again rather than only counted. An alert a person acknowledged without importing comes back on
    the next check: the year is still missing.
    """
    from wecom_plugin.services import alerts

    fallback = settings.calendar_fallback
    calendar = load_calendar(session_or_conn, fallback)
    found = coverage(calendar, today, settings.calendar_alert_days)
    if not found.alert_due:
        return None
    year = found.first_year_without_data
    severity = "error" if found.begun else "warning"
    key = alert_key(year)
    if found.begun:
        open_warning = session_or_conn.execute(
            sa.select(ALERT.c.id).where(ALERT.c.key == key, ALERT.c.state == "open", ALERT.c.severity == "warning")
        ).scalar()
        if open_warning is not None:
            _acknowledge(session_or_conn, open_warning)
    title_zh, title_en = _titles(year, found.first_day, found.begun, fallback)
    alerts.raise_alert(
        key,
        title_zh=title_zh,
        title_en=title_en,
        severity=severity,
        detail={
            "year": year,
            "first_day": found.first_day.isoformat(),
            "fallback": fallback,
            "package_years": [calendar.package_years().start, calendar.package_years().stop - 1],
            "imported_years": sorted(calendar.imported),
            "fix": "wecom-plugin calendar import FILE",
        },
        session=session_or_conn,
    )
    return year


def _acknowledge(session_or_conn: Executor, alert_id: int) -> None:
    from wecom_plugin.services import alerts

    if isinstance(session_or_conn, sa.Connection):
        # alerts.acknowledge audits through a Session; one bound to this connection joins its
        # transaction (and leaves it open when closed).
        with Session(bind=session_or_conn, join_transaction_mode="create_savepoint") as session:
            alerts.acknowledge(session, alert_id, SYSTEM_ACTOR)
            session.commit()  # releases the savepoint only: the caller's transaction decides
        return
    alerts.acknowledge(session_or_conn, alert_id, SYSTEM_ACTOR)


def _titles(year: int, first_day: date, begun: bool, fallback: str) -> tuple[str, str]:
    when_zh = f"{year} 年已开始，" if begun else f"自 {first_day} 起"
    when_en = f"{year} has begun: " if begun else f"from {first_day}, "
    if fallback == HOLD:
        what_zh = "按设置暂停：不判定工作日，按法定工作日发送的通报不发送"
        what_en = "workday rules are held (CALENDAR_FALLBACK=hold): workday bulletins are not sent"
    else:
        what_zh = "按周一至周五推定工作日（无调休）"
        what_en = "Monday to Friday is assumed (CALENDAR_FALLBACK=weekdays), without make-up days"
    fix_zh = "请导入国务院节假日通知：wecom-plugin calendar import FILE"
    fix_en = "import the State Council notice: wecom-plugin calendar import FILE"
    return (
        f"{year} 年节假日安排未导入，{when_zh}{what_zh}。{fix_zh}",
        f"No official {year} holiday arrangement; {when_en}{what_en}. To fix, {fix_en}",
    )
