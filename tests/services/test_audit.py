"""The audit log: append-only, complete, exportable."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from wecom_plugin.context import request_id_scope
from wecom_plugin.extensions import db
from wecom_plugin.models import AuditEvent
from wecom_plugin.services import audit


def _record(app, **kwargs):
    with app.app_context(), request_id_scope("req-0001"):
        event = audit.record(**{"actor": "system:worker", "action": "member.remove", **kwargs})
        db.session.commit()
        return event.id


def test_a_record_has_actor_action_target_reason_outcome_utc_time_and_request_id(app):
    _record(app, target="chat:wr1", reason="离职 departed", outcome="success")
    with app.app_context():
        event = db.session.scalar(sa.select(AuditEvent))
        assert (event.actor, event.action, event.target, event.reason, event.outcome, event.request_id) == (
            "system:worker", "member.remove", "chat:wr1", "离职 departed", "success", "req-0001",
        )  # fmt: skip
        assert event.occurred_at.tzinfo == UTC
        assert abs(datetime.now(UTC) - event.occurred_at) < timedelta(minutes=1)


@pytest.mark.parametrize("statement", ["UPDATE audit_event SET outcome = 'failure'", "DELETE FROM audit_event"])
def test_the_database_refuses_to_change_or_delete_audit_rows(app, statement):
    _record(app)
    with app.app_context():
        with pytest.raises(sa.exc.DatabaseError, match="append-only"):
            db.session.execute(sa.text(statement))
        db.session.rollback()
        assert db.session.scalar(sa.select(AuditEvent.outcome)) == "success"


def test_unknown_outcomes_are_refused(app):
    with pytest.raises(ValueError):
        _record(app, outcome="maybe")


def test_export_as_csv_and_json_between_two_times(app):
    for i in range(3):
        _record(app, target=f"user:{i}", reason='=HYPERLINK("x")' if i == 1 else None)
    runner = app.test_cli_runner()
    as_csv = runner.invoke(args=["audit", "export", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    rows = list(csv.DictReader(io.StringIO(as_csv.output)))
    assert [r["target"] for r in rows] == ["user:0", "user:1", "user:2"]
    # A cell a spreadsheet would execute is neutralised.
    assert rows[1]["reason"].startswith("'=")
    as_json = runner.invoke(args=["audit", "export", "--format", "json"])
    lines = [json.loads(line) for line in as_json.output.splitlines()]
    assert [line["target"] for line in lines] == ["user:0", "user:1", "user:2"]
    assert lines[0]["occurred_at"].endswith("Z")
    # A bare date is read in WECOM_TIMEZONE (Asia/Shanghai), so go two UTC days ahead.
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    empty = runner.invoke(args=["audit", "export", "--format", "json", "--from", tomorrow])
    assert empty.exit_code == 0 and empty.output == ""


def test_export_refuses_bad_dates_with_a_clear_message(app):
    runner = app.test_cli_runner()
    bad = runner.invoke(args=["audit", "export", "--from", "last tuesday"])
    assert bad.exit_code == 2 and "ISO date" in bad.output
    reversed_range = runner.invoke(args=["audit", "export", "--from", "2026-02-01", "--to", "2026-01-01"])
    assert reversed_range.exit_code == 2 and "later than --from" in reversed_range.output
