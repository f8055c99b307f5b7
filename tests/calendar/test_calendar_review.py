"""Workday calendar regressions found by a second review (imports move the clock, strict file checks)."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from tests.calendar.support import first_missing_year, notice_yaml
from tests.calendar.test_calendar_db import calendar_of, run, stored
from wecom_plugin.domain.workdays import CalendarFileError, WorkdayCalendar, parse_notice
from wecom_plugin.extensions import db
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.jobs import Schedule
from wecom_plugin.services import bulletins

MISSING = first_missing_year()
SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_review2_an_import_moves_the_next_run_of_workday_bulletins(app, tmp_path):
    """A corrected (or newly imported) year adds a 调休 make-up Saturday. `bulletins preview` (which
    reads the calendar) says the bulletin is sent that Saturday, but the clock's next_run_at was
    computed with the old calendar and still points past it: the make-up day is silently missed."""
    with app.app_context():
        today = db_now(db.session).astimezone(SHANGHAI).date()
        db.session.rollback()
    saturday = today + timedelta(days=(5 - today.weekday()) % 7 or 7)
    if saturday <= today + timedelta(days=1):
        saturday += timedelta(days=7)
    calendar = WorkdayCalendar()
    if saturday.year not in calendar.package_years() or calendar.is_workday(saturday):
        pytest.skip("needs an ordinary package-year Saturday ahead")
    skip = [(today + timedelta(days=i)).isoformat() for i in range((saturday - today).days)]
    doc = {
        "name": "工作日通报",
        "message": {"msgtype": "text", "content": "请查收"},
        "targets": {"robots": [{"name": "值班机器人", "key": "review2-robot-key-0001"}]},
        "schedule": {"times": ["09:00"], "days": {"rule": "workdays"}, "skip": skip},
    }
    with app.app_context():
        bulletin_id = bulletins.save(db.session, doc, actor="user:t", settings=app.extensions["wecom_settings"]).id
        db.session.commit()
    # The correction: export the year, make that Saturday a make-up workday, import.
    exported = run(app, "export", str(saturday.year)).output
    exported = exported.replace("workdays: []", "workdays:") + f"  - {saturday}\n"
    path = tmp_path / "fix.yaml"
    path.write_text(exported, encoding="utf-8")
    assert run(app, "import", str(path), "--by", "王磊").exit_code == 0
    assert calendar_of(app).is_workday(saturday) is True
    with app.app_context():
        preview = bulletins.preview(db.session, bulletin_id, settings=app.extensions["wecom_settings"], count=1)
        next_run = db.session.scalar(sa.select(Schedule.next_run_at).where(Schedule.key == f"bulletin:{bulletin_id}"))
        db.session.rollback()
    assert preview["days"][-1]["date"] == saturday.isoformat()  # the preview says: sent on the Saturday
    expected = datetime.combine(saturday, time(9), SHANGHAI)
    assert next_run == expected, f"clock fires at {next_run.astimezone(SHANGHAI)}, not {expected}"


def test_review2_a_nul_in_the_notice_is_a_file_problem(app, tmp_path):
    """PostgreSQL text cannot hold NUL: the import must list it as a problem, not crash half-way."""
    text = notice_yaml(MISSING).replace("source: ", 'source: "\\0"\nx: ').replace("\nx: ", "\n# ", 1)
    path = tmp_path / "nul.yaml"
    path.write_text(text, encoding="utf-8")
    result = app.test_cli_runner().invoke(
        __import__("wecom_plugin.cli", fromlist=["cli"]).cli, ["calendar", "import", str(path), "--by", "王磊"]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert stored(app) == ([], [])


def test_review2_a_lone_surrogate_in_the_notice_is_a_file_problem():
    text = notice_yaml(MISSING).replace("source: ", 'source: "\\ud800 "\n# ', 1)
    with pytest.raises(CalendarFileError):
        parse_notice(text)


def test_review2_an_iso_week_date_is_not_a_date_of_the_file():
    """The documented format is YYYY-MM-DD; `2027-W01-1` (10 characters) is taken as 2027-01-04."""
    text = notice_yaml(MISSING).replace(f"from: {MISSING}-10-01", f"from: {MISSING}-W40-1", 1)
    with pytest.raises(CalendarFileError):
        parse_notice(text)
