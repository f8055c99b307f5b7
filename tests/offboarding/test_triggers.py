"""The three offboarding triggers end to end (reliability.md D1-D3, D7), over real HTTP: the HR API
on the plugin's live web server, change_contact callbacks the sandbox tenant posts to the plugin's
live receiver (then re-read, mirrored, recorded in the outbox and consumed by the worker), and
reconciliation (the full directory sync and the minute sweep the clock schedules).

Every test runs under both readings of contract §14.8 (``on_member_delete``): WeCom takes a
deleted (or disabled) member out of app chats itself, or leaves them listed. A chat WeCom already
cleaned needs zero ``appchat/update`` calls and counts as done; one it did not needs exactly one.
"Removed" is read from the tenant's real chat state, "calls" from its request log.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from tests.directory.conftest import CONTACT_KEY, CONTACT_TOKEN, LivePlugin
from tests.groups.check_support import chat_members, chat_owner, people, rows, run_worker, set_mode
from tests.groups.check_support import sync as sync_mirror
from wecom_plugin.extensions import db
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.directory import DirectoryOutbox, Person
from wecom_plugin.models.groups import ChatChange
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.models.jobs import Job
from wecom_plugin.services.directory_sync import run_sync

from .support import (
    chat,
    drain,
    fire_schedule,
    key,
    offboardings,
    removals,
    schedule_interval,
    status,
    update_count,
    wecom_removes_leavers,
)

WECOM = pytest.mark.parametrize("wecom_removes", [True, False], ids=["wecom-removes", "wecom-keeps"])
KIND = pytest.mark.parametrize("kind", ["depart", "disable"])


# --- fixtures: the plugin on a live port, wired to the tenant's contact-sync callbacks ------------
@pytest.fixture
def live_app(make_app, db_url, emulator):
    app = make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        WECOM_CONTACT_CALLBACK_TOKEN=CONTACT_TOKEN,
        WECOM_CONTACT_CALLBACK_AES_KEY=CONTACT_KEY,
    )
    sync_mirror(app)
    return app


@pytest.fixture
def live(live_app, emulator):
    emulator.flags(callback_timestamp="wall")  # the receiver checks freshness against the real clock
    plugin = LivePlugin(live_app, emulator)
    yield plugin
    plugin.close()


class HR:
    """The HR system calling ``/api/v1/offboardings`` on the plugin's live port."""

    def __init__(self, app, live: LivePlugin) -> None:
        self.url = f"http://127.0.0.1:{live.server.port}/api/v1/offboardings"
        self.headers = key(app, "hr")
        self.http = requests.Session()

    def post(self, body: dict, idem: str) -> requests.Response:
        response = self.http.post(self.url, json=body, headers={**self.headers, "Idempotency-Key": idem}, timeout=10)
        assert response.status_code in (200, 201), response.text
        return response

    def delete(self, off_id: int) -> requests.Response:
        return self.http.delete(f"{self.url}/{off_id}", headers=self.headers, timeout=10)


def wecom_change(emulator, kind: str, userid: str) -> None:
    emulator.admin(f"directory/{kind}", userid=userid)


def resend_callback(emulator, kind: str, userid: str, n: int) -> None:
    """WeCom tells the same change again as a new callback (its own CreateTime, so a new inbox row)."""
    change_type = "delete_user" if kind == "depart" else "update_user"
    xml = (
        f"<xml><ToUserName><![CDATA[{emulator.corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
        f"<CreateTime>{int(time.time()) + n}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[change_contact]]></Event><ChangeType>{change_type}</ChangeType>"
        f"<UserID><![CDATA[{userid}]]></UserID></xml>"
    )
    emulator.admin("callbacks/raw", receiver="contact_sync", xml=xml, event="change_contact")


def deliver(emulator) -> None:
    """The tenant posts every queued callback to the live receiver (stored; the worker has not run)."""
    emulator.admin("callbacks/drain", method="POST")


def person_status(app, userid: str) -> int:
    [person] = rows(app, Person, Person.userid_folded == userid.casefold())
    return person.status


def the_chats(app, emulator, leaver: str):
    """Three chats of the leaver (a member; a registry admin; the owner, an admin to take over) and
    one chat without them. Returns ({name: chatid}, the unrelated chatid, {chatid: members})."""
    a, b, c, d = [u for u in people(emulator, 6) if u != leaver][:4]
    made = {
        "member": chat(app, [a, b, leaver], name="成员群")[1],
        "admin": chat(app, [b, leaver, c], owner=b, admins=[leaver], name="管理员群")[1],
        "owner": chat(app, [leaver, c, d], owner=leaver, admins=[c], name="群主群")[1],
    }
    unrelated = chat(app, [a, b, c], name="无关群")[1]
    staying = {chatid: chat_members(emulator, chatid) - {leaver.casefold()} for chatid in [*made.values(), unrelated]}
    return made, unrelated, staying


def assert_removed_once(app, emulator, leaver: str, made: dict, unrelated: str, staying: dict, wecom_removes: bool):
    """Out of every chat; one ``appchat/update`` per chat WeCom left them in, none where it did not
    (nor in the unrelated chat); everyone else still there; the owner chat re-homed."""
    for name, chatid in made.items():
        assert leaver.casefold() not in chat_members(emulator, chatid), name
        assert update_count(emulator, chatid) == (0 if wecom_removes else 1), name
    assert update_count(emulator, unrelated) == 0
    for chatid, others in staying.items():
        assert others <= chat_members(emulator, chatid), "an active member was removed"
    assert chat_owner(emulator, made["owner"]) != leaver.casefold()
    assert not removals(app, state="pending")
    assert not [r for r in removals(app) if r.state in ("failed", "manual")]


# --- a. every trigger, five times each, for the same departure ----------------------------------------
@KIND
@WECOM
def test_hr_api_callbacks_and_reconciliation_five_times_each_remove_once_per_chat(
    live_app, live, emulator, kind, wecom_removes
):
    """D3. Fails if a repeated trigger plans a second removal for a chat (the partial unique index,
    the outbox/idempotency dedupe or the executor's re-read gone), if a chat WeCom already cleaned
    gets an update anyway, or if one trigger path does not lead to the removal at all."""
    app = live_app
    wecom_removes_leavers(emulator, wecom_removes)
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    hr = HR(app, live)
    body = {"userid": leaver, "reason": "离职"}

    # HR first, twice, while WeCom still lists the person (nothing runs yet).
    first = hr.post(body, "hr-0")
    assert first.status_code == 201
    assert hr.post(body, "hr-1").status_code == 200  # the open offboarding answers
    # WeCom deletes / disables them; its callback arrives five times (retries of one delivery).
    emulator.admin("callbacks/faults", action="duplicate", copies=5, receiver="contact_sync", times=1)
    wecom_change(emulator, kind, leaver)
    deliver(emulator)
    # Reconciliation runs before the worker handled the callback: it finds the departure first.
    found = [run_sync(app, trigger="schedule") for _ in range(2)]
    assert [r.state for r in found] == ["completed", "completed"]
    assert found[0].stats["departed" if kind == "depart" else "updated"] == 1  # reconciliation saw it first
    assert rows(app, CallbackInbox, CallbackInbox.state == "handled") == []
    assert person_status(app, leaver) == (5 if kind == "depart" else 2)
    for n in (1, 2):  # WeCom tells it again
        resend_callback(emulator, kind, leaver, n)
    deliver(emulator)
    hr.post(body, "hr-2")
    hr.post(body, "hr-0")  # a replay of the first request
    live.settle()
    drain(app)
    # Everything once more after the removal: nothing new may happen.
    for n in (3, 4):
        resend_callback(emulator, kind, leaver, n)
    hr.post(body, "hr-3")
    for _ in range(3):
        assert run_sync(app, trigger="schedule").state == "completed"
    live.settle()
    hr.post(body, "hr-4")
    fire_schedule(app, "offboarding.sweep")
    live.settle()
    drain(app)

    assert_removed_once(app, emulator, leaver, made, unrelated, staying, wecom_removes)
    inbox = rows(app, CallbackInbox, CallbackInbox.receiver == "contacts")
    theirs = [r for r in inbox if leaver in r.plaintext]
    assert len(theirs) == 5 and all(r.state == "handled" for r in theirs)  # five distinct callbacks
    assert max(r.deliveries for r in theirs) == 5  # one of them delivered five times
    assert [o.kind for o in rows(app, DirectoryOutbox)] == ["departed" if kind == "depart" else "disabled"]
    [off] = [o for o in offboardings(app) if o.state != "duplicate"]
    assert off.id == first.json()["id"] and off.source == "hr"
    view = status(app, leaver)
    assert view["state"] == "done"
    assert {c["state"] for c in view["chats"]} == ({"skipped"} if wecom_removes else {"applied"})


@pytest.mark.parametrize("succession", ["none", "earliest"])
def test_a_departed_owner_wecom_already_removed_is_rehomed_to_the_admin(live_app, live, emulator, succession):
    """Contract §14.8: after a delete, WeCom may leave the chat's owner stale or pick any member;
    the client must set the owner explicitly. Fails while an offboarding ends "done" with the
    leaver still the chat's owner in WeCom or in the registry."""
    from tests.groups.check_support import group

    app = live_app
    wecom_removes_leavers(emulator, True)
    emulator.flags(owner_succession=succession)
    leaver, a, admin = people(emulator, 3)
    gid, chatid = chat(app, [leaver, a, admin], owner=leaver, admins=[admin])
    set_mode(app, "enforce")
    wecom_change(emulator, "depart", leaver)
    live.settle()
    drain(app)
    assert leaver.casefold() not in chat_members(emulator, chatid)
    assert status(app, leaver)["state"] == "done"
    assert (chat_owner(emulator, chatid), group(app, gid).owner) == (admin.casefold(), admin)


# --- b. lost callbacks: reconciliation removes them ----------------------------------------------------
@KIND
@WECOM
def test_with_the_callbacks_lost_the_scheduled_reconciliation_removes_the_leaver(
    live_app, live, emulator, kind, wecom_removes
):
    """D2. Fails if the clock no longer schedules the reconciliation, if a full sync that finds a
    departure writes no outbox record (or nobody consumes it), or if removal depends on a callback."""
    app = live_app
    wecom_removes_leavers(emulator, wecom_removes)
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    emulator.admin("callbacks/faults", action="drop", receiver="contact_sync")
    wecom_change(emulator, kind, leaver)
    live.settle()
    fire_schedule(app, "offboarding.sweep")  # the minute sweep alone cannot know
    drain(app)
    assert person_status(app, leaver) == 1 and not offboardings(app)
    for chatid in made.values():
        assert update_count(emulator, chatid) == 0
        assert (leaver.casefold() in chat_members(emulator, chatid)) is not wecom_removes

    assert schedule_interval(app, "directory.reconcile") == 60 * 60  # DIRECTORY_SYNC_MINUTES
    assert fire_schedule(app, "directory.reconcile") == 1  # the clock enqueues directory.sync
    drain(app)
    assert [j.state for j in rows(app, Job, Job.name == "directory.sync")] == ["done"]
    assert_removed_once(app, emulator, leaver, made, unrelated, staying, wecom_removes)
    view = status(app, leaver)
    assert view["state"] == "done" and view["source"] == "directory"


@WECOM
def test_a_lost_outbox_job_is_picked_up_by_the_minute_sweep(live_app, live, emulator, wecom_removes):
    """The callback arrived and the mirror recorded the departure, but its consume job was lost
    (dead). Fails if the clock's offboarding.sweep stops consuming left-over outbox records."""
    app = live_app
    wecom_removes_leavers(emulator, wecom_removes)
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    wecom_change(emulator, "depart", leaver)
    deliver(emulator)
    from wecom_plugin.jobs.worker import Worker

    dispatcher = Worker(app, names=["callbacks.dispatch"])
    while dispatcher.run_once():
        pass
    assert person_status(app, leaver) == 5
    with app.app_context():
        lost = db.session.execute(
            sa.update(Job)
            .where(Job.name == "offboarding.consume_outbox", Job.state == ClaimState.READY)
            .values(state=ClaimState.DEAD)
        ).rowcount
        db.session.commit()
    assert lost == 1
    run_worker(app)
    assert not offboardings(app)
    assert fire_schedule(app, "offboarding.sweep") == 1
    drain(app)
    assert_removed_once(app, emulator, leaver, made, unrelated, staying, wecom_removes)
    assert status(app, leaver)["state"] == "done"


# --- c. a scheduled offboarding runs at effective_at -----------------------------------------------------
def wait_until(app, when) -> None:
    deadline = time.monotonic() + 10
    while True:
        with app.app_context():
            now = db_now(db.session)
            db.session.rollback()
        if now >= when:
            return
        assert time.monotonic() < deadline
        time.sleep(min(0.2, max((when - now).total_seconds(), 0.01)))


@pytest.mark.parametrize("path", ["run_job", "sweep"])
def test_a_scheduled_offboarding_removes_nothing_before_effective_at_and_everything_after(
    live_app, live, emulator, path
):
    """D1 with a date. Fails if a scheduled offboarding plans or removes anything early (through
    its job, the sweep, a reconciliation or a member check), or if neither its ``offboarding.run``
    job nor, when that job is lost, the sweep carries it out once the database clock passes
    ``effective_at``. The person stays active in WeCom: §14.8 does not come into it."""
    from wecom_plugin.services.membership_check import run_check

    app = live_app
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    hr = HR(app, live)
    with app.app_context():
        effective = db_now(db.session) + timedelta(seconds=2)
        db.session.rollback()
    made_view = hr.post({"userid": leaver, "effective_at": effective.isoformat()}, "later").json()
    assert made_view["state"] == "scheduled"
    # Before effective_at: the worker, the sweep, a reconciliation and the daily check change nothing.
    run_worker(app)
    fire_schedule(app, "offboarding.sweep")
    run_worker(app)
    assert run_sync(app, trigger="schedule").state == "completed"
    run_check(app, trigger="test")
    run_worker(app)
    with app.app_context():
        assert db_now(db.session) < effective, "the test machine was too slow to look before effective_at"
        db.session.rollback()
    assert rows(app, ChatChange, ChatChange.action == "remove") == []
    for chatid in [*made.values(), unrelated]:
        assert update_count(emulator, chatid) == 0
        assert staying[chatid] <= chat_members(emulator, chatid)
    assert status(app, made_view["id"])["state"] == "scheduled"
    if path == "sweep":  # the run job is lost: the minute sweep plans what is due
        with app.app_context():
            db.session.execute(sa.update(Job).where(Job.name == "offboarding.run").values(state=ClaimState.DEAD))
            db.session.commit()
    wait_until(app, effective)
    if path == "sweep":
        fire_schedule(app, "offboarding.sweep")
    drain(app)
    assert_removed_once(app, emulator, leaver, made, unrelated, staying, wecom_removes=False)
    assert status(app, made_view["id"])["state"] == "done"


# --- d. cancellation and rehire before execution (what test_api_cli.py does not cover) ------------------
def test_a_scheduled_offboarding_cancelled_by_hr_removes_nothing_when_its_time_comes(live_app, live, emulator):
    """D7 for a scheduled offboarding, with the time actually passing. Fails if the cancel leaves
    the run job (or the sweep) to plan the removal at ``effective_at``."""
    app = live_app
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    hr = HR(app, live)
    with app.app_context():
        effective = db_now(db.session) + timedelta(seconds=1)
        db.session.rollback()
    made_view = hr.post({"userid": leaver, "effective_at": effective.isoformat()}, "later").json()
    cancelled = hr.delete(made_view["id"])
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    wait_until(app, effective)
    run_worker(app)
    fire_schedule(app, "offboarding.sweep")
    run_worker(app)
    for chatid in [*made.values(), unrelated]:
        assert update_count(emulator, chatid) == 0
        assert staying[chatid] | {leaver.casefold()} >= chat_members(emulator, chatid)
    for chatid in made.values():
        assert leaver.casefold() in chat_members(emulator, chatid)
    assert rows(app, ChatChange, ChatChange.action == "remove") == []
    assert status(app, made_view["id"])["state"] == "cancelled"


@WECOM
def test_deleted_and_rehired_under_the_same_id_before_the_worker_runs_sends_no_removal(
    live_app, live, emulator, wecom_removes
):
    """D7 through the callbacks: delete_user then create_user for the same userid arrive before the
    worker runs. Fails if the stale delete (re-read: active again) starts an offboarding, or if a
    removal planned from it is sent to a person who is back. When WeCom itself dropped them from
    the chats on deletion, the plugin still sends nothing."""
    app = live_app
    wecom_removes_leavers(emulator, wecom_removes)
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    user = emulator.admin(f"users/{leaver}")
    wecom_change(emulator, "depart", leaver)
    emulator.admin("directory/hire", userid=leaver, name=user["name"], department=user["department"])
    live.settle()
    drain(app)
    fire_schedule(app, "offboarding.sweep")
    drain(app)
    assert person_status(app, leaver) == 1
    for chatid in [*made.values(), unrelated]:
        assert update_count(emulator, chatid) == 0
        assert staying[chatid] <= chat_members(emulator, chatid)
    for chatid in made.values():
        assert (leaver.casefold() in chat_members(emulator, chatid)) is not wecom_removes
    assert not [r for r in removals(app) if r.state in ("pending", "applied")]
    assert all(o.state in ("cancelled", "duplicate") for o in offboardings(app))


@pytest.mark.parametrize("kind", ["depart", "disable"])
def test_a_rehire_the_mirror_has_not_seen_yet_is_not_removed(live_app, live, emulator, kind):
    """reliability.md 4.2: before executing, re-check that the user is still departed. The leaver's
    removal is planned from the callback; they are back in WeCom (rehired under the same userid, or
    enabled again) before the removal runs, but that callback is lost. Fails (today) because the
    removal goes out to a person active in WeCom."""
    app = live_app
    wecom_removes_leavers(emulator, False)
    leaver = people(emulator, 7)[6]
    made, unrelated, staying = the_chats(app, emulator, leaver)
    set_mode(app, "enforce")
    user = emulator.admin(f"users/{leaver}")
    wecom_change(emulator, kind, leaver)
    live.settle()  # the removal is planned; its apply waits for the coalescing window
    assert [r.state for r in removals(app)] == ["pending"] * 3
    emulator.admin("callbacks/faults", action="drop", receiver="contact_sync")
    if kind == "depart":
        emulator.admin("directory/hire", userid=leaver, name=user["name"], department=user["department"])
    else:
        emulator.admin("directory/enable", userid=leaver)
    live.settle()
    drain(app)
    for chatid in made.values():
        assert leaver.casefold() in chat_members(emulator, chatid), "an active member was removed"
