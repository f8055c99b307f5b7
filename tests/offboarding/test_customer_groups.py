"""A leaver's customer groups (客户群) go to their successor, end to end against the sandbox tenant (real
HTTP): groupchat/transfer after the deletion, onjob_transfer before it, or a wait until it; WeCom's
per-chat refusals, a successor WeCom refuses or nobody to receive them become manual actions whose
assignee is told; repeats never transfer twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.groups.check_support import (
    alerts,
    audits,
    kill_switch,
    manual_actions,
    messages_to,
    rows,
    run_worker,
    set_mode,
)
from tests.groups.check_support import sync as sync_mirror
from tests.offboarding.support import drain, status
from wecom_plugin.extensions import db
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.customer_groups import CustomerGroupHandover
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import customer_groups as cg
from wecom_plugin.services import offboarding as service
from wecom_plugin.services.offboarding import OffboardingError

TRANSFER = "externalcontact/groupchat/transfer"
ONJOB = "externalcontact/groupchat/onjob_transfer"


@pytest.fixture
def make_tenant(make_app, db_url, emulator):
    """The plugin on the sandbox tenant with extra settings, its mirror synced."""

    def _make(**overrides):
        app = make_app(
            DATABASE_URL=db_url,
            **emulator.plugin_settings(),
            **overrides,
        )
        sync_mirror(app)
        return app

    return _make


# --- helpers ------------------------------------------------------------------------------------------
def _in_seeded_groups(emulator) -> set[str]:
    return {m["userid"].lower() for g in emulator.data.customer_groups.values() for m in g.members if m["type"] == 1}


def leaver_and_leader(emulator, skip: int = 0) -> tuple[str, str]:
    """An ordinary active member in no seeded customer group, and their active direct leader (who has
    客户联系 rights)."""
    busy = _in_seeded_groups(emulator)
    found = []
    for u in sorted(emulator.users(), key=lambda u: u.userid.casefold()):
        if u.key in busy or any(u.is_leader_in_dept) or not u.direct_leader or not u.customer_contact:
            continue
        leader = emulator.tenant.find_user(u.direct_leader[0])
        if leader is None or leader.status != 1 or not leader.customer_contact:
            continue
        found.append((u.userid, leader.userid))
    assert len(found) > skip
    return found[skip]


def customer_group(emulator, owner: str, name: str, others: tuple[str, ...] = ()) -> str:
    members = [{"userid": owner, "type": 1}, *({"userid": o, "type": 1} for o in others)]
    members.append({"userid": f"wm{abs(hash((owner, name))) % 10**12:012d}customer", "type": 2, "name": "王先生"})
    return emulator.admin("customer-groups", owner=owner, name=name, members=members)["chat_id"]


def owner_of(emulator, chat_id: str) -> str:
    return emulator.data.customer_groups[chat_id].owner


def calls(emulator, endpoint: str) -> list[dict]:
    return emulator.requests(endpoint=endpoint)


def offboard(app, userid: str) -> int:
    with app.app_context():
        started = service.start_offboarding(db.session, userid=userid, source="cli", requested_by="user:test")
        db.session.commit()
    return started.offboarding_id


def handovers(app) -> list[CustomerGroupHandover]:
    return sorted(rows(app, CustomerGroupHandover), key=lambda r: r.id)


def fire_sweep(app) -> None:
    """The clock's next ``customer_groups.sweep`` has come (one real clock tick), then the worker runs."""
    from wecom_plugin.jobs.clock import Clock, sync_code_schedules
    from wecom_plugin.models import Schedule
    from wecom_plugin.models.dbtime import sql_now

    settings = app.extensions["wecom_settings"]
    with app.app_context():
        sync_code_schedules(db.session, settings)
        db.session.execute(sa.update(Schedule).where(Schedule.origin == "code").values(next_run_at=sql_now(3600)))
        db.session.execute(
            sa.update(Schedule).where(Schedule.key == "customer_groups.sweep").values(next_run_at=sql_now(-1))
        )
        db.session.commit()
    assert Clock(app).tick() == 1
    drain(app)


def depart(app, emulator, userid: str) -> None:
    emulator.admin("directory/depart", userid=userid)
    sync_mirror(app)
    drain(app)


# --- the three paths ----------------------------------------------------------------------------------
def test_after_the_deletion_groups_go_to_the_direct_leader_with_one_transfer(make_tenant, emulator):
    app = make_tenant()
    leaver, leader = leaver_and_leader(emulator)
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(3)]
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert {owner_of(emulator, c) for c in chats} == {leader}
    [call] = calls(emulator, TRANSFER)
    assert sorted(call["body"]["chat_id_list"]) == sorted(chats) and call["body"]["new_owner"] == leader
    assert calls(emulator, ONJOB) == []
    view = status(app, leaver)
    assert view["state"] == "done"
    groups = view["customer_groups"]
    assert groups["state"] == "done" and groups["counts"] == {"done": 3}
    assert {(c["method"], c["successor"]) for c in groups["chats"]} == {("transfer", leader)}
    assert sorted(a.target for a in audits(app, "customer_group.transfer")) == sorted(
        f"customer_group:{c}" for c in chats
    )


def test_before_the_deletion_onjob_transfer_moves_them_and_a_repeat_moves_nothing(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, leader = leaver_and_leader(emulator)
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(2)]
    set_mode(app, "enforce")
    first = offboard(app, leaver)
    drain(app)
    assert {owner_of(emulator, c) for c in chats} == {leader}
    assert len(calls(emulator, ONJOB)) == 1 and calls(emulator, TRANSFER) == []
    assert status(app, leaver)["state"] == "done"
    # The same trigger again (re-plans the finished offboarding) and the deletion: nothing moves twice.
    assert offboard(app, leaver) == first
    drain(app)
    depart(app, emulator, leaver)
    fire_sweep(app)
    assert len(calls(emulator, ONJOB)) == 1 and calls(emulator, TRANSFER) == []
    assert [r.state for r in handovers(app)] == ["done", "done"]
    assert all(len(emulator.data.customer_groups[c].onjob_transfers) == 1 for c in chats)


def test_the_wait_setting_moves_nothing_until_the_deletion_then_transfers(make_tenant, emulator):
    app = make_tenant()  # CUSTOMER_GROUP_HANDOVER=wait, the default
    leaver, leader = leaver_and_leader(emulator)
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(2)]
    set_mode(app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(app)
    drain(app)
    fire_sweep(app)
    assert calls(emulator, TRANSFER) == [] and calls(emulator, ONJOB) == []
    assert {owner_of(emulator, c) for c in chats} == {leaver}
    view = status(app, leaver)
    assert view["state"] == "pending" and view["customer_groups"]["counts"] == {"waiting": 2}
    depart(app, emulator, leaver)  # the departure record finds the offboarding open and queues the handover
    assert {owner_of(emulator, c) for c in chats} == {leader}  # at once: no sweep needed
    fire_sweep(app)  # the backstop finds nothing more to do
    assert len(calls(emulator, TRANSFER)) == 1 and calls(emulator, ONJOB) == []
    view = status(app, leaver)
    assert view["state"] == "done" and view["customer_groups"]["counts"] == {"done": 2}


def test_a_rehire_while_waiting_cancels_the_handover_and_nothing_moves(make_tenant, emulator):
    app = make_tenant()
    leaver, _leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(app)
    drain(app)
    assert [r.state for r in handovers(app)] == ["waiting"]
    emulator.admin("directory/enable", userid=leaver)  # back: the reactivated record cancels the offboarding
    sync_mirror(app)
    drain(app)
    fire_sweep(app)
    assert [r.state for r in handovers(app)] == ["cancelled"]
    view = status(app, leaver)
    assert view["state"] == "cancelled" and view["customer_groups"]["counts"] == {"cancelled": 1}
    assert owner_of(emulator, chat) == leaver and calls(emulator, TRANSFER) == calls(emulator, ONJOB) == []


def test_when_wecom_refuses_the_resigned_owner_filter_the_resigned_groups_are_read_instead(make_tenant, emulator):
    app = make_tenant()
    emulator.flags(groupchat_resigned_listing="observed")  # §14.8: owner_filter of a resigned owner → 40003
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert owner_of(emulator, chat) == leader
    [call] = calls(emulator, TRANSFER)
    assert call["body"]["chat_id_list"] == [chat]  # the other resigned owner's groups were left alone
    assert status(app, leaver)["state"] == "done"


def test_a_group_already_owned_by_the_successor_counts_as_done(make_tenant, emulator):
    app = make_tenant()
    leaver, leader = leaver_and_leader(emulator)
    moved, kept = customer_group(emulator, leaver, "已转群"), customer_group(emulator, leaver, "待转群")
    set_mode(app, "enforce")
    offboard(app, leaver)
    drain(app)
    emulator.admin(f"customer-groups/{moved}", owner=leader)  # handed over in the client meanwhile
    depart(app, emulator, leaver)
    fire_sweep(app)
    [call] = calls(emulator, TRANSFER)
    assert call["body"]["chat_id_list"] == [kept]
    by_chat = {r.chat_id: r for r in handovers(app)}
    assert by_chat[moved].state == "done" and "already owned by the successor" in by_chat[moved].errmsg
    assert by_chat[kept].state == "done" and owner_of(emulator, kept) == leader
    assert status(app, leaver)["state"] == "done"


# --- failures -----------------------------------------------------------------------------------------
def test_45009_after_two_onjob_transfers_fails_to_a_manual_action_then_the_deletion_transfers(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, leader = leaver_and_leader(emulator)
    other, _ = leaver_and_leader(emulator, skip=1)
    chat = customer_group(emulator, leaver, "VIP客户群")
    for a, b in ((leaver, other), (other, leaver)):  # two on-the-job transfers in 90 days already
        assert emulator.post(ONJOB, {"chat_id_list": [chat], "new_owner": b})["failed_chat_list"] == []
    assert owner_of(emulator, chat) == leaver
    set_mode(app, "enforce")
    offboard(app, leaver)
    drain(app)
    [row] = handovers(app)
    assert (row.state, row.errcode, row.method) == ("failed", 45009, "onjob_transfer")
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == leader and action.state == "open" and row.manual_action_id == action.id
    told = [m for m in messages_to(emulator, leader) if "群治理待办" in str(m)]
    assert len(told) == 1 and "VIP客户群" in str(told[0]["content"]) and "45009" in str(told[0]["content"])
    assert status(app, leaver)["state"] == "partial" and owner_of(emulator, chat) == leaver
    assert len(audits(app, "customer_group.onjob_transfer_failed")) == 1
    # The deletion: groupchat/transfer has no 90-day limit.
    depart(app, emulator, leaver)
    assert owner_of(emulator, chat) == leader and len(calls(emulator, TRANSFER)) == 1
    [row] = handovers(app)
    assert (row.state, row.method, row.errcode) == ("done", "transfer", None)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.state == "done"
    assert status(app, leaver)["state"] == "done"


def test_per_chat_failures_are_recorded_per_chat_and_the_rest_moves(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    emulator.flags(transfers_per_day_per_owner=1)  # WeCom refuses the second chat of the call
    leaver, leader = leaver_and_leader(emulator)
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(2)]
    set_mode(app, "enforce")
    offboard(app, leaver)
    drain(app)
    [call] = calls(emulator, ONJOB)
    assert sorted(call["body"]["chat_id_list"]) == sorted(chats)
    by_state = {r.state: r for r in handovers(app)}
    assert set(by_state) == {"done", "failed"}
    assert owner_of(emulator, by_state["done"].chat_id) == leader
    assert owner_of(emulator, by_state["failed"].chat_id) == leaver and by_state["failed"].errcode == 45009
    view = status(app, leaver)
    assert view["state"] == "partial" and view["customer_groups"]["counts"] == {"done": 1, "failed": 1}
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.detail["chat_ids"] == [by_state["failed"].chat_id]


def test_a_successor_wecom_refuses_becomes_a_manual_action_for_the_general_office(make_tenant, emulator):
    leaver, leader = leaver_and_leader(emulator)
    office, _ = leaver_and_leader(emulator, skip=1)
    app = make_tenant(GENERAL_OFFICE_USERIDS=office)
    emulator.admin("directory/update", userid=leader, customer_contact=False)  # 40003 invalid new_owner
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(2)]
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert {owner_of(emulator, c) for c in chats} == {leaver}
    assert [r.state for r in handovers(app)] == ["manual", "manual"]
    assert {r.errcode for r in handovers(app)} == {40003}
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == office and sorted(action.detail["chat_ids"]) == sorted(chats)
    assert [m for m in messages_to(emulator, office) if "群治理待办" in str(m)]
    assert status(app, leaver)["state"] == "partial"


def test_an_inactive_direct_leader_falls_back_to_a_department_leader(make_tenant, emulator):
    app = make_tenant()
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    emulator.admin("directory/disable", userid=leader)
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    new_owner = owner_of(emulator, chat)
    assert new_owner not in (leaver, leader)
    heir = emulator.tenant.find_user(new_owner)
    assert heir.status == 1 and any(heir.is_leader_in_dept)
    assert status(app, leaver)["state"] == "done"


def test_no_leader_at_all_becomes_a_manual_action(make_tenant, emulator):
    busy = _in_seeded_groups(emulator)
    ceo = next(u for u in emulator.users() if not u.direct_leader and u.key not in busy)
    office, _ = leaver_and_leader(emulator)
    app = make_tenant(GENERAL_OFFICE_USERIDS=office)
    for dep in ceo.departments:  # nobody else leads the CEO's departments
        for u in emulator.users():
            if u.key != ceo.key and dep in u.departments and u.is_leader_in_dept[u.departments.index(dep)]:
                flags = [0 if d == dep else f for d, f in zip(u.departments, u.is_leader_in_dept, strict=True)]
                emulator.admin("directory/update", userid=u.userid, is_leader_in_dept=flags)
    chat = customer_group(emulator, ceo.userid, "总经理客户群")
    sync_mirror(app)
    set_mode(app, "enforce")
    depart(app, emulator, ceo.userid)
    assert owner_of(emulator, chat) == ceo.userid and calls(emulator, TRANSFER) == []
    [row] = handovers(app)
    assert row.state == "manual" and row.successor is None
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == office and "总经理客户群" in action.detail["zh"]
    assert status(app, ceo.userid)["state"] == "partial"


# --- switches, membership, off -------------------------------------------------------------------------
def test_observe_mode_and_the_kill_switch_transfer_nothing_until_lifted(make_tenant, emulator):
    app = make_tenant()
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "observe")
    depart(app, emulator, leaver)
    assert calls(emulator, TRANSFER) == [] and owner_of(emulator, chat) == leaver
    view = status(app, leaver)
    assert view["state"] == "pending" and view["customer_groups"]["counts"] == {"pending": 1}
    set_mode(app, "enforce")
    kill_switch(app, True)
    make_stale(app)
    fire_sweep(app)  # the switches deny: the sweep queues nothing...
    with app.app_context():  # ...and a handover job that runs anyway holds at the switch
        enqueue("customer_groups.handover", {"offboarding_id": view["id"]})
        db.session.commit()
    drain(app)
    assert calls(emulator, TRANSFER) == [] and owner_of(emulator, chat) == leaver
    kill_switch(app, False)
    make_stale(app)
    fire_sweep(app)  # pending groups with nothing queued, the switches allow: queued
    assert owner_of(emulator, chat) == leader and len(calls(emulator, TRANSFER)) == 1
    assert status(app, leaver)["state"] == "done"


def make_stale(app) -> None:
    """The handover rows were last touched ten minutes ago (the sweep requeues after two)."""
    with app.app_context():
        db.session.execute(sa.update(CustomerGroupHandover).values(updated_at=utcnow() - timedelta(minutes=10)))
        db.session.commit()


def test_membership_scan_asks_each_groups_owner_to_remove_the_leaver(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_MEMBER_SCAN="true")
    leaver, _leader = leaver_and_leader(emulator)
    owner, _ = leaver_and_leader(emulator, skip=1)
    chat = customer_group(emulator, owner, "合作客户群", others=(leaver,))
    customer_group(emulator, owner, "无关客户群")
    set_mode(app, "enforce")
    offboard(app, leaver)
    drain(app)
    [row] = handovers(app)
    assert (row.chat_id, row.method, row.state, row.successor) == (chat, "member", "manual", owner)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_member"]
    assert action.assignee == owner and action.chat_ref == chat
    told = [m for m in messages_to(emulator, owner) if "群治理待办" in str(m)]
    assert len(told) == 1 and "合作客户群" in str(told[0]["content"])
    assert calls(emulator, TRANSFER) == [] and calls(emulator, ONJOB) == []
    assert status(app, leaver)["state"] == "partial"


def test_off_lists_nothing_and_the_offboarding_is_done(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="off")
    leaver, _ = leaver_and_leader(emulator)
    customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert calls(emulator, "externalcontact/groupchat/list") == []
    view = status(app, leaver)
    assert view["state"] == "done" and view["customer_groups"] is None


# --- regressions (review of the handover) ---------------------------------------------------------------
def test_a_group_the_leaver_inherited_earlier_is_handed_over_again_when_they_leave(make_tenant, emulator):
    app = make_tenant()
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert owner_of(emulator, chat) == leader
    depart(app, emulator, leader)  # the heir leaves too: the group goes on to the heir's successor
    heir = owner_of(emulator, chat)
    assert heir not in (leaver, leader) and len(calls(emulator, TRANSFER)) == 2
    [second] = [c for c in status(app, leader)["customer_groups"]["chats"]]
    assert (second["state"], second["successor"]) == ("done", heir)


def test_a_group_listed_as_inherited_is_checked_not_taken_as_handed_over(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    depart(app, emulator, leaver)
    assert owner_of(emulator, chat) == leader
    listed = emulator.post("externalcontact/groupchat/list", {"limit": 100, "owner_filter": {"userid_list": [leader]}})
    assert {r["chat_id"]: r["status"] for r in listed["group_chat_list"]}[chat] == 3  # 离职继承完成, owner active
    offboard(app, leader)  # HR: the heir leaves (still in the directory)
    drain(app)
    assert owner_of(emulator, chat) not in (leaver, leader)
    [call] = calls(emulator, ONJOB)
    assert call["body"]["chat_id_list"] == [chat]
    [row] = status(app, leader)["customer_groups"]["chats"]
    assert row["state"] == "done" and row["method"] == "onjob_transfer" and row["attempts"] == 1


def test_a_leader_with_a_scheduled_offboarding_does_not_receive_the_groups(make_tenant, emulator):
    from datetime import datetime, timezone

    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    with app.app_context():  # HR: the leader leaves next week
        service.start_offboarding(db.session, userid=leader, source="cli", requested_by="user:test",
                                  effective_at=datetime.now(timezone.utc) + timedelta(days=7))  # fmt: skip
        db.session.commit()
    offboard(app, leaver)
    run_worker(app, rounds=50)  # (drain would wait for the leader's offboarding next week)
    heir = owner_of(emulator, chat)
    assert heir not in (leaver, leader)
    assert any(emulator.tenant.find_user(heir).is_leader_in_dept)  # the department leader instead
    [row] = handovers(app)
    assert (row.state, row.successor) == ("done", heir)


def test_cancel_is_refused_while_the_groups_are_being_handed_over(make_tenant, emulator, monkeypatch):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    answers = []
    verify = cg._verify_moved

    def hr_cancels_meanwhile(client, run, rows):  # a DELETE arrives while the worker holds the claim
        with app.app_context():
            try:
                answers.append(service.cancel(db.session, run.off.id, "user:hr", "withdrawn"))
            except OffboardingError as exc:
                answers.append((exc.status, exc.code))
            db.session.rollback()
        return verify(client, run, rows)

    monkeypatch.setattr(cg, "_verify_moved", hr_cancels_meanwhile)
    offboard(app, leaver)
    drain(app)
    assert answers == [(409, "executing")]
    assert owner_of(emulator, chat) == leader and status(app, leaver)["state"] == "done"
    monkeypatch.undo()
    with app.app_context(), pytest.raises(OffboardingError) as refused:  # and afterwards: executed
        service.cancel(db.session, status(app, leaver)["id"], "user:hr", "withdrawn")
    assert (refused.value.status, refused.value.code) == (409, "executed")


def test_a_cancel_just_before_the_claim_stops_the_transfer(make_tenant, emulator, monkeypatch):
    app = make_tenant(CUSTOMER_GROUP_HANDOVER="onjob")
    leaver, _leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    claim = cg._claim

    def cancelled_first(engine, off):  # the worker read the offboarding; a rehire cancels it; then it claims
        with app.app_context():
            assert service.cancel(db.session, off.id, "user:hr", "rehired")["state"] == "cancelled"
            db.session.commit()
        return claim(engine, off)

    monkeypatch.setattr(cg, "_claim", cancelled_first)
    offboard(app, leaver)
    drain(app)
    assert owner_of(emulator, chat) == leaver and calls(emulator, ONJOB) == []
    assert [r.state for r in handovers(app)] == ["cancelled"]
    assert status(app, leaver)["state"] == "cancelled"


def test_one_unreadable_group_becomes_a_manual_action_and_the_rest_moves(make_tenant, emulator):
    leaver, leader = leaver_and_leader(emulator)
    outsider, _ = leaver_and_leader(emulator, skip=1)
    office, _ = leaver_and_leader(emulator, skip=2)
    app = make_tenant(GENERAL_OFFICE_USERIDS=office)
    moved, kept = customer_group(emulator, leaver, "已转群"), customer_group(emulator, leaver, "待转群")
    set_mode(app, "enforce")
    offboard(app, leaver)
    drain(app)
    emulator.admin(f"customer-groups/{moved}", owner=outsider)  # given in the console to someone...
    tenant, visible = emulator.tenant, emulator.tenant.user_visible
    tenant.user_visible = lambda p, u: (p.kind == "contact_sync" or u.key != outsider.lower()) and visible(p, u)
    try:  # ...outside the app's scope: groupchat/get answers 60011
        depart(app, emulator, leaver)
    finally:
        tenant.user_visible = visible
    assert owner_of(emulator, kept) == leader
    [call] = calls(emulator, TRANSFER)
    assert call["body"]["chat_id_list"] == [kept]
    by_chat = {r.chat_id: r for r in handovers(app)}
    assert by_chat[kept].state == "done"
    assert (by_chat[moved].state, by_chat[moved].errcode) == ("manual", 60011)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == office and action.detail["chat_ids"] == [moved]
    assert status(app, leaver)["state"] == "partial"


def test_a_listing_failure_with_groups_still_open_tells_the_office_and_is_not_retried_every_minute(
    make_tenant, emulator
):
    office, _ = leaver_and_leader(emulator, skip=1)
    app = make_tenant(GENERAL_OFFICE_USERIDS=office)
    leaver, _leader = leaver_and_leader(emulator)
    chat = customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(app)
    drain(app)
    assert [r.state for r in handovers(app)] == ["waiting"]
    # After the deletion WeCom answers 40003 to the owner filter and 81017 to the fallback (scope > limit).
    emulator.flags(groupchat_resigned_listing="observed", groupchat_scope_limit=1)
    depart(app, emulator, leaver)
    listed = len(calls(emulator, "externalcontact/groupchat/list"))
    for _ in range(3):
        fire_sweep(app)
    assert len(calls(emulator, "externalcontact/groupchat/list")) == listed
    [row] = handovers(app)
    assert (row.chat_id, row.state, row.errcode) == (chat, "manual", 81017)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == office and action.detail["chat_ids"] == [chat]
    view = status(app, leaver)
    assert view["state"] == "partial" and view["customer_groups"]["listing"] == "failed"


def test_groups_waiting_too_long_for_the_deletion_open_one_manual_action(make_tenant, emulator):
    app = make_tenant(CUSTOMER_GROUP_WAIT_DAYS="7")
    leaver, leader = leaver_and_leader(emulator)
    chats = [customer_group(emulator, leaver, f"客户群{i}") for i in range(2)]
    set_mode(app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(app)
    drain(app)
    fire_sweep(app)
    assert [a for a in manual_actions(app) if a.kind == "customer_group_transfer"] == []  # not yet
    with app.app_context():  # eight days later
        db.session.execute(sa.update(CustomerGroupHandover).values(created_at=utcnow() - timedelta(days=8)))
        db.session.commit()
    fire_sweep(app)
    fire_sweep(app)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee == leader and sorted(action.detail["chat_ids"]) == sorted(chats)
    assert "已等待 7 天" in action.detail["zh"]
    assert len([m for m in messages_to(emulator, leader) if "群治理待办" in str(m)]) == 1
    assert {(r.state, r.manual_action_id) for r in handovers(app)} == {("waiting", action.id)}
    assert status(app, leaver)["state"] == "pending" and calls(emulator, TRANSFER) == calls(emulator, ONJOB) == []
    depart(app, emulator, leaver)  # the deletion at last: moved, and the action is done
    assert {owner_of(emulator, c) for c in chats} == {leader}
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.state == "done" and status(app, leaver)["state"] == "done"


def test_two_offboardings_of_one_person_share_one_claim(make_tenant, emulator):
    app = make_tenant()
    leaver, _leader = leaver_and_leader(emulator)
    customer_group(emulator, leaver, "客户群")
    set_mode(app, "enforce")
    first = offboard(app, leaver)
    drain(app)
    with app.app_context():
        service.cancel(db.session, first, "user:hr", "withdrawn")
        db.session.commit()
    second = offboard(app, leaver)  # HR again: a new offboarding of the same person
    assert second != first
    with app.app_context():
        engine = db.engine
        off = db.session.execute(sa.select(cg.OFF).where(cg.OFF.c.id == first)).one()
    assert cg._claim(engine, off) is not None  # a worker of the first one holds the leaver's groups
    with pytest.raises(cg.HandoverBusy):
        cg.handover(app, second)


def test_a_manual_action_with_nobody_to_assign_raises_an_alert(make_tenant, emulator):
    busy = _in_seeded_groups(emulator)
    ceo = next(u for u in emulator.users() if not u.direct_leader and u.key not in busy)
    app = make_tenant(GENERAL_OFFICE_USERIDS="", GROUP_APPROVERS="", ALERT_WECOM_USERIDS="")
    for dep in ceo.departments:
        for u in emulator.users():
            if u.key != ceo.key and dep in u.departments and u.is_leader_in_dept[u.departments.index(dep)]:
                flags = [0 if d == dep else f for d, f in zip(u.departments, u.is_leader_in_dept, strict=True)]
                emulator.admin("directory/update", userid=u.userid, is_leader_in_dept=flags)
    customer_group(emulator, ceo.userid, "总经理客户群")
    sync_mirror(app)
    set_mode(app, "enforce")
    depart(app, emulator, ceo.userid)
    [action] = [a for a in manual_actions(app) if a.kind == "customer_group_transfer"]
    assert action.assignee is None
    [alert] = alerts(app, f"customer_groups.no_assignee:{status(app, ceo.userid)['id']}")
    assert str(action.id) in alert.title_zh
