"""``wecom-plugin groups request|approve|show|edit|export|import|exempt|...``: Chinese first, one-line
errors, never a traceback."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.groups.registry_helpers import group, setup_app, today
from wecom_plugin.cli import cli


@pytest.fixture
def gov(make_app, db_url, emulator):
    return setup_app(make_app, db_url, emulator)


def run(app, *args):
    result = app.test_cli_runner().invoke(cli, ["groups", *args])
    assert "Traceback" not in result.output
    return result


def test_request_approve_edit_show_and_export_import_from_the_command_line(gov, tmp_path):
    rule = tmp_path / "rule.yaml"
    rule.write_text("required:\n  departments: [8]\n", encoding="utf-8")
    review = (today(gov) + timedelta(days=60)).isoformat()
    made = run(gov, "request", "--name", "开发组工作群", "--purpose", "开发协作", "--department", "8",
               "--owner", "weikaian", "--admin", "leiting", "--rule", str(rule), "--quiet", "22:00-07:00",
               "--review", review, "--by", "leiting", "--json")  # fmt: skip
    assert made.exit_code == 0, made.output
    group_id = json.loads(made.output)["id"]

    refused = run(gov, "approve", str(group_id), "--by", "leiting")
    assert refused.exit_code == 1 and "不是" in refused.output and "may not decide" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    approved = run(gov, "approve", str(group_id), "--by", "weikaian")
    assert approved.exit_code == 0 and approved.output.startswith("已批准")

    edited = run(gov, "edit", str(group_id), "--set", "purpose=开发与测试", "--set", "admins=leiting,shitonglu",
                 "--by", "fanwenjia", "--reason", "综合办公室指定管理员")  # fmt: skip
    assert edited.exit_code == 0, edited.output
    bad = run(gov, "edit", str(group_id), "--set", "name=" + "长" * 60, "--by", "fanwenjia")
    assert bad.exit_code == 1 and "50" in bad.output
    shown = run(gov, "show", str(group_id), "--history")
    assert "开发与测试" in shown.output and "v3" in shown.output and "fanwenjia" in shown.output
    history = json.loads(run(gov, "show", str(group_id), "--history", "--json").output)["history"]
    assert [v["action"] for v in history] == ["requested", "approved", "updated"]

    listed = run(gov, "list", "--status", "approved")
    assert "开发组工作群" in listed.output

    until = (today(gov) + timedelta(days=30)).isoformat()
    assert (
        run(gov, "exempt", str(group_id), "fanxia", "--reason", "顾问", "--until", until, "--by", "fanwenjia").exit_code
        == 0
    )
    assert "fanxia" in run(gov, "exemptions", str(group_id)).output

    exported = tmp_path / "registry.yaml"
    assert run(gov, "export", str(exported)).exit_code == 0
    text = exported.read_text(encoding="utf-8")
    dry = run(gov, "import", str(exported), "--dry-run", "--by", "fanwenjia", "--json")
    assert json.loads(dry.output)["unchanged"][0]["id"] == group_id
    exported.write_text(text.replace("owner: weikaian", "owner: nobody_here"), encoding="utf-8")
    failed = run(gov, "import", str(exported), "--by", "fanwenjia")
    assert failed.exit_code == 1 and "groups[0]" in failed.output and "nobody_here" in failed.output
    assert group(gov, group_id).owner == "weikaian"

    notice = run(gov, "migration-notice", str(group_id))
    assert "【群迁移通知】" in notice.output


def test_errors_are_one_clear_line(gov, tmp_path):
    missing = run(gov, "show", "999")
    assert missing.exit_code == 1 and "999" in missing.output
    bad_rule = tmp_path / "bad.yaml"
    bad_rule.write_text("required: [", encoding="utf-8")
    result = run(gov, "request", "--name", "x", "--purpose", "y", "--owner", "weikaian", "--rule", str(bad_rule),
                 "--by", "leiting")  # fmt: skip
    assert result.exit_code == 1 and "YAML" in result.output
    nobody = run(gov, "request", "--name", "x", "--purpose", "y", "--owner", "nobody_here", "--by", "leiting")
    assert nobody.exit_code == 1 and "nobody_here" in nobody.output
    assert run(gov, "reject", "1").exit_code != 0  # --by and --reason are required
