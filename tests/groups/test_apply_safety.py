"""Review findings on the executor and the check: pending removals re-checked against exemptions,
archiving and rule edits; a refused call never blocks removals; the switches read before every call;
outcomes kept when a later call fails; one applier per chat; an untrusted mirror removes nobody by
absence; the brake holds pending rows and a confirmation is used up once; one running check."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.directory import DirectorySync, Person
from wecom_plugin.models.groups import ChatApplyLease, GovernedGroup, MembershipCheck
from wecom_plugin.services import group_registry
from wecom_plugin.services.chat_changes import apply_chat
from wecom_plugin.services.membership_check import CheckBusy, confirm_check, run_check
from wecom_plugin.wecom.errors import WeComRateLimited

from . import check_support
from .check_support import (
    alerts,
    audits,
    changes,
    chat_members,
    checks,
    depart,
    kill_switch,
    people,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


def _planned_removal_of_c(app, emulator):
    """A chat [a, b, c] whose rule wants [a, b]: c's removal planned and left pending (kill switch)."""
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(app, [a, b, c], required=[a, b])
    set_mode(app, "enforce")
    kill_switch(app, True)
    run_check(app, trigger="test")
    assert [ch.userid for ch in changes(app, gid, state="pending")] == [c]
    return gid, chatid, (a, b, c)


# --- 1. pending rows re-checked -------------------------------------------------------------------
def test_an_exemption_after_the_plan_cancels_the_pending_removal(tenant_app, emulator):
    gid, chatid, (_a, _b, c) = _planned_removal_of_c(tenant_app, emulator)
    with tenant_app.app_context():
        expires = (utcnow() + timedelta(days=5)).date().isoformat()
        group_registry.add_exemption(db.session, gid, c, reason="keep", expires_at=expires, actor="user:x")
        db.session.commit()
    assert [ch.state for ch in changes(tenant_app, gid)] == ["cancelled"]  # in the exemption's transaction
    kill_switch(tenant_app, False)
    apply_chat(tenant_app, gid)
    assert c.casefold() in chat_members(emulator, chatid) and updates(emulator) == []


def test_archiving_cancels_pending_rows_and_apply_refuses_an_archived_group(tenant_app, emulator):
    gid, chatid, (_a, _b, c) = _planned_removal_of_c(tenant_app, emulator)
    with tenant_app.app_context():
        group_registry.archive(db.session, gid, actor="user:x", reason="stop")
        db.session.commit()
    assert [ch.state for ch in changes(tenant_app, gid)] == ["cancelled"]
    # A row that slipped in anyway (written behind the registry's back) is cancelled, not applied.
    with tenant_app.app_context():
        db.session.execute(sa.update(check_support.ChatChange).values(state="pending"))
        db.session.commit()
    kill_switch(tenant_app, False)
    result = apply_chat(tenant_app, gid)
    assert result["state"] == "cancelled" and updates(emulator) == []
    assert c.casefold() in chat_members(emulator, chatid)
    assert [ch.state for ch in changes(tenant_app, gid)] == ["cancelled"]
    assert audits(tenant_app, "groups.change.cancelled")


def test_apply_re_evaluates_with_the_current_rule(tenant_app, emulator):
    gid, chatid, (a, b, c) = _planned_removal_of_c(tenant_app, emulator)
    with tenant_app.app_context():  # the rule edited directly: no registry hook ran
        db.session.execute(
            sa.update(GovernedGroup).where(GovernedGroup.id == gid).values(rule={"required": {"users": [a, b, c]}})
        )
        db.session.commit()
    kill_switch(tenant_app, False)
    result = apply_chat(tenant_app, gid)
    assert result["outcomes"] == {"cancelled": 1} and updates(emulator) == []
    assert c.casefold() in chat_members(emulator, chatid)


def test_a_rule_edit_through_the_registry_cancels_pending_check_rows(tenant_app, emulator):
    gid, _chatid, (a, b, c) = _planned_removal_of_c(tenant_app, emulator)
    with tenant_app.app_context():
        group_registry.update_group(db.session, gid, {"rule": {"required": {"users": [a, b, c]}}}, actor="user:x")
        db.session.commit()
    assert [ch.state for ch in changes(tenant_app, gid)] == ["cancelled"]


# --- 2. a refused call never blocks the removals ----------------------------------------------------
def test_additions_over_the_cap_do_not_block_a_departed_members_removal(tenant_app, emulator):
    a, b, c, x, e, f = people(emulator, 6)
    emulator.flags(on_member_delete="keep", appchat_max_members=5)
    gid, chatid = make_governed(tenant_app, [a, b, c, x], required=[a, b, c, x, e, f])
    depart(emulator, tenant_app, x)
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    apply_chat(tenant_app, gid)
    assert x.casefold() not in chat_members(emulator, chatid)
    states = {ch.userid: ch.state for ch in changes(tenant_app, gid, action="remove")}
    assert states[x] == "applied"
    # The second call carried only the removal.
    assert updates(emulator, chatid)[1]["body"].get("add_user_list") is None


# --- 3 and 4. switches before every call; outcomes kept when a later call fails ----------------------
def _ghost_chat(app, emulator):
    a, b, c, d, e = people(emulator, 5)
    with app.app_context():  # active in the mirror, unknown to WeCom: the calls with it fail
        db.session.add(Person(userid="ghost", userid_folded="ghost", name="鬼魂", departments=[1], status=1))
        db.session.commit()
    gid, chatid = make_governed(app, [a, b, e], required=[a, b, c, d, "ghost"])
    set_mode(app, "enforce")
    run_check(app, trigger="test")
    return gid, chatid, e


def test_the_kill_switch_is_read_again_before_every_retry(tenant_app, emulator):
    gid, chatid, _e = _ghost_chat(tenant_app, emulator)

    def guard():
        if len(updates(emulator, chatid)) == 1:
            kill_switch(tenant_app, True)  # thrown after the first (refused) call

    result = apply_chat(tenant_app, gid, guard)
    assert result["state"] == "held" and result["reason"] == "kill_switch"
    assert len(updates(emulator, chatid)) == 2  # the one under way when it was thrown; none after


def test_a_rate_limit_after_a_successful_call_keeps_its_outcomes(tenant_app, emulator):
    gid, chatid, e = _ghost_chat(tenant_app, emulator)

    def guard():
        if len(updates(emulator, chatid)) >= 2:
            raise WeComRateLimited()

    with pytest.raises(WeComRateLimited):
        apply_chat(tenant_app, gid, guard)
    assert e.casefold() not in chat_members(emulator, chatid)  # the second call (removal alone) went through
    [removed] = [ch for ch in changes(tenant_app, gid) if ch.userid == e]
    assert removed.state == "applied"
    assert [a.target for a in audits(tenant_app, "groups.change.applied")] == [f"chat_change:{removed.id}"]


# --- 5. one applier per chat --------------------------------------------------------------------------
def test_two_threads_applying_one_chat_make_one_update(tenant_app, emulator):
    gid, chatid, (_a, _b, _c) = _planned_removal_of_c(tenant_app, emulator)
    kill_switch(tenant_app, False)
    results: list = []

    def slow_guard():
        time.sleep(0.3)  # both are under way at once

    def run():
        results.append(apply_chat(tenant_app, gid, slow_guard))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(updates(emulator, chatid)) == 1
    assert sorted(r["state"] for r in results) in (["applied", "busy"], ["applied", "nothing"])


def test_an_expired_claim_is_taken_over_and_a_live_one_is_left_alone(tenant_app, emulator):
    gid, chatid, (_a, _b, c) = _planned_removal_of_c(tenant_app, emulator)
    kill_switch(tenant_app, False)
    with tenant_app.app_context():
        until = utcnow() + timedelta(minutes=5)
        db.session.add(ChatApplyLease(group_id=gid, fence="x" * 32, holder="other", expires_at=until))
        db.session.commit()
    assert apply_chat(tenant_app, gid)["state"] == "busy" and updates(emulator) == []
    # A check leaves the claimed chat's pending rows alone.
    report = run_check(tenant_app, trigger="test")
    assert report.groups[0]["planned"].startswith("busy")
    with tenant_app.app_context():
        db.session.execute(sa.update(ChatApplyLease).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert apply_chat(tenant_app, gid)["state"] == "applied"
    assert c.casefold() not in chat_members(emulator, chatid)


# --- 6. an untrusted mirror removes nobody by absence -----------------------------------------------
@pytest.mark.parametrize("sync_state", ["incomplete", "braked", "failed"])
def test_a_member_missing_from_an_untrusted_mirror_is_not_removed(tenant_app, emulator, sync_state):
    a, b, c = people(emulator, 3)
    gid, chatid = make_governed(tenant_app, [a, b, c], required=[a, b, c])
    with tenant_app.app_context():
        db.session.execute(sa.delete(Person).where(Person.userid_folded == c.casefold()))
        db.session.add(DirectorySync(trigger="schedule", state=sync_state, started_at=utcnow(), finished_at=utcnow()))
        db.session.commit()
    set_mode(tenant_app, "enforce")
    report = run_check(tenant_app, trigger="test")
    entry = report.groups[0]
    assert entry["removals"] == [] and [h["userid"] for h in entry["held"]] == [c]
    assert not changes(tenant_app, gid, state="pending")
    [alert] = alerts(tenant_app, "groups.mirror_untrusted")
    assert sync_state in alert.title_en
    apply_chat(tenant_app, gid)
    assert c.casefold() in chat_members(emulator, chatid)


# --- 7. the brake holds pending rows; a confirmation is used up once and expires ----------------------
def test_the_brake_holds_rows_already_pending(tenant_app, emulator):
    everyone = people(emulator, 12)
    gid, chatid = make_governed(tenant_app, everyone[:12], required=everyone[:11])
    set_mode(tenant_app, "enforce")
    kill_switch(tenant_app, True)
    run_check(tenant_app, trigger="test")
    assert len(changes(tenant_app, gid, state="pending")) == 1
    with tenant_app.app_context():
        db.session.execute(
            sa.update(GovernedGroup).where(GovernedGroup.id == gid).values(rule={"required": {"users": everyone[:1]}})
        )
        db.session.commit()
    assert run_check(tenant_app, trigger="test").state == "braked"
    kill_switch(tenant_app, False)
    result = apply_chat(tenant_app, gid)
    assert result["state"] == "held" and "brake" in result["reason"]
    assert updates(emulator) == [] and len(chat_members(emulator, chatid)) == 12


def test_a_confirmation_is_used_up_by_a_one_group_run_and_expires_after_a_day(tenant_app, emulator):
    everyone = people(emulator, 12)
    gid, _chatid = make_governed(tenant_app, everyone[:12])
    set_mode(tenant_app, "enforce")
    run_check(tenant_app, trigger="test")
    with tenant_app.app_context():
        db.session.execute(
            sa.update(GovernedGroup).where(GovernedGroup.id == gid).values(rule={"required": {"users": everyone[:1]}})
        )
        db.session.commit()
    first = run_check(tenant_app, trigger="test")
    with tenant_app.app_context():
        confirm_check(db.session, first.check_id, "user:王磊", "ok")
        db.session.execute(
            sa.update(MembershipCheck)
            .where(MembershipCheck.id == first.check_id)
            .values(confirmed_at=utcnow() - timedelta(hours=25))
        )
        db.session.commit()
    assert run_check(tenant_app, trigger="test").state == "braked"  # expired: not used
    second = run_check(tenant_app, trigger="test")
    with tenant_app.app_context():
        confirm_check(db.session, second.check_id, "user:王磊", "ok")
        db.session.commit()
    one = run_check(tenant_app, trigger="test", group_id=gid)
    assert one.state == "completed" and one.confirmed_check == second.check_id
    assert {c.id: c.state for c in checks(tenant_app)}[second.check_id] == "applied"


# --- 8. one running check --------------------------------------------------------------------------
def test_the_database_allows_one_running_check_and_a_crashed_one_is_abandoned(tenant_app, emulator):
    with tenant_app.app_context():
        db.session.add(MembershipCheck(trigger="x", mode="observe", state="running", started_at=utcnow()))
        db.session.commit()
        db.session.add(MembershipCheck(trigger="y", mode="observe", state="running", started_at=utcnow()))
        with pytest.raises(sa.exc.IntegrityError):
            db.session.commit()
        db.session.rollback()
    with pytest.raises(CheckBusy):
        run_check(tenant_app, trigger="test")
    with tenant_app.app_context():
        db.session.execute(sa.update(MembershipCheck).values(started_at=utcnow() - timedelta(hours=7)))
        db.session.commit()
    assert run_check(tenant_app, trigger="test").state == "completed"
    assert checks(tenant_app)[0].state == "abandoned"


def test_an_apply_job_that_finds_the_chat_busy_comes_back_instead_of_finishing(tenant_app, emulator):
    """Changes planned while another process holds the chat must not wait for the sweep (minutes)."""
    from wecom_plugin.models.claims import ClaimState
    from wecom_plugin.models.jobs import Job
    from wecom_plugin.runtime.queue import enqueue

    gid, chatid, (_a, _b, c) = _planned_removal_of_c(tenant_app, emulator)
    kill_switch(tenant_app, False)
    with tenant_app.app_context():
        until = utcnow() + timedelta(minutes=5)
        db.session.add(ChatApplyLease(group_id=gid, fence="x" * 32, holder="other", expires_at=until))
        job_id = enqueue("groups.apply", {"group_id": gid}, dedupe_key=f"test-busy:{gid}", session=db.session)
        db.session.commit()
    from wecom_plugin.jobs.worker import Worker

    Worker(tenant_app).run_once()
    with tenant_app.app_context():
        job = db.session.get(Job, job_id)
        assert job.state == ClaimState.READY and job.attempts == 0, (job.state, job.attempts, job.last_error)
        db.session.execute(sa.delete(ChatApplyLease))  # the other process is done
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(due_at=utcnow()))
        db.session.commit()
    Worker(tenant_app).run_once()
    assert c.casefold() not in chat_members(emulator, chatid)
    assert len(updates(emulator, chatid)) == 1
