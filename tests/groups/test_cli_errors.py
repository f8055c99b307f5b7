"""A WeCom fault during groups audit/preview/apply ends in one line and a non-zero exit, never a
traceback."""

from __future__ import annotations

import pytest

from wecom_plugin.cli import cli
from wecom_plugin.services.membership_check import run_check

from . import check_support
from .check_support import governed_chat, kill_switch, people, set_mode

tenant_app = check_support.tenant_app  # the fixture


def _run(app, *args):
    return app.test_cli_runner().invoke(cli, ["groups", *args])


@pytest.mark.parametrize("command", ["audit", "preview", "apply"])
def test_a_wecom_fault_is_one_line_not_a_traceback(tenant_app, emulator, command):
    a, b, c = people(emulator, 3)
    gid, _chatid = governed_chat(tenant_app, [a, b, c], required=[a, b])
    set_mode(tenant_app, "enforce")
    kill_switch(tenant_app, True)
    run_check(tenant_app, trigger="test")  # c's removal pending
    kill_switch(tenant_app, False)
    # What escapes each command: preview reports a refused read itself (a broken transport escapes
    # it); a check reports one chat's refusal and goes on (45009 stops it); apply defers on 45009
    # (60020, IP not trusted, escapes it).
    fault = {
        "audit": {"action": "errcode", "errcode": 45009},
        "preview": {"action": "http_status", "status": 502},
        "apply": {"action": "errcode", "errcode": 60020},
    }[command]
    emulator.admin("faults", endpoint="appchat/get", times=10, **fault)
    args = {"audit": ["audit"], "preview": ["preview", str(gid)], "apply": ["apply", "--group", str(gid)]}[command]
    result = _run(tenant_app, *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert "企业微信调用失败" in result.output or "WeCom" in result.output
