"""``wecom-plugin calendar ...``: China's statutory workday calendar (法定工作日，含调休).

* ``calendar import FILE [--dry-run] [--by NAME]``: import one year's State Council notice (YAML or
  JSON, docs/calendar.md); all or nothing: every problem of the file is printed and nothing stored.
* ``calendar show YEAR [--month M]``: the year's holidays and make-up days, and where they come from.
* ``calendar export YEAR``: the year as an import file (to correct a year: export, edit, import).
* ``calendar status``: the years covered (package, imported), the first year without data, the
  fallback, and whether the look-ahead alert is due (it is raised now if so).

Chinese first, English second; ``--json`` for scripts; errors end in one line (exit code 1).
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import click
from flask.cli import with_appcontext

from wecom_plugin.domain.workdays import WEEKDAY_ZH

FALLBACK_ZH = {
    "hold": "暂停（不判定工作日，按法定工作日的通报不发送）/ hold (nothing decided; workday bulletins not sent)",
    "weekdays": "按周一至周五推定（无调休）/ Monday to Friday assumed (no make-up days)",
}


def register(cli: click.Group) -> None:
    """Add the ``calendar`` command group to ``cli``."""
    cli.add_command(calendar_group)


@click.group("calendar")
def calendar_group() -> None:
    """Workday calendar (法定工作日与调休): `calendar import FILE`, `calendar show YEAR`, `calendar status`."""


def _settings():
    from flask import current_app

    return current_app.extensions["wecom_settings"]


def _echo_json(value) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _day(d: date) -> str:
    return f"{d.isoformat()} {WEEKDAY_ZH[d.weekday()]}"


def _when(moment) -> str:
    """An import time as people read it: local (WECOM_TIMEZONE), to the minute."""
    return moment.astimezone(_settings().tz).strftime("%Y-%m-%d %H:%M")


def _read_only():
    """A connection that reads without SQLite's write lock."""
    from wecom_plugin.extensions import db

    return db.engine.connect().execution_options(sqlite_begin="DEFERRED")


@calendar_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check the file and say what it contains; store nothing.")
@click.option("--by", "actor", default=None, help="Who imports (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def calendar_import(path: str, dry_run: bool, actor: str | None, as_json: bool) -> None:
    """Import one year's holiday arrangement (国务院办公厅关于部分节假日安排的通知) from FILE.

    The year replaces the package's data for that year. Every problem of the file is listed and
    nothing is stored while there is one.
    """
    import getpass
    from pathlib import Path

    from wecom_plugin.extensions import db
    from wecom_plugin.services import workday_calendar as service

    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"文件不是 UTF-8 编码 / the file is not UTF-8 (byte {exc.start})") from None
    try:
        result = service.import_notice(
            db.session, text, filename=file.name, actor=f"user:{actor or getpass.getuser()}", dry_run=dry_run
        )
    except service.CalendarFileError as exc:
        db.session.rollback()
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        raise click.ClickException(str(exc)) from None
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    if as_json:
        _echo_json(result.as_dict())
        return
    head = "试运行，未写入 / dry run, nothing stored" if dry_run else "已导入 / imported"
    click.echo(f"{head}: {result.year} 年 year — {result.source}")
    click.echo(f"  假日 holiday rest days: {result.holiday_days}")
    for name, first, last in result.breaks:
        days = (last - first).days + 1
        span = _day(first) if first == last else f"{_day(first)} – {_day(last)}"
        click.echo(f"    {name}: {span}（{days} 天 days）")
    makeups = ", ".join(_day(d) for d in result.makeup_days) or "-"
    click.echo(f"  调休上班 make-up workdays: {len(result.makeup_days)}: {makeups}")
    if result.previous is None:
        click.echo(f"  此前无 {result.year} 年数据 / {result.year} had no data before")
    else:
        was = "导入数据 an earlier import" if result.previous == "import" else "chinesecalendar 包 the package"
        changed = ", ".join(_day(d) for d in result.changed_days[:20]) or "-"
        more = f" …（共 {len(result.changed_days)} total）" if len(result.changed_days) > 20 else ""
        click.echo(f"  替换 replaces {was}; 变化的日期 days that change: {changed}{more}")
    if result.alert_closed:
        click.echo(f"  已关闭告警 alert closed: {service.alert_key(result.year)}")


@calendar_group.command("show")
@click.argument("year", type=click.IntRange(1900, 2200))
@click.option("--month", type=click.IntRange(1, 12), default=None, help="Only this month (1-12).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def calendar_show(year: int, month: int | None, as_json: bool) -> None:
    """The holidays and make-up workdays of YEAR (or one month), and where they come from."""
    import sqlalchemy as sa

    from wecom_plugin.models.calendar import CalendarYear
    from wecom_plugin.services.workday_calendar import load_calendar

    settings = _settings()
    with _read_only() as conn:
        calendar = load_calendar(conn, settings.calendar_fallback)
        imported = conn.execute(sa.select(CalendarYear.__table__).where(CalendarYear.year == year)).first()
    first = date(year, month or 1, 1)
    last = (date(year, month + 1, 1) if month and month < 12 else date(year + 1, 1, 1)) - timedelta(days=1)
    days = []
    day = first
    while day <= last:
        info = calendar.day(day)
        if info.makeup or info.statutory_holiday:
            zh, en = info.describe()
            days.append({"day": day.isoformat(), "weekday": WEEKDAY_ZH[day.weekday()], "zh": zh, "en": en,
                         "holiday": info.holiday_name, "makeup": info.makeup, "source": info.source})  # fmt: skip
        day += timedelta(days=1)
    if imported is not None:
        origin = {"source": "import", "notice": imported.source, "imported_at": _when(imported.imported_at),
                  "imported_by": imported.imported_by}  # fmt: skip
    elif year in calendar.package_years():
        origin = {"source": "package", "notice": f"chinesecalendar {_package_version()}"}
    else:
        origin = {"source": calendar.day(first).source, "fallback": settings.calendar_fallback}
    if as_json:
        _echo_json({"year": year, "month": month, "origin": origin, "days": days})
        return
    period = f"{year} 年 {month} 月" if month else f"{year} 年"
    if origin["source"] == "import":
        click.echo(f"{period}：导入 imported — {origin['notice']}（{origin['imported_by']}, {origin['imported_at']}）")
    elif origin["source"] == "package":
        click.echo(f"{period}：{origin['notice']}（package）")
    else:
        zh, en = calendar.day(first).describe()
        click.echo(f"{period}：{zh} / {en}")
        click.echo(f"  CALENDAR_FALLBACK={settings.calendar_fallback}: {FALLBACK_ZH[settings.calendar_fallback]}")
        click.echo(f"  导入官方安排 to fix: wecom-plugin calendar import FILE（{year}）")
        return
    if not days:
        click.echo("  无节假日或调休 / no holidays or make-up days")
    for item in days:
        click.echo(f"  {item['day']} {item['weekday']}  {item['zh']} / {item['en']}  [{item['source']}]")


@calendar_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def calendar_status(as_json: bool) -> None:
    """Years covered, the first year without data, the fallback, and the look-ahead alert."""
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.models.calendar import CalendarYear
    from wecom_plugin.models.dbtime import db_now
    from wecom_plugin.models.ops import Alert
    from wecom_plugin.services import workday_calendar as service

    settings = _settings()
    session = db.session
    today = db_now(session).astimezone(settings.tz).date()
    calendar = service.load_calendar(session, settings.calendar_fallback)
    found = service.coverage(calendar, today, settings.calendar_alert_days)
    # Running the check here too means an admin looking at the status never sees "due" without
    # the alert having been raised (deduplicated: an open alert is only counted again).
    service.check_coverage(session, settings, today)
    years = [
        {"year": row.year, "source": row.source, "imported_at": _when(row.imported_at), "imported_by": row.imported_by,
         "holidays": row.holiday_count, "makeup_days": row.workday_count}
        for row in session.scalars(sa.select(CalendarYear).order_by(CalendarYear.year))
    ]  # fmt: skip
    missing = found.first_year_without_data
    alert_id = session.scalar(sa.select(Alert.id).where(Alert.key == service.alert_key(missing), Alert.state == "open"))
    session.commit()
    package = calendar.package_years()
    alert_from = date(missing, 1, 1) - timedelta(days=settings.calendar_alert_days)
    status = {
        "today": today.isoformat(),
        "package": {"version": _package_version(), "first_year": package.start, "last_year": package.stop - 1},
        "imported": years,
        "first_year_without_data": missing,
        "fallback": settings.calendar_fallback,
        "alert_days": settings.calendar_alert_days,
        "alert_due": found.alert_due,
        "alert_from": alert_from.isoformat(),
        "open_alert_id": alert_id,
    }
    if as_json:
        _echo_json(status)
        return
    click.echo(f"工作日日历 workday calendar（今天 today {today.isoformat()}, {settings.timezone}）")
    click.echo(f"  chinesecalendar {_package_version()}: {package.start}–{package.stop - 1} 年 years")
    if years:
        for y in years:
            click.echo(f"  导入 imported {y['year']}: {y['source']}（{y['imported_by']}, {y['imported_at']}; "
                       f"假日 {y['holidays']} holiday days, 调休 {y['makeup_days']} make-up days）")  # fmt: skip
    else:
        click.echo("  导入 imported: 无 / none")
    click.echo(f"  无官方数据的第一年 first year without data: {missing}")
    click.echo(f"  CALENDAR_FALLBACK={settings.calendar_fallback}: {FALLBACK_ZH[settings.calendar_fallback]}")
    if found.alert_due:
        ref = f" #{alert_id}" if alert_id is not None else ""
        click.echo(
            f"  告警已到期 alert due{ref}: {service.alert_key(missing)} — 请导入 {missing} 年国务院通知 / import the "
            f"{missing} notice: wecom-plugin calendar import FILE"
        )
    else:
        click.echo(
            f"  告警未到期 no alert yet: 将于 {alert_from} 起告警（提前 {settings.calendar_alert_days} 天）/ "
            f"alerts from {alert_from} (CALENDAR_ALERT_DAYS={settings.calendar_alert_days})"
        )


@calendar_group.command("export")
@click.argument("year", type=click.IntRange(1900, 2200))
@with_appcontext
def calendar_export(year: int) -> None:
    """Print YEAR as an import file (YAML), from the package or an earlier import.

    To correct a year (the rare 元旦 break that starts in late December belongs to the December's
    year), export it, edit the file and import it again.
    """
    from wecom_plugin.services.workday_calendar import export_notice, load_calendar

    with _read_only() as conn:
        calendar = load_calendar(conn, _settings().calendar_fallback)
    if not calendar.has_data(year):
        raise click.ClickException(f"{year} 年没有官方数据可导出 / {year} has no official data to export")
    click.echo(export_notice(calendar, year, package_label=f"chinesecalendar {_package_version()}"), nl=False)


def _package_version() -> str:
    import chinese_calendar

    return str(getattr(chinese_calendar, "__version__", "?"))
