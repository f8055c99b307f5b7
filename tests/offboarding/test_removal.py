"""Offboarding removes a leaver from every governed chat: one ``appchat/update`` per chat, batched
with other leavers within the coalescing window, under every emulator reading of §14.8."""

from __future__ import annotations

import pytest

from tests.groups.check_support import (
    chat_members,
    chat_owner,
    group,
    manual_actions,
    people,
    register,
    set_mode,
    updates,
)
from tests.groups.check_support import sync as sync_mirror
from wecom_plugin.extensions import db
from wecom_plugin.services import offboarding as service
from wecom_plugin.services.membership_check import refresh_chat_members

from . import support
from .support import chat, dels, drain, offboardings, removals, status

tenant_app = support.tenant_app  # the fixture


def offboard(app, userid: str, source: str = "cli") -> int:
    with app.app_context():
        started = service.start_offboarding(db.session, userid=userid, source=source, requested_by="user:test")
        db.session.commit()
    return started.offboarding_id


def test_a_disabled_member_leaves_all_five_chats_with_five_updates(tenant_app, emulator):
    leaver, *others = people(emulator, 7)
    chats = [chat(tenant_app, [others[i], others[i + 1], leaver], name=f"群{i}") for i in range(5)]
    chat(tenant_app, others[:3], name="无关群")  # not theirs: untouched
    set_mode(tenant_app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(tenant_app)
    drain(tenant_app)
    assert len(updates(emulator)) == 5
    for _gid, chatid in chats:
        assert dels(emulator, chatid) == [[leaver]]
        assert leaver.casefold() not in chat_members(emulator, chatid)
    view = status(tenant_app, leaver)
    assert view["state"] == "done" and view["counts"] == {"applied": 5} and view["finished_at"]
    assert view["source"] == "directory"


def test_observe_mode_changes_nothing_in_wecom(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chats = [chat(tenant_app, [a, b, leaver], name=f"群{i}") for i in range(2)]
    set_mode(tenant_app, "observe")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(tenant_app)
    drain(tenant_app)
    assert updates(emulator) == []
    for _gid, chatid in chats:
        assert leaver.casefold() in chat_members(emulator, chatid)
    view = status(tenant_app, leaver)
    assert view["state"] == "pending" and view["counts"] == {"pending": 2}


@pytest.mark.parametrize("on_delete", ["remove", "keep"])
def test_a_member_wecom_already_removed_counts_as_done(tenant_app, emulator, on_delete):
    leaver, a, b = people(emulator, 3)
    emulator.flags(on_member_delete=on_delete)
    gid, chatid = chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    emulator.admin("directory/depart", userid=leaver)
    sync_mirror(tenant_app)
    drain(tenant_app)
    assert leaver.casefold() not in chat_members(emulator, chatid)
    assert len(updates(emulator)) == (1 if on_delete == "keep" else 0)
    view = status(tenant_app, leaver)
    assert view["state"] == "done"
    assert view["counts"] == ({"applied": 1} if on_delete == "keep" else {"skipped": 1})


def test_two_leavers_of_one_chat_within_the_window_go_in_one_update(tenant_app, emulator):
    first, second, a, b = people(emulator, 4)
    gid, chatid = chat(tenant_app, [a, b, first, second])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, first, "hr")
    offboard(tenant_app, second, "cli")
    drain(tenant_app)
    assert [sorted(d) for d in dels(emulator, chatid)] == [sorted([first, second])]
    assert {first.casefold(), second.casefold()}.isdisjoint(chat_members(emulator, chatid))
    assert [status(tenant_app, u)["state"] for u in (first, second)] == ["done", "done"]


def test_the_owner_leaves_and_the_chat_is_rehomed_to_the_admin(tenant_app, emulator):
    owner, admin, b = people(emulator, 3)
    gid, chatid = chat(tenant_app, [owner, admin, b], owner=owner, admins=[admin])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, owner, "hr")
    drain(tenant_app)
    assert chat_owner(emulator, chatid) == admin.casefold()
    assert owner.casefold() not in chat_members(emulator, chatid)
    assert group(tenant_app, gid).owner == admin
    [update] = updates(emulator, chatid)
    assert update["body"]["owner"] == admin and update["body"]["del_user_list"] == [owner]
    assert status(tenant_app, owner)["state"] == "done"


def test_a_chat_not_created_by_this_app_is_a_manual_action_and_never_done(tenant_app, emulator):
    a, b = people(emulator, 2)
    other = emulator.other_chats()[0]
    members = list(other.members.values())
    leaver = members[-1]
    gid = register(tenant_app, chatid=other.chatid, owner=members[0], admins=[members[0]],
                   rule={"required": {"users": [a, b]}})  # fmt: skip
    with tenant_app.app_context():
        refresh_chat_members(db.engine, gid, members)
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, leaver, "hr")
    drain(tenant_app)
    assert updates(emulator) == []
    view = status(tenant_app, leaver)
    assert view["state"] == "partial" and view["counts"] == {"manual": 1}
    kinds = {m.kind for m in manual_actions(tenant_app)}
    assert {"not_app_chat", "offboarding_remove"} <= kinds
    [mine] = [m for m in manual_actions(tenant_app) if m.kind == "offboarding_remove"]
    assert mine.offboarding_id == view["id"] and mine.userid == leaver and mine.assignee == members[0]
    assert status(tenant_app, leaver)["state"] == "partial"  # and stays so


def test_repeated_triggers_remove_once_per_chat(tenant_app, emulator):
    leaver, a, b, c = people(emulator, 4)
    chats = [chat(tenant_app, [a, b, leaver], name="一群"), chat(tenant_app, [b, c, leaver], name="二群")]
    set_mode(tenant_app, "enforce")
    for _ in range(3):
        offboard(tenant_app, leaver, "cli")
        offboard(tenant_app, leaver, "hr")
    emulator.admin("directory/disable", userid=leaver)
    for _ in range(3):
        sync_mirror(tenant_app)  # reconciliation, again and again
    drain(tenant_app)
    for _ in range(3):
        offboard(tenant_app, leaver, "cli")
    drain(tenant_app)
    for _gid, chatid in chats:
        assert dels(emulator, chatid) == [[leaver]]
    assert len(removals(tenant_app, state="applied")) == 2
    assert len([o for o in offboardings(tenant_app) if o.state != "duplicate"]) == 1
    assert status(tenant_app, leaver)["state"] == "done"
