"""The calendar over the database (SQLite and PostgreSQL): import all or nothing, load_calendar's
cache seeing imports, the look-ahead alert, the job and its schedule, and the command line."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pytest
import sqlalchemy as sa

from tests.calendar.support import first_missing_year, notice_days, notice_yaml, weekend_after
from tests.groups.check_support import run_worker
from wecom_plugin.cli import cli
from wecom_plugin.domain.workdays import HOLD, WorkdayCalendar, parse_notice
from wecom_plugin.extensions import db
from wecom_plugin.models.calendar import CalendarDay, CalendarYear
from wecom_plugin.models.ops import Alert, AuditEvent
from wecom_plugin.runtime import registry
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import workday_calendar as service

MISSING = first_missing_year()


def settings_of(app):
    return app.extensions["wecom_settings"]


def do_import(app, text: str, *, actor: str = "user:王磊", dry_run: bool = False) -> service.ImportResult:
    with app.app_context():
        result = service.import_notice(db.session, text, filename="notice.yaml", actor=actor, dry_run=dry_run)
        db.session.rollback() if dry_run else db.session.commit()
        return result


def calendar_of(app, fallback: str = HOLD) -> WorkdayCalendar:
    with app.app_context(), db.engine.connect() as conn:
        return service.load_calendar(conn, fallback)


def stored(app) -> tuple[list[tuple], list[tuple]]:
    with app.app_context():
        years = db.session.execute(sa.select(CalendarYear.year, CalendarYear.source, CalendarYear.imported_by,
                                             CalendarYear.holiday_count, CalendarYear.workday_count)).all()  # fmt: skip
        days = db.session.execute(sa.select(CalendarDay.day, CalendarDay.year, CalendarDay.kind, CalendarDay.name)
                                  .order_by(CalendarDay.day)).all()  # fmt: skip
        db.session.rollback()
        return [tuple(r) for r in years], [tuple(r) for r in days]


def alerts(app) -> list[Alert]:
    with app.app_context():
        found = list(db.session.scalars(sa.select(Alert).where(Alert.key.like("calendar.%")).order_by(Alert.id)))
        db.session.expunge_all()
        db.session.rollback()
        return found


def check(app, today: date) -> int | None:
    with app.app_context():
        year = service.check_coverage(db.session, settings_of(app), today)
        db.session.commit()
        return year


def run(app, *args):
    result = app.test_cli_runner().invoke(cli, ["calendar", *args])
    assert "Traceback" not in result.output, result.output
    return result


# --- import ---------------------------------------------------------------------------------------
def test_an_import_is_stored_audited_and_seen_by_load_calendar(app):
    holidays, makeups = notice_days(MISSING)
    before = calendar_of(app)
    assert before.is_workday(date(MISSING, 1, 4)) is None
    result = do_import(app, notice_yaml(MISSING))
    assert (result.year, result.holiday_days, result.makeup_days, result.previous) == (
        MISSING,
        10,
        tuple(makeups),
        None,
    )
    assert result.breaks == (("元旦", date(MISSING, 1, 1), date(MISSING, 1, 3)),
                             ("国庆节", date(MISSING, 10, 1), date(MISSING, 10, 7)))  # fmt: skip
    years, days = stored(app)
    assert [y[0] for y in years] == [MISSING] and years[0][2:] == ("user:王磊", 10, 2)
    assert [(d, k, n) for d, _, k, n in days] == sorted(
        [(d, "holiday", n) for d, n in holidays.items()] + [(d, "workday", None) for d in makeups]
    )
    after = calendar_of(app)
    assert after.has_data(MISSING) and after.first_year_without_data(MISSING) == MISSING + 1
    assert after.day(makeups[0]).workday is True and after.day(makeups[0]).source == "import"
    assert after.day(date(MISSING, 10, 2)).statutory_holiday
    with app.app_context():
        [event] = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "calendar.import")).all()
        assert event.actor == "user:王磊" and event.target == f"calendar:{MISSING}" and event.outcome == "success"
        assert event.detail["file"] == "notice.yaml" and event.detail["holiday_days"] == 10
        db.session.rollback()


def test_a_reimport_replaces_the_whole_year(app):
    do_import(app, notice_yaml(MISSING))
    smaller = (
        f"year: {MISSING}\nsource: 更正\nholidays:\n  - {{name: 春节, from: {MISSING}-02-10, to: {MISSING}-02-12}}\n"
    )
    result = do_import(app, smaller + "workdays: []\n")
    assert result.previous == "import" and date(MISSING, 10, 1) in result.changed_days
    years, days = stored(app)
    assert years == [(MISSING, "更正", "user:王磊", 3, 0)]
    assert [d for d, *_ in days] == [date(MISSING, 2, 10), date(MISSING, 2, 11), date(MISSING, 2, 12)]
    calendar = calendar_of(app)
    assert not calendar.day(date(MISSING, 10, 1)).statutory_holiday
    assert calendar.day(date(MISSING, 2, 11)).holiday_name == "春节"


def test_an_import_of_a_package_year_lists_what_changes(app):
    text = service.export_notice(WorkdayCalendar(), 2026).replace("2026-10-10", "2026-10-11")
    result = do_import(app, text, dry_run=True)
    assert result.previous == "package" and result.changed_days == (date(2026, 10, 10), date(2026, 10, 11))
    assert stored(app) == ([], [])  # a dry run writes nothing


def test_a_bad_file_changes_nothing(app):
    do_import(app, notice_yaml(MISSING))
    before = stored(app)
    bad = notice_yaml(MISSING).replace(f"{MISSING}-10-07", f"{MISSING}-10-30") + "extra: 1\n"
    with app.app_context(), pytest.raises(service.CalendarFileError) as caught:
        service.import_notice(db.session, bad, filename="bad.yaml", actor="user:x")
    assert len(caught.value.problems) == 2
    assert stored(app) == before


def test_an_import_failing_half_way_leaves_the_previous_year_intact(app, monkeypatch):
    do_import(app, notice_yaml(MISSING))
    before = stored(app)
    from wecom_plugin.services import audit

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(audit, "record", broken)  # after the year's rows were deleted and rewritten
    other = notice_yaml(MISSING).replace("国庆节", "劳动节")
    with app.app_context():
        with pytest.raises(RuntimeError):
            service.import_notice(db.session, other, filename="n.yaml", actor="user:x")
        db.session.rollback()
    assert stored(app) == before
    assert calendar_of(app).day(date(MISSING, 10, 1)).holiday_name == "国庆节"


def test_load_calendar_is_cached_until_an_import(app):
    first = calendar_of(app)
    assert calendar_of(app) is first  # nothing changed: nothing rebuilt
    do_import(app, notice_yaml(MISSING))
    second = calendar_of(app)
    assert second is not first and MISSING in second.imported
    assert calendar_of(app) is second
    assert calendar_of(app, "weekdays").fallback == "weekdays"


def test_export_reads_back_to_the_same_days_for_every_package_year():
    calendar = WorkdayCalendar()
    for year in WorkdayCalendar.package_years():
        notice = parse_notice(service.export_notice(calendar, year))
        again = WorkdayCalendar({year: notice})
        day = date(year, 1, 1)
        while day.year == year:
            old, new = calendar.day(day), again.day(day)
            assert (old.workday, old.makeup, old.statutory_holiday) == (new.workday, new.makeup, new.statutory_holiday)
            assert old.holiday_name == new.holiday_name or old.makeup, day
            day += timedelta(days=1)


# --- the look-ahead alert -------------------------------------------------------------------------
def test_the_alert_is_raised_within_the_window_and_not_before(app):
    days = settings_of(app).calendar_alert_days
    new_year = date(MISSING, 1, 1)
    assert check(app, new_year - timedelta(days=days + 1)) is None
    assert alerts(app) == []
    assert check(app, new_year - timedelta(days=days)) == MISSING
    [alert] = alerts(app)
    assert alert.key == f"calendar.year_missing:{MISSING}" and alert.severity == "warning" and alert.state == "open"
    assert alert.title_zh.startswith(f"{MISSING} 年节假日安排未导入") and "暂停" in alert.title_zh
    assert "wecom-plugin calendar import FILE" in alert.title_zh and "CALENDAR_FALLBACK=hold" in alert.title_en
    assert check(app, new_year - timedelta(days=days - 1)) == MISSING
    [alert] = alerts(app)
    assert alert.count == 2  # deduplicated while open

    # The year begins: the warning is closed and an error raised (delivered again).
    assert check(app, new_year + timedelta(days=2)) == MISSING
    warning, error = alerts(app)
    assert warning.state == "acked" and warning.acked_by == "system:calendar"
    assert error.severity == "error" and error.state == "open" and f"{MISSING} 年已开始" in error.title_zh

    result = do_import(app, notice_yaml(MISSING), actor="user:王磊")
    assert result.alert_closed
    assert [a.state for a in alerts(app)] == ["acked", "acked"]
    assert check(app, new_year + timedelta(days=2)) is None  # covered now; the next year is far away


def test_the_weekdays_fallback_says_monday_to_friday(make_app, db_url):
    app = make_app(DATABASE_URL=db_url, CALENDAR_FALLBACK="weekdays", CALENDAR_ALERT_DAYS="10")
    assert check(app, date(MISSING, 1, 1) - timedelta(days=11)) is None
    assert check(app, date(MISSING, 1, 1) - timedelta(days=10)) == MISSING
    [alert] = alerts(app)
    assert "周一至周五" in alert.title_zh and "Monday to Friday" in alert.title_en
    assert alert.detail["fallback"] == "weekdays" and alert.detail["year"] == MISSING


def test_check_coverage_works_on_a_connection_too(app):
    with app.app_context(), db.engine.begin() as conn:
        assert service.check_coverage(conn, settings_of(app), date(MISSING, 1, 1) - timedelta(days=5)) == MISSING
    with app.app_context(), db.engine.begin() as conn:
        assert service.check_coverage(conn, settings_of(app), date(MISSING, 1, 5)) == MISSING
    assert [(a.severity, a.state) for a in alerts(app)] == [("warning", "acked"), ("error", "open")]


# --- the job --------------------------------------------------------------------------------------
def test_the_job_is_scheduled_daily_and_checks_today(app):
    [definition] = [d for d in registry.contributed_periodic_definitions(settings_of(app)) if d.job_name ==
                    "calendar.coverage"]  # fmt: skip
    assert definition.spec == {"kind": "daily", "times": ["09:05"]}
    assert registry.get("calendar.coverage").delivery == registry.AT_LEAST_ONCE
    with app.app_context():
        job_id = enqueue("calendar.coverage", {})
        db.session.commit()
    run_worker(app)
    with app.app_context():
        from wecom_plugin.models.jobs import Job

        job = db.session.get(Job, job_id)
        state, error, outcome = job.state, job.result, dict(job.result or {})
        db.session.rollback()
    assert state == "done", error
    today = date.fromisoformat(outcome["today"])
    expected = check(app, today)  # the same answer for the same day
    assert outcome["year_without_data"] == expected


# --- the command line -----------------------------------------------------------------------------
def test_cli_import_show_and_status(app, tmp_path):
    path = tmp_path / f"{MISSING}.yaml"
    path.write_text(notice_yaml(MISSING), encoding="utf-8")
    dry = run(app, "import", str(path), "--dry-run", "--by", "王磊")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("试运行") and stored(app) == ([], [])

    done = run(app, "import", str(path), "--by", "王磊")
    assert done.exit_code == 0, done.output
    assert done.output.startswith("已导入") and f"{MISSING} 年" in done.output
    assert "假日 holiday rest days: 10" in done.output and "make-up workdays: 2" in done.output
    assert stored(app)[0][0][2] == "user:王磊"

    shown = run(app, "show", str(MISSING), "--month", "10")
    assert shown.exit_code == 0, shown.output
    assert f"{MISSING}-10-01" in shown.output and "国庆节放假" in shown.output and "[import]" in shown.output
    assert "调休上班" in shown.output and f"{MISSING}-01-01" not in shown.output

    package = run(app, "show", "2026", "--json")
    days = json.loads(package.output)["days"]
    assert [d["day"] for d in days if d["makeup"]] == ["2026-01-04", "2026-02-14", "2026-02-28", "2026-05-09",
                                                      "2026-09-20", "2026-10-10"]  # fmt: skip
    assert {d["source"] for d in days} == {"package"}

    later = run(app, "show", str(MISSING + 1))
    assert later.exit_code == 0 and "无官方安排" in later.output and "calendar import" in later.output

    status = json.loads(run(app, "status", "--json").output)
    assert status["package"]["last_year"] == MISSING - 1
    assert [y["year"] for y in status["imported"]] == [MISSING]
    assert status["first_year_without_data"] == MISSING + 1 and status["fallback"] == "hold"
    text = run(app, "status").output
    assert "chinesecalendar" in text and f"{MISSING + 1}" in text and "CALENDAR_FALLBACK=hold" in text


def test_cli_import_of_a_bad_file_prints_every_problem_and_writes_nothing(app, tmp_path):
    path = tmp_path / "bad.yaml"
    in_break = weekend_after(date(MISSING, 10, 1))  # a weekend day of the National Day break
    path.write_text(notice_yaml(MISSING).replace("source:", "sauce:") + f"  - {in_break}\n", encoding="utf-8")
    result = run(app, "import", str(path), "--by", "王磊")
    assert result.exit_code == 1
    assert "unknown key 'sauce'" in result.output and "missing field 'source'" in result.output
    assert "both a holiday" in result.output and "3 problem(s)" in result.output
    assert stored(app) == ([], [])
    broken = tmp_path / "broken.yaml"
    broken.write_text("year: [\n", encoding="utf-8")
    result = run(app, "import", str(broken))
    assert result.exit_code == 1 and "not valid YAML" in result.output
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert run(app, "import", str(binary)).exit_code == 1


def test_cli_export_then_import_corrects_a_package_year(app, tmp_path):
    exported = run(app, "export", "2026")
    assert exported.exit_code == 0 and exported.output.startswith("year: 2026\n")
    path = tmp_path / "2026.yaml"
    path.write_text(exported.output.replace("- 2026-10-10", "- 2026-10-11"), encoding="utf-8")
    result = run(app, "import", str(path), "--by", "王磊")
    assert result.exit_code == 0 and "2026-10-10" in result.output and "2026-10-11" in result.output
    calendar = calendar_of(app)
    assert calendar.is_workday(date(2026, 10, 10)) is False and calendar.is_workday(date(2026, 10, 11)) is True
    assert run(app, "export", str(MISSING)).exit_code == 1


def test_two_imports_of_one_year_at_once_run_one_after_the_other(app):
    import threading

    first = notice_yaml(MISSING, source="第一次 first")
    second = notice_yaml(MISSING, source="第二次 second").replace("国庆节", "劳动节")
    outcome: dict[str, object] = {}
    with app.app_context():
        service.import_notice(db.session, first, filename="a.yaml", actor="user:a")  # holds the year's row

        def other() -> None:
            with app.app_context():
                try:
                    service.import_notice(db.session, second, filename="b.yaml", actor="user:b")
                    db.session.commit()
                    outcome["ok"] = True
                except Exception as exc:  # reported below
                    db.session.rollback()
                    outcome["error"] = exc

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the first import's transaction
        db.session.commit()
    thread.join(30)
    assert outcome == {"ok": True}
    years, days = stored(app)
    assert years == [(MISSING, "第二次 second", "user:b", 10, 2)]
    assert {n for _, _, kind, n in days if kind == "holiday"} == {"元旦", "劳动节"}
