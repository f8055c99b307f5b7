"""``wecom-plugin directory ...`` over the sandbox tenant: clear output, no tracebacks."""

from __future__ import annotations

import json

from wecom_plugin.cli import cli


def _run(app, *args):
    return app.test_cli_runner().invoke(cli, ["directory", *args])


def test_sync_status_and_show(tenant_app, emulator):
    result = _run(tenant_app, "sync", "--full")
    assert result.exit_code == 0, result.output
    assert "completed" in result.output
    status = json.loads(_run(tenant_app, "status", "--json").output)
    assert status["last_sync"]["state"] == "completed"
    assert sum(status["members"].values()) == len(emulator.data.users)
    assert status["pending_brake"] is None
    member = emulator.users()[3]
    shown = _run(tenant_app, "show", member.userid.upper())  # userids are case-insensitive
    assert shown.exit_code == 0, shown.output
    assert member.name in shown.output and "hired" in shown.output
    human = _run(tenant_app, "status")
    assert "members" in human.output and "pending brake: none" in human.output


def test_dry_run_reports_and_writes_nothing(tenant_app, mirror):
    result = _run(tenant_app, "sync", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["state"] == "dry_run" and report["stats"]["hired"] > 0
    assert mirror.people() == {} and mirror.changes() == []


def test_a_setup_problem_says_what_to_change_in_the_console(tenant_app, emulator):
    emulator.admin("faults", action="errcode", endpoint="*", errcode=60020)
    result = _run(tenant_app, "sync")
    assert result.exit_code == 1
    assert "企业可信IP" in result.output and "Trusted IP" in result.output
    assert "Traceback" not in result.output


def test_show_an_unknown_member_is_a_clear_error(tenant_app):
    result = _run(tenant_app, "show", "nobody")
    assert result.exit_code == 1 and "no member 'nobody'" in result.output


def test_a_gateway_failure_is_one_clear_line(tenant_app, emulator):
    emulator.admin("faults", action="http_status", endpoint="department/list", status=502)
    result = _run(tenant_app, "sync")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "department/list" in result.output


def test_directory_reads_spend_the_shared_budget(tenant_app, emulator):
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.wecom.budget import bucket

    assert _run(tenant_app, "sync").exit_code == 0
    with tenant_app.app_context():
        spent = dict(db.session.execute(sa.text("SELECT bucket, count FROM rate_counter")).all())
    # reserved in chunks capped by the reads still to come: exactly what the walk made
    assert spent[bucket("api.minute", "user/list")] == len(emulator.data.departments)
    assert spent[bucket("api.hour", "department/list")] == 1
