"""The executor: owner re-homing under every emulator reading of §14.8, a bad userid that does not
block the others, the kill switch mid-way, a spent budget, chats this app did not create."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.directory import Person
from wecom_plugin.models.groups import GroupVersion
from wecom_plugin.services.chat_changes import apply_chat, apply_pending, next_chats
from wecom_plugin.services.membership_check import run_check
from wecom_plugin.services.wecom import client_for
from wecom_plugin.wecom.budget import BudgetExhausted

from . import check_support
from .check_support import (
    audits,
    changes,
    chat_members,
    chat_owner,
    depart,
    group,
    kill_switch,
    manual_actions,
    people,
    register,
    rows,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


@pytest.mark.parametrize("succession", ["earliest", "random", "none"])
@pytest.mark.parametrize("on_delete", ["remove", "keep"])
def test_a_departed_owner_ends_up_out_and_the_chat_is_rehomed(tenant_app, emulator, on_delete, succession):
    owner, admin, b, c = people(emulator, 4)
    emulator.flags(on_member_delete=on_delete, owner_succession=succession)
    gid, chatid = make_governed(tenant_app, [owner, admin, b, c], owner=owner, admins=[admin])
    depart(emulator, tenant_app, owner)
    set_mode(tenant_app, "enforce")
    report = run_check(tenant_app, trigger="test")
    [entry] = report.groups
    assert entry["owner"]["gone"] is True and entry["owner"]["new"] == admin
    expected_removals = [(owner, "departed")] if on_delete == "keep" else []
    assert [(f["userid"], f["reason"]) for f in entry["removals"]] == expected_removals
    # The registry records the new owner (versioned).
    assert group(tenant_app, gid).owner == admin
    [version] = rows(tenant_app, GroupVersion, GroupVersion.group_id == gid, GroupVersion.action == "owner_rehomed")
    assert version.after == {"owner": admin}
    already_owner = on_delete == "remove" and chat_owner(emulator, chatid) == admin.casefold()  # WeCom picked them
    result = apply_chat(tenant_app, gid)
    assert result["calls"] == (0 if already_owner else 1)
    for update in updates(emulator, chatid):
        assert update["body"]["owner"] == admin
        assert update["body"].get("del_user_list", []) == ([owner] if on_delete == "keep" else [])
    assert owner.casefold() not in chat_members(emulator, chatid)
    assert chat_owner(emulator, chatid) == admin.casefold()
    assert not changes(tenant_app, gid, state="pending")
    # And the next run finds nothing to do.
    again = run_check(tenant_app, trigger="test")
    assert again.groups[0]["removals"] == [] and again.groups[0]["owner"]["gone"] is False


@pytest.mark.parametrize("errcode", [60111, 86216])
def test_a_bad_userid_in_the_adds_does_not_block_the_others(tenant_app, emulator, errcode):
    a, b, c, d, e = people(emulator, 5)
    emulator.flags(appchat_unknown_member_errcode=errcode)
    # "ghost" is active in the mirror but unknown to WeCom (the mirror is stale).
    with tenant_app.app_context():
        db.session.add(Person(userid="ghost", userid_folded="ghost", name="鬼魂", departments=[1], status=1))
        db.session.commit()
    gid, chatid = make_governed(tenant_app, [a, b, e], required=[a, b, c, d, "ghost"])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    result = apply_chat(tenant_app, gid)
    assert result["failed"] == {"ghost": errcode}
    assert {c.casefold(), d.casefold()} <= chat_members(emulator, chatid)
    assert e.casefold() not in chat_members(emulator, chatid)  # the removal went through too
    states = {ch.userid: (ch.state, ch.errcode) for ch in changes(tenant_app, gid, run_id=1)}
    assert states == {c: ("applied", None), d: ("applied", None), "ghost": ("failed", errcode), e: ("applied", None)}
    assert len(audits(tenant_app, "groups.change.failed")) == 1


def test_an_add_of_someone_unknown_to_the_mirror_is_dropped_first(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(tenant_app, [a, b], required=[a, b, c])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    with tenant_app.app_context():  # the person vanished from the mirror after the plan
        db.session.execute(sa.update(Person).where(Person.userid_folded == c.casefold()).values(status=2))
        db.session.commit()
    result = apply_chat(tenant_app, gid)
    assert result["outcomes"] == {"cancelled": 1} and updates(emulator) == []


def test_the_kill_switch_stops_apply_midway(tenant_app, emulator):
    a, b, c, d, e, f = people(emulator, 6)
    first, chat1 = make_governed(tenant_app, [a, b, c], required=[a, b], name="一群")
    second, chat2 = make_governed(tenant_app, [d, e, f], required=[d, e], name="二群")
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    calls = []

    def guard():  # runs before every WeCom request: throw the switch after the first chat's update
        calls.append(1)
        if len(calls) == 3:
            kill_switch(tenant_app, True)

    result = apply_pending(tenant_app, guard=guard)
    assert result["state"] == "held" and result["reason"] == "kill_switch"
    assert [u["body"]["chatid"] for u in updates(emulator)] == [chat1]
    assert [ch.userid for ch in changes(tenant_app, second, state="pending")] == [f]
    kill_switch(tenant_app, False)
    assert apply_pending(tenant_app)["state"] == "done"
    assert f.casefold() not in chat_members(emulator, chat2)


def test_a_spent_budget_leaves_changes_pending_and_they_apply_later(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(tenant_app, [a, b, c], required=[a, b])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    client = client_for(tenant_app)
    client.budget.exhaust("appchat.update")
    client.close()
    with pytest.raises(BudgetExhausted):
        apply_chat(tenant_app, gid)
    assert [ch.state for ch in changes(tenant_app, gid, action="remove")] == ["pending"]
    assert updates(emulator) == []
    assert apply_pending(tenant_app)["state"] == "deferred"
    with tenant_app.app_context():  # the hour passes
        db.session.execute(sa.text("DELETE FROM rate_counter WHERE bucket LIKE '%appchat.update%'"))
        db.session.commit()
    assert apply_chat(tenant_app, gid)["state"] == "applied"
    assert c.casefold() not in chat_members(emulator, chatid)


def test_offboarding_chats_come_first(tenant_app, emulator):
    a, b, c, d, e, f = people(emulator, 6)
    first, _ = make_governed(tenant_app, [a, b, c], required=[a, b], name="一群")
    second, _ = make_governed(tenant_app, [d, e, f], required=[d, e, f], name="二群")
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    from wecom_plugin.models.groups import ChatChange

    with tenant_app.app_context():
        db.session.add(ChatChange(group_id=second, userid=f, userid_folded=f.casefold(), action="remove",
                                  reason="offboarding", source="offboarding", priority=0, state="pending"))  # fmt: skip
        db.session.commit()
        assert next_chats(db.session, 10) == [second, first]
        db.session.rollback()


def test_a_chat_not_created_by_this_app_is_a_manual_action_never_done(tenant_app, emulator):
    a, b = people(emulator, 2)
    other = emulator.other_chats()[0]
    members = list(other.members.values())
    gid = register(tenant_app, chatid=other.chatid, owner=members[0], admins=[members[0]],
                   rule={"required": {"users": [a, b]}})  # fmt: skip
    set_mode(tenant_app, "enforce")
    report = run_check(tenant_app, trigger="test")
    assert report.groups[0]["status"] == "manual"
    [action] = manual_actions(tenant_app)
    assert action.kind == "not_app_chat" and action.state == "open" and action.group_id == gid
    assert not changes(tenant_app, gid)
    run_check(tenant_app, trigger="test")
    assert len(manual_actions(tenant_app)) == 1  # opened once


def test_routine_updates_cannot_spend_the_share_kept_for_offboarding(tenant_app, emulator):
    """One change budget, offboarding first: with the routine share (80 % of the hour) spent, the
    check's removal waits while a leaver's removal still goes out."""
    from wecom_plugin.services import offboarding

    a, b, c, leaver = people(emulator, 4)
    gid, chatid = make_governed(tenant_app, [a, b, c], required=[a, b])
    other, other_chat = make_governed(tenant_app, [a, b, leaver], required=[a, b, leaver])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    client = client_for(tenant_app)
    client.budget.exhaust("appchat.update.routine")
    client.close()
    with pytest.raises(BudgetExhausted):
        apply_chat(tenant_app, gid)
    assert [ch.state for ch in changes(tenant_app, gid, action="remove")] == ["pending"]
    assert updates(emulator) == []
    with tenant_app.app_context():
        offboarding.start_offboarding(db.session, userid=leaver, source="cli", requested_by="user:test")
        db.session.commit()
    apply_chat(tenant_app, other)
    assert leaver.casefold() not in chat_members(emulator, other_chat)
    assert [u["body"].get("del_user_list") for u in updates(emulator)] == [[leaver]]
    assert c.casefold() in chat_members(emulator, chatid)  # still waiting for the routine share
