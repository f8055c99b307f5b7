"""Bulletins CLI regressions found by a second review: odd input gets a refusal, never a traceback."""

from __future__ import annotations

from tests.bulletins.test_api import Http, key
from tests.bulletins.test_cli import document, run, setup, tenant_app, write  # noqa: F401  (fixtures)


def test_review2_a_fractional_weekday_is_refused_not_stored(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    doc = {
        "name": "周一例会提醒",
        "message": {"msgtype": "text", "content": "例会"},
        "targets": {"users": [members[0]]},
        "schedule": {"times": ["09:00"], "days": {"rule": "days_of_week", "days": [0.0]}},
    }
    answer = http("POST", "/bulletins", doc)
    # 0.0 passes `d not in range(7)` (0.0 == 0) and is stored as a float; the operator's
    # `bulletins list` / `show` then crash on WEEKDAY_ZH[0.0] (TypeError) for every bulletin.
    listed = run(app, "list")
    assert listed.exit_code == 0, listed.output
    assert answer.status_code == 400


def test_review2_apply_with_a_non_text_name_is_a_refusal_not_a_traceback(setup, tmp_path):
    app, _group_id, members = setup
    text = document(members[0], name="[值班, 通报]")  # a YAML list where the name goes
    result = run(app, "apply", write(tmp_path, text), "--by", "王磊")
    assert result.exit_code == 1 and "name" in result.output


def test_review2_apply_with_a_numeric_name(setup, tmp_path):
    app, _group_id, members = setup
    result = run(app, "apply", write(tmp_path, document(members[0], name="2027")), "--by", "王磊")
    assert result.exit_code == 1 and "name" in result.output


def test_review2_a_superscript_digit_reference_is_not_a_traceback(setup):
    app, _group_id, _members = setup
    result = run(app, "show", "²")  # str.isdigit() is True, int() raises ValueError
    assert result.exit_code == 1


def test_review2_a_nul_in_a_yaml_bulletin_is_a_refusal_not_a_traceback(setup, tmp_path):
    """The API refuses NUL (json_body); the CLI's YAML path does not, and PostgreSQL text cannot hold it."""
    app, _group_id, members = setup
    text = document(members[0], content="各位同事\\0请查收")  # a YAML "\0" escape inside the double quotes
    result = run(app, "apply", write(tmp_path, text), "--by", "王磊")
    assert result.exit_code == 1
