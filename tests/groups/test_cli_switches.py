"""``wecom-plugin groups mode`` and ``groups kill-switch``: shown, changed with --by, audited."""

from __future__ import annotations

import json

from wecom_plugin.cli import cli


def _run(app, *args):
    return app.test_cli_runner().invoke(cli, ["groups", *args])


def test_mode_shows_observe_then_changes_with_a_name(make_app, db_url):
    app = make_app(DATABASE_URL=db_url)
    shown = _run(app, "mode")
    assert shown.exit_code == 0 and "observe" in shown.output and "GOVERNANCE_MODE" in shown.output
    refused = _run(app, "mode", "enforce")
    assert refused.exit_code != 0 and "--by" in refused.output and "Traceback" not in refused.output
    changed = json.loads(_run(app, "mode", "dry_run", "--by", "王磊", "--reason", "试运行", "--json").output)
    assert changed["mode"] == "dry_run" and changed["mode_source"] == "operator"
    bad = _run(app, "mode", "remove-everyone", "--by", "x")
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_the_kill_switch_stops_changes_even_in_enforce(make_app, db_url):
    app = make_app(DATABASE_URL=db_url)
    assert _run(app, "mode", "enforce", "--by", "王磊").exit_code == 0
    on = json.loads(_run(app, "kill-switch", "on", "--by", "王磊", "--json").output)
    assert on["kill_switch"] is True and on["may_change_chats"] is False
    assert "ON" in _run(app, "kill-switch").output
    off = json.loads(_run(app, "kill-switch", "off", "--by", "王磊", "--json").output)
    assert off["may_change_chats"] is True
