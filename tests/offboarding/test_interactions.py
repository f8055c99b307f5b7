"""How offboarding meets the rest of group governance: the new owner is never a leaver, the daily
check never re-adds one, leavers are not told, cancel never races a removal, manual actions are
sent to their assignee."""

from __future__ import annotations

from tests.groups.check_support import (
    changes,
    chat_members,
    chat_owner,
    group,
    make_chat,
    manual_actions,
    messages_to,
    register,
    set_mode,
)
from wecom_plugin.extensions import db
from wecom_plugin.services import offboarding as service
from wecom_plugin.services.membership_check import refresh_chat_members

from . import support
from .support import drain, removals, status

tenant_app = support.tenant_app  # the fixture

DEV = 8  # 开发组 of the generated tenant: weikaian (leader), shitonglu, leiting
LEADER, MEMBER, OTHER = "weikaian", "shitonglu", "leiting"


def offboard(app, userid: str, source: str = "hr") -> int:
    with app.app_context():
        started = service.start_offboarding(db.session, userid=userid, source=source, requested_by="user:test")
        db.session.commit()
    return started.offboarding_id


def dev_chat(app, members: list[str], owner: str, admins: list[str]) -> tuple[int, str]:
    chatid = make_chat(app, members, owner)
    gid = register(app, chatid=chatid, owner=owner, admins=admins, rule={"required": {"users": members}},
                   department_id=DEV)  # fmt: skip
    with app.app_context():
        refresh_chat_members(db.engine, gid, members)
    return gid, chatid


# --- 1. the new owner is never a leaver ---------------------------------------------------------
def test_a_leaving_department_leader_never_becomes_the_new_owner(tenant_app, emulator):
    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=MEMBER, admins=[])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, MEMBER)
    offboard(tenant_app, LEADER)  # HR: still active in the directory, and the department's leader
    drain(tenant_app)
    new_owner = chat_owner(emulator, chatid)
    assert new_owner not in (MEMBER, LEADER)  # a leader further up, or a member staying
    assert {MEMBER, LEADER}.isdisjoint(chat_members(emulator, chatid))
    assert group(tenant_app, gid).owner.casefold() == new_owner
    assert removals(tenant_app, state="pending") == []
    assert [status(tenant_app, u)["state"] for u in (MEMBER, LEADER)] == ["done", "done"]


def test_a_leader_with_an_open_offboarding_elsewhere_is_not_picked(tenant_app, emulator):
    gid, chatid = dev_chat(tenant_app, [MEMBER, OTHER], owner=MEMBER, admins=[])
    set_mode(tenant_app, "observe")
    offboard(tenant_app, LEADER)  # open (nothing of theirs in this chat), held by observe mode
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, MEMBER)
    drain(tenant_app)
    assert chat_owner(emulator, chatid) not in (MEMBER, LEADER)
    assert LEADER not in chat_members(emulator, chatid)


# --- 2. the daily check never re-adds a leaver ----------------------------------------------------
def check_entry(app, gid: int) -> dict:
    from tests.groups.check_support import checks
    from wecom_plugin.services.membership_check import run_check

    run_check(app, trigger="test")
    [entry] = [g for g in checks(app)[-1].report["groups"] if g["group_id"] == gid]
    return entry


def test_the_daily_check_never_adds_an_hr_leaver_back(tenant_app, emulator):
    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=MEMBER, admins=[MEMBER])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, OTHER)  # still active in the directory, required by the rule
    drain(tenant_app)
    assert OTHER not in chat_members(emulator, chatid)
    entry = check_entry(tenant_app, gid)
    drain(tenant_app)
    assert entry["additions"] == []
    assert [(h["userid"], h["held"]) for h in entry["held"]] == [(OTHER, "offboarded")]
    assert changes(tenant_app, gid, action="add") == []
    assert OTHER not in chat_members(emulator, chatid)


def test_the_check_plans_nothing_against_a_pending_offboarding(tenant_app, emulator):
    chatid = make_chat(tenant_app, [MEMBER, LEADER, OTHER], MEMBER)
    gid = register(tenant_app, chatid=chatid, owner=MEMBER, admins=[MEMBER],
                   rule={"required": {"users": [MEMBER, LEADER]}})  # fmt: skip  # OTHER: outside the rule
    with tenant_app.app_context():
        refresh_chat_members(db.engine, gid, [MEMBER, LEADER, OTHER])
    set_mode(tenant_app, "observe")
    offboard(tenant_app, OTHER)  # its removal waits (observe)
    entry = check_entry(tenant_app, gid)
    assert entry["removals"] == []
    assert [(h["userid"], h["held"]) for h in entry["held"]] == [(OTHER, "offboarding pending")]
    assert [c.source for c in changes(tenant_app, gid, action="remove")] == ["offboarding"]


# --- 3. the leaver is not told ------------------------------------------------------------------------
def test_an_offboarded_leaver_gets_no_removal_notice(tenant_app, emulator):
    from tests.groups.check_support import messages_to, run_worker

    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=MEMBER, admins=[MEMBER])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, OTHER)  # HR: still active in the directory
    drain(tenant_app)
    run_worker(tenant_app)  # the notices
    assert OTHER not in chat_members(emulator, chatid)
    assert messages_to(emulator, OTHER) == []


# --- 4. cancel never races a removal --------------------------------------------------------------
def test_cancel_while_an_apply_holds_the_chat_is_refused_and_changes_nothing(tenant_app, emulator):
    from datetime import timedelta

    import pytest

    from wecom_plugin.models.base import utcnow
    from wecom_plugin.models.groups import ChatApplyLease

    gid, _chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=MEMBER, admins=[MEMBER])
    set_mode(tenant_app, "observe")
    off_id = offboard(tenant_app, OTHER)
    with tenant_app.app_context():  # an executor claimed the chat (its job is not "running" yet)
        db.session.add(ChatApplyLease(group_id=gid, fence="x" * 32, holder="t", expires_at=utcnow() + timedelta(60)))
        db.session.commit()
        with pytest.raises(service.OffboardingError) as refused:
            service.cancel(db.session, off_id, "user:test")
        db.session.rollback()
    assert refused.value.status == 409
    assert [c.state for c in removals(tenant_app)] == ["pending"]
    assert status(tenant_app, off_id)["state"] == "pending"


def test_a_removal_applied_after_a_cancel_slipped_in_is_recorded(tenant_app, emulator, monkeypatch):
    import sqlalchemy as sa

    from wecom_plugin.models.groups import ChatChange, Offboarding
    from wecom_plugin.services import chat_changes

    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=MEMBER, admins=[MEMBER])
    set_mode(tenant_app, "enforce")
    off_id = offboard(tenant_app, OTHER)
    renew = chat_changes._renew

    def cancel_meanwhile(engine, work):  # the rows were read pending; a cancel lands before the call
        renew(engine, work)
        with engine.begin() as conn:
            conn.execute(sa.update(ChatChange.__table__).values(state="cancelled"))
            conn.execute(sa.update(Offboarding.__table__).values(state="cancelled"))

    monkeypatch.setattr(chat_changes, "_renew", cancel_meanwhile)
    drain(tenant_app)
    assert OTHER not in chat_members(emulator, chatid)  # WeCom did it
    [row] = removals(tenant_app)
    assert row.state == "applied" and row.applied_at is not None
    view = status(tenant_app, off_id)
    assert view["state"] == "done" and view["counts"] == {"applied": 1}


# --- 5. manual actions are sent to their assignee -------------------------------------------------
def test_each_manual_action_is_sent_to_its_assignee_once(tenant_app, emulator):
    from tests.groups.check_support import manual_actions, messages_to, run_worker

    other = emulator.other_chats()[0]  # not created by this app: 86008
    members = list(other.members.values())
    admin, leaver = members[0], members[-1]
    gid = register(tenant_app, chatid=other.chatid, owner=admin, admins=[admin], rule={"required": {"users": [admin]}})
    with tenant_app.app_context():
        refresh_chat_members(db.engine, gid, members)
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, leaver)
    drain(tenant_app)
    for _ in range(2):  # later reads and settles never send again
        status(tenant_app, leaver)
        run_worker(tenant_app)
    actions = {m.kind: m for m in manual_actions(tenant_app)}
    assert {"not_app_chat", "offboarding_remove"} <= set(actions)
    sent = [m for m in messages_to(emulator, admin) if "群治理待办" in str(m)]
    assert len(sent) == len(actions)
    for action in actions.values():
        [mine] = [m for m in sent if f"待办 #{action.id}】" in str(m)]
        text = str(mine)
        assert text.index("群治理待办") < text.index("Group governance to-do")
    assert not [m for m in messages_to(emulator, leaver) if "群治理待办" in str(m)]


# --- a check's removal taken over by an offboarding belongs to the offboarding ---------------------
def test_an_adopted_check_removal_is_not_cancelled_by_an_exemption(tenant_app, emulator):
    """The daily check planned OTHER's removal (outside the rule); HR then offboards OTHER. The row is
    the offboarding's now: an exemption (which cancels check rows) must not cancel it, or the
    offboarding would end 'done' with the person still in the chat."""
    from datetime import timedelta

    import sqlalchemy as sa

    from wecom_plugin.models.base import utcnow
    from wecom_plugin.models.groups import ChatChange
    from wecom_plugin.services import group_registry

    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=LEADER, admins=[])
    with tenant_app.app_context():
        db.session.add(ChatChange(
            group_id=gid, userid=OTHER, userid_folded=OTHER, action="remove", reason="outside_rule",
            source="check", priority=1, state="pending",
        ))  # fmt: skip
        db.session.commit()
    off_id = offboard(tenant_app, OTHER)
    with tenant_app.app_context():
        row = db.session.execute(sa.select(ChatChange).where(ChatChange.group_id == gid)).scalar_one()
        assert (row.source, row.offboarding_id, row.priority) == ("offboarding", off_id, 0)
        group_registry.add_exemption(
            db.session, gid, OTHER, reason="项目需要", expires_at=utcnow() + timedelta(days=3), actor="user:test"
        )
        db.session.commit()
        assert db.session.get(ChatChange, row.id).state == "pending"
    set_mode(tenant_app, "enforce")
    drain(tenant_app)
    assert OTHER not in chat_members(emulator, chatid)
    assert status(tenant_app, OTHER)["state"] == "done"


def test_a_finished_offboarding_that_takes_over_a_check_removal_is_open_again(tenant_app, emulator):
    """OTHER's offboarding finished (in no chat); later the check plans OTHER's removal from a chat
    they were added to by hand, and HR sends the departure again. The finished offboarding takes the
    row over: it must be open again until the row is final, not stay 'done' with the removal pending."""
    import sqlalchemy as sa

    from wecom_plugin.models.groups import ChatChange, Offboarding

    gid, _chatid = dev_chat(tenant_app, [MEMBER, LEADER], owner=LEADER, admins=[])
    off_id = offboard(tenant_app, OTHER)
    drain(tenant_app)
    assert status(tenant_app, OTHER)["state"] == "done"
    with tenant_app.app_context():  # the check read the chat (OTHER added by hand) and planned the removal
        refresh_chat_members(db.engine, gid, [MEMBER, LEADER, OTHER])
        db.session.add(ChatChange(
            group_id=gid, userid=OTHER, userid_folded=OTHER, action="remove", reason="outside_rule",
            source="check", priority=1, state="pending",
        ))  # fmt: skip
        db.session.commit()
    assert offboard(tenant_app, OTHER) == off_id
    with tenant_app.app_context():
        row = db.session.execute(sa.select(ChatChange).where(ChatChange.group_id == gid)).scalar_one()
        assert (row.offboarding_id, row.state) == (off_id, "pending")
        assert db.session.get(Offboarding, off_id).state == "pending"


def test_a_leaving_admin_leaves_the_registry_too_and_the_last_one_asks_for_a_new_admin(tenant_app, emulator):
    """Admins are a role of ours: a leaver removed from the chat is dropped from its admins (audited);
    when none is left, a manual action asks for a new one (群管理员由综合办公室指定)."""
    from wecom_plugin.models.groups import GovernedGroup

    gid, chatid = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=LEADER, admins=[OTHER])
    two, _chat2 = dev_chat(tenant_app, [MEMBER, LEADER, OTHER], owner=LEADER, admins=[OTHER, MEMBER])
    set_mode(tenant_app, "enforce")
    offboard(tenant_app, OTHER)
    drain(tenant_app)
    assert OTHER not in chat_members(emulator, chatid)
    with tenant_app.app_context():
        assert db.session.get(GovernedGroup, gid).admins == []
        assert db.session.get(GovernedGroup, two).admins == [MEMBER]
    needed = [m for m in manual_actions(tenant_app) if m.kind == "admin_needed"]
    assert [(m.group_id, m.userid, m.assignee) for m in needed] == [(gid, OTHER, LEADER)]
    assert len([m for m in messages_to(emulator, LEADER) if "请指定新的群管理员" in str(m)]) == 1
