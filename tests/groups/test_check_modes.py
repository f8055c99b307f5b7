"""The member check in each mode: observe changes nothing, dry run records, a group's first check
is a dry run even in enforce, enforce plans pending changes applied in one appchat/update."""

from __future__ import annotations

from wecom_plugin.services.chat_changes import apply_chat
from wecom_plugin.services.membership_check import run_check

from . import check_support
from .check_support import (
    changes,
    chat_members,
    depart,
    group,
    members,
    people,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


def _chat_with_differences(app, emulator):
    a, b, c, d, e = people(emulator, 5)
    # d is in the chat but outside the rule; e is required but missing.
    gid, chatid = make_governed(app, [a, b, c, d], required=[a, b, c, e])
    return gid, chatid, (a, b, c, d, e)


def test_observe_mode_reports_and_changes_nothing(tenant_app, emulator):
    gid, chatid, (a, b, c, d, e) = _chat_with_differences(tenant_app, emulator)
    report = run_check(tenant_app, trigger="test")
    assert report.state == "completed" and report.mode == "observe"
    [entry] = report.groups
    assert [(f["userid"], f["reason"]) for f in entry["removals"]] == [(d, "outside_rule")]
    assert [(f["userid"], f["reason"]) for f in entry["additions"]] == [(e, "required_missing")]
    assert entry["removals"][0]["reason_zh"] == "不在本群成员范围内"
    assert {ch.state for ch in changes(tenant_app, gid)} == {"observed"}
    assert updates(emulator) == []
    assert members(tenant_app, gid) == {u.casefold() for u in (a, b, c, d)}
    assert group(tenant_app, gid).first_check_at is not None  # registered as already checked
    assert apply_chat(tenant_app, gid)["state"] == "nothing"


def test_dry_run_records_what_would_change_and_changes_nothing(tenant_app, emulator):
    gid, chatid, (_a, _b, _c, d, e) = _chat_with_differences(tenant_app, emulator)
    set_mode(tenant_app, "dry_run")
    report = run_check(tenant_app, trigger="test")
    assert report.mode == "dry_run"
    planned = {(ch.userid, ch.action, ch.state) for ch in changes(tenant_app, gid)}
    assert planned == {(d, "remove", "dry_run"), (e, "add", "dry_run")}
    # --dry-run in enforce mode does the same.
    set_mode(tenant_app, "enforce")
    again = run_check(tenant_app, trigger="test", dry_run=True)
    assert again.mode == "dry_run" and not changes(tenant_app, gid, state="pending")
    assert updates(emulator) == []


def test_a_new_groups_first_check_is_a_dry_run_even_in_enforce(tenant_app, emulator):
    a, b, c, d = people(emulator, 4)
    gid, chatid = make_governed(tenant_app, [a, b, c, d], required=[a, b, c], checked=False)
    set_mode(tenant_app, "enforce")
    first = run_check(tenant_app, trigger="test")
    assert first.groups[0]["planned"] == "dry_run" and first.groups[0]["first_check"] is True
    assert [ch.state for ch in changes(tenant_app, gid)] == ["dry_run"]
    assert group(tenant_app, gid).first_check_at is not None
    second = run_check(tenant_app, trigger="test")
    assert second.groups[0]["planned"] == "pending"
    assert [(ch.userid, ch.state) for ch in changes(tenant_app, gid, state="pending")] == [(d, "pending")]
    assert updates(emulator) == []


def test_enforce_removes_the_departed_and_applies_every_change_in_one_update(tenant_app, emulator):
    a, b, c, d, e, f = people(emulator, 6)
    emulator.flags(on_member_delete="keep")  # WeCom may keep a departed member listed (§14.8)
    gid, chatid = make_governed(tenant_app, [a, b, c, d, f], required=[a, b, c, d, e])
    depart(emulator, tenant_app, d)
    emulator.admin("directory/disable", userid=c)
    from .check_support import sync

    sync(tenant_app)
    set_mode(tenant_app, "enforce")
    report = run_check(tenant_app, trigger="test")
    reasons = {x["userid"]: x["reason"] for x in report.groups[0]["removals"]}
    assert reasons == {c: "disabled", d: "departed", f: "outside_rule"}
    assert report.groups[0]["apply_queued"] is True
    result = apply_chat(tenant_app, gid)
    assert result["state"] == "applied" and result["calls"] == 1
    [update] = updates(emulator, chatid)
    assert sorted(update["body"]["del_user_list"]) == sorted([c, d, f])
    assert update["body"]["add_user_list"] == [e]
    assert chat_members(emulator, chatid) == {a.casefold(), b.casefold(), e.casefold()}
    assert {ch.state for ch in changes(tenant_app, gid, run_id=report.check_id)} == {"applied"}
    assert members(tenant_app, gid) == {a.casefold(), b.casefold(), e.casefold()}
    # Nothing is left: the next check finds the chat as its rule wants it.
    again = run_check(tenant_app, trigger="test")
    assert again.groups[0]["removals"] == [] and again.groups[0]["additions"] == []
    assert apply_chat(tenant_app, gid)["state"] == "nothing"
