"""``groups preview`` (read-only, every mode) and the check's commands: audit, confirm, changes, apply."""

from __future__ import annotations

import json

import sqlalchemy as sa

from wecom_plugin.cli import cli
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.services.membership_check import preview

from . import check_support
from .check_support import (
    changes,
    chat_members,
    people,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


def _run(app, *args):
    return app.test_cli_runner().invoke(cli, ["groups", *args])


def test_preview_shows_who_the_rule_puts_in_and_the_difference_read_only(tenant_app, emulator):
    a, b, c, d = people(emulator, 4)
    gid, chatid = make_governed(tenant_app, [a, b, c], required=[a, b, d])
    for mode in ("observe", "enforce"):
        set_mode(tenant_app, mode)
        view = preview(tenant_app, gid)
        assert {p["userid"] for p in view["desired"]["required"]} == {a, b, d}
        assert [f["userid"] for f in view["removals"]] == [c]
        assert [f["userid"] for f in view["additions"]] == [d]
    assert not changes(tenant_app) and updates(emulator) == []
    shown = _run(tenant_app, "preview", str(gid))
    assert shown.exit_code == 0 and "规则预览" in shown.output and c in shown.output
    as_json = json.loads(_run(tenant_app, "preview", str(gid), "--json").output)
    assert as_json["counts"]["outside_rule"] == 1
    missing = _run(tenant_app, "preview", "999")
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_audit_prints_chinese_first_and_exits_3_when_braked(tenant_app, emulator):
    everyone = people(emulator, 12)
    gid, chatid = make_governed(tenant_app, everyone)
    shown = _run(tenant_app, "audit")
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith("群成员检查 #1") and "观察" in shown.output
    set_mode(tenant_app, "enforce")
    with tenant_app.app_context():
        db.session.execute(sa.update(GovernedGroup).values(rule={"required": {"users": everyone[:1]}}))
        db.session.commit()
    braked = _run(tenant_app, "audit", "--group", str(gid))
    assert braked.exit_code == 3 and "已刹车 BRAKED" in braked.output
    report = json.loads(_run(tenant_app, "audit", "--json").output)
    assert report["state"] == "braked"
    refused = _run(tenant_app, "confirm", "3")
    assert refused.exit_code != 0 and "--by" in refused.output
    confirmed = _run(tenant_app, "confirm", "3", "--by", "王磊", "--reason", "确认")
    assert confirmed.exit_code == 0 and "已确认" in confirmed.output
    again = _run(tenant_app, "confirm", "3", "--by", "王磊")
    assert again.exit_code == 1 and "not braked" in again.output
    # The queued check applies the plan; `apply` carries it out now.
    from .check_support import run_worker

    run_worker(tenant_app)
    pending = json.loads(_run(tenant_app, "changes", "--state", "applied", "--json").output)
    assert len(pending) == 11 and chat_members(emulator, chatid) == {everyone[0].casefold()}
    listed = _run(tenant_app, "changes", "--group", str(gid))
    assert listed.exit_code == 0 and "remove" in listed.output
    applied = _run(tenant_app, "apply")
    assert applied.exit_code == 0 and "完成" in applied.output
