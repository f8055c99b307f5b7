"""Prepared sends due together go out in one batch (services.bulletin_batch): fewer transactions, the same
outcomes as one job at a time. Whatever the batch cannot take (a veto, a robot, a refused budget, a call
that proved nothing was applied, a lease lost) ends exactly as the per-job handler would end it."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import sqlalchemy as sa

from tests.bulletins.support import (
    ROBOT_KEY,
    chat_messages,
    create,
    deliveries,
    make_due,
    release_ready_jobs,
    robot_messages,
    run_worker,
    runs,
    text_doc,
    tick,
)
from tests.groups.check_support import governed_chat, people
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models.bulletins import BulletinDelivery
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import ChatMember
from wecom_plugin.models.jobs import Job, JobStep
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import bulletins
from wecom_plugin.services.wecom import budget_for
from wecom_plugin.wecom.budget import APPCHAT_SEND_CORP_MINUTE, APPCHAT_SEND_MEMBER_MINUTE, member_key


def _prepared(app, emulator, n: int, *, robot: int | None = None) -> list[tuple[int, str]]:
    """``n`` bulletins, each to a chat of two members of its own, prepared for one time 30 s ahead (bulletin
    ``robot`` also to the test robot); their send jobs are then made due. Returns (bulletin id, chatid)."""
    members = people(emulator, 2 * n)
    with app.app_context():
        when = db_now(db.session) + timedelta(seconds=30)
    out = []
    for i in range(n):
        group_id, chatid = governed_chat(app, members[2 * i : 2 * i + 2], name=f"批量群{i}")
        _members_known(app, group_id, members[2 * i : 2 * i + 2])
        extra = {}
        if i == robot:
            emulator.admin("robots", chatid=chatid, key=ROBOT_KEY, name="值班")
            extra = {"robots": [{"name": "值班", "key": ROBOT_KEY}]}
        doc = text_doc(name=f"通报{i}", chats=[group_id])
        doc["targets"].update(extra)
        bulletin_id = create(app, doc)
        make_due(app, bulletin_id, at=when)
        out.append((bulletin_id, chatid))
    assert tick(app) == n
    run_worker(app)  # the occurrences open their runs and queue the sends
    assert release_ready_jobs(app) == n
    return out


def _members_known(app, group_id: int, userids: list[str]) -> None:
    """The member check has read the chat: its members are in chat_member (a chat without them is left to
    the per-job handler, which asks WeCom)."""
    with app.app_context():
        now = db_now(db.session)
        for userid in userids:
            db.session.add(ChatMember(group_id=group_id, userid_folded=userid.casefold(), userid=userid, seen_at=now))
        db.session.commit()


def _send_jobs(app) -> list[Job]:
    with app.app_context():
        rows = list(db.session.scalars(sa.select(Job).where(Job.name == "bulletins.send").order_by(Job.id)))
        db.session.expunge_all()
        return rows


def _steps(app) -> list[tuple[str, str]]:
    with app.app_context():
        return sorted((s.target, s.state) for s in db.session.scalars(sa.select(JobStep)))


def _corp_minute(app) -> int:
    settings = app.extensions["wecom_settings"]
    with app.app_context():
        return budget_for(db.engine, settings).usage(APPCHAT_SEND_CORP_MINUTE.name)[0]


def test_prepared_sends_due_together_go_out_in_one_batch_each_once(tenant_app, emulator):
    prepared = _prepared(tenant_app, emulator, 4)
    before = _corp_minute(tenant_app)
    run_worker(tenant_app)

    for bulletin_id, chatid in prepared:
        assert len(chat_messages(emulator, chatid)) == 1
        [delivery] = deliveries(tenant_app, bulletin_id)
        assert (delivery.state, delivery.errcode) == ("sent", 0) and delivery.sent_at is not None
        assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]
    jobs = _send_jobs(tenant_app)
    assert [(j.state, j.result) for j in jobs] == [("done", {"deliveries": {"sent": 1}, "batch": 4})] * 4
    assert {state for _target, state in _steps(tenant_app)} == {"done"}
    # The budget was taken once for the four sends: two person-times each.
    assert _corp_minute(tenant_app) - before == 8


def test_a_full_claim_is_topped_up_to_the_batch_size(tenant_app, emulator):
    """A worker whose share is two jobs claims two send jobs: more are waiting, so it claims the rest of a
    batch (25) at once and sends them together."""
    prepared = _prepared(tenant_app, emulator, 5)
    assert Worker(tenant_app, batch_size=2, names=["bulletins.send"]).run_once() == 5
    assert [len(chat_messages(emulator, c)) for _b, c in prepared] == [1] * 5
    assert [j.result.get("batch") for j in _send_jobs(tenant_app)] == [5] * 5


def test_what_a_batch_cannot_take_goes_to_the_per_job_handler(tenant_app, emulator):
    """A paused bulletin (vetoed) and one with a robot target are left to the per-job handler; the others
    still go together."""
    prepared = _prepared(tenant_app, emulator, 4, robot=3)
    paused_id, paused_chat = prepared[2]
    with tenant_app.app_context():
        bulletins.set_state(db.session, paused_id, "paused", actor="user:test", reason="test")
        db.session.commit()
    run_worker(tenant_app)

    for bulletin_id, chatid in prepared[:2] + prepared[3:]:
        assert [m.path for m in chat_messages(emulator, chatid)].count("appchat") == 1
        assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]
        assert [r.state for r in runs(tenant_app, bulletin_id)] == ["done"]
    assert len(robot_messages(emulator)) == 1
    assert chat_messages(emulator, paused_chat) == []
    [run] = runs(tenant_app, paused_id)
    assert run.state == "skipped" and "paused" in run.reason
    results = [j.result for j in _send_jobs(tenant_app)]
    assert [r.get("batch") for r in results] == [2, 2, None, None]
    assert results[3] == {"deliveries": {"sent": 2}}


def test_a_refused_budget_rolls_the_whole_batch_back(tenant_app, emulator):
    """One member of the second chat has no room this minute: the batch takes nothing (no counter, no mark,
    no claim), and one job at a time the first is sent and the second waits for the budget."""
    prepared = _prepared(tenant_app, emulator, 2)
    settings = tenant_app.extensions["wecom_settings"]
    with tenant_app.app_context():
        budget = budget_for(db.engine, settings)
        full = budget.usage(APPCHAT_SEND_MEMBER_MINUTE.name)[1]
        second_chat_member = people(emulator, 4)[2]
        assert budget.acquire(APPCHAT_SEND_MEMBER_MINUTE.name, member_key(second_chat_member), full).ok
    before = _corp_minute(tenant_app)
    Worker(tenant_app).run_once()

    (first_id, first_chat), (second_id, second_chat) = prepared
    assert len(chat_messages(emulator, first_chat)) == 1
    assert chat_messages(emulator, second_chat) == []
    assert _corp_minute(tenant_app) - before == 2  # the first chat's two, taken once (the batch's rolled back)
    [waiting] = deliveries(tenant_app, second_id)
    assert waiting.state == "pending"
    jobs = _send_jobs(tenant_app)
    assert jobs[0].state == "done" and "batch" not in jobs[0].result
    assert jobs[1].state == "ready" and jobs[1].attempts == 0  # a budget wait spends no attempt
    assert (f"d{waiting.id}", "sending") not in _steps(tenant_app)
    assert [d.state for d in deliveries(tenant_app, first_id)] == ["sent"]

    # The minute passes (the member's counter is gone): the job that waited, its delivery claimed by itself
    # before the wait, goes in a batch again.
    with tenant_app.app_context():
        db.session.execute(sa.text("DELETE FROM rate_counter WHERE bucket LIKE '%appchat.send%'"))
        db.session.commit()
    release_ready_jobs(tenant_app)
    run_worker(tenant_app)
    assert len(chat_messages(emulator, second_chat)) == 1
    assert [d.state for d in deliveries(tenant_app, second_id)] == ["sent"]
    assert _send_jobs(tenant_app)[1].result == {"deliveries": {"sent": 1}, "batch": 1}


def test_a_delivery_another_job_claimed_is_not_sent_by_the_batch(tenant_app, emulator):
    """Between the batch's read and its claim another job (an occurrence job retaken after its time, say)
    claimed a delivery: the batch takes nothing, and the per-job handler leaves that delivery to its sender."""
    prepared = _prepared(tenant_app, emulator, 2)
    [taken] = deliveries(tenant_app, prepared[0][0])
    with tenant_app.app_context():
        other = enqueue("noop", {}, session=db.session)
        db.session.execute(sa.update(BulletinDelivery).where(BulletinDelivery.id == taken.id).values(job_id=other))
        db.session.commit()
    Worker(tenant_app, names=["bulletins.send"]).run_once()

    assert chat_messages(emulator, prepared[0][1]) == []
    assert len(chat_messages(emulator, prepared[1][1])) == 1
    [still] = deliveries(tenant_app, prepared[0][0])
    assert (still.state, still.job_id) == ("pending", other)
    assert [j.result.get("batch") for j in _send_jobs(tenant_app)] == [None, 1]


def test_a_delivery_claimed_between_the_read_and_the_claim_refuses_the_whole_claim(tenant_app, emulator):
    """The window between the batch's lock-free read and its claim transaction: a delivery claimed by another
    job in it makes the claim take nothing at all (no other claim, no step mark, no budget)."""
    prepared = _prepared(tenant_app, emulator, 2)

    def another_job_claims(plans) -> None:
        other = enqueue("noop", {}, session=db.session)
        first = plans[min(plans)][0].delivery_id
        db.session.execute(sa.update(BulletinDelivery).where(BulletinDelivery.id == first).values(job_id=other))

    _claim_after(tenant_app, another_job_claims)
    claimed = [d.job_id for b, _c in prepared for d in deliveries(tenant_app, b)]
    assert claimed[0] is not None and claimed[1] is None


def test_a_bulletin_paused_between_the_read_and_the_claim_refuses_the_whole_claim(tenant_app, emulator):
    prepared = _prepared(tenant_app, emulator, 2)

    def paused(_plans) -> None:
        bulletins.set_state(db.session, prepared[1][0], "paused", actor="user:test", reason="test")

    _claim_after(tenant_app, paused)
    assert [d.job_id for b, _c in prepared for d in deliveries(tenant_app, b)] == [None, None]


def _claim_after(app, change) -> None:
    """Claim the send jobs, read the batch's plans, make ``change`` (committed), then run the batch's claim
    transaction: it must refuse and leave no step mark and no budget spent."""
    from wecom_plugin.jobs.context import JobContext
    from wecom_plugin.runtime import claim
    from wecom_plugin.services import bulletin_batch

    before = _corp_minute(app)
    with app.app_context():
        with db.engine.begin() as conn:
            held = claim.claim_batch(conn, Job.__table__, owner="t", limit=10, lease_seconds=30,
                                     returning=(Job.name, Job.payload, Job.delivery))  # fmt: skip
        ctxs = [JobContext(app, db.engine, _View(c), c.fence, c.attempts, 30) for c in held]
        plans = bulletin_batch._read_plans(ctxs)
        assert len(plans) == 2
        change(plans)
        db.session.commit()
        try:
            with db.engine.begin() as conn:
                bulletin_batch._claim(conn, plans, 30)
        except bulletin_batch._Refused:
            pass
        else:
            raise AssertionError("the claim went ahead after the change")
    assert _steps(app) == []
    assert _corp_minute(app) == before


class _View:
    def __init__(self, claimed):
        self.id, self.name = claimed.id, claimed.row.name
        self.payload, self.delivery = claimed.row.payload, claimed.row.delivery


def test_calls_that_failed_end_as_one_job_at_a_time_would_end_them(tenant_app, emulator):
    """In one batch: a gateway error after the request went out (it may have been applied) ends unknown with
    an alert, never resent; a permanent errcode ends failed; a 45009 (nothing applied) forgets its mark and
    the per-job handler sends it; the rest are sent."""
    prepared = _prepared(tenant_app, emulator, 4)
    chats = [chatid for _b, chatid in prepared]
    emulator.admin("faults", action="http_status", endpoint="appchat/send", chatid=chats[0], times=1)
    emulator.admin("faults", action="errcode", errcode=86008, endpoint="appchat/send", chatid=chats[1], times=1)
    emulator.admin("faults", action="errcode", errcode=45009, endpoint="appchat/send", chatid=chats[2], times=1)
    run_worker(tenant_app)

    states = [[d.state for d in deliveries(tenant_app, b)] for b, _c in prepared]
    assert states == [["unknown"], ["failed"], ["sent"], ["sent"]]
    assert [len(chat_messages(emulator, c)) for c in chats] == [0, 0, 1, 1]
    [failed] = deliveries(tenant_app, prepared[1][0])
    assert failed.errcode == 86008
    assert [[r.state for r in runs(tenant_app, b)] for b, _c in prepared] == [
        ["partial"],
        ["partial"],
        ["done"],
        ["done"],
    ]
    results = [j.result for j in _send_jobs(tenant_app)]
    assert [r.get("batch") for r in results] == [4, 4, None, 4]  # the 45009 one was sent by its own handler
    assert sorted(state for _t, state in _steps(tenant_app)) == ["done", "done", "failed", "unknown"]
    with tenant_app.app_context():
        from wecom_plugin.models.ops import Alert

        keys = [a.key for a in db.session.scalars(sa.select(Alert))]
    assert any(k.startswith("job.step_unknown:bulletins.send") for k in keys)


def test_a_batch_keeps_its_leases_while_its_calls_take_long(tenant_app, emulator):
    """Slow calls outlast the lease taken at the claim: the batch renews before the next call, so a second
    worker looking for expired leases finds none, and nothing ends unknown."""
    prepared = _prepared(tenant_app, emulator, 4)
    emulator.admin("faults", action="latency", endpoint="appchat/send", seconds=1.2)
    stop = threading.Event()
    taken: list[int] = []

    def rival() -> None:
        worker = Worker(tenant_app, owner="rival", lease_seconds=3)
        while not stop.is_set():
            taken.append(worker.run_once())
            time.sleep(0.2)

    thread = threading.Thread(target=rival)
    try:
        first = Worker(tenant_app, owner="slow", lease_seconds=3)
        thread_started = False
        first_run = threading.Thread(target=first.run_once)
        first_run.start()
        time.sleep(0.5)  # the slow worker holds every job before the rival starts looking
        thread.start()
        thread_started = True
        first_run.join(timeout=60)
    finally:
        stop.set()
        if thread_started:
            thread.join(timeout=30)
        emulator.admin("faults", method="DELETE")
    assert sum(taken) == 0
    assert [len(chat_messages(emulator, c)) for _b, c in prepared] == [1, 1, 1, 1]
    assert [[d.state for d in deliveries(tenant_app, b)] for b, _c in prepared] == [["sent"]] * 4


def test_a_batch_that_lost_its_leases_makes_no_further_call(tenant_app, emulator):
    """The worker is paused past its leases mid-batch (here: they are expired under it): the call in flight
    is recorded, no further call is made, and a later worker sends the rest, each exactly once."""
    prepared = _prepared(tenant_app, emulator, 3)
    emulator.admin("faults", action="latency", endpoint="appchat/send", seconds=1.5)
    try:
        slow = Worker(tenant_app, owner="paused", lease_seconds=2)
        run = threading.Thread(target=slow.run_once)
        run.start()
        time.sleep(0.7)  # the first call is in flight
        with tenant_app.app_context():
            db.session.execute(
                sa.update(Job).where(Job.name == "bulletins.send").values(lease_expires_at=db_now(db.session))
            )
            db.session.commit()
        run.join(timeout=60)
    finally:
        emulator.admin("faults", method="DELETE")
    assert [len(chat_messages(emulator, c)) for _b, c in prepared] == [1, 0, 0]
    assert [d.state for d in deliveries(tenant_app, prepared[0][0])] == ["sent"]
    assert "sending" not in {state for _t, state in _steps(tenant_app)}

    run_worker(tenant_app)  # a later worker takes the jobs over
    assert [len(chat_messages(emulator, c)) for _b, c in prepared] == [1, 1, 1]
    assert [[d.state for d in deliveries(tenant_app, b)] for b, _c in prepared] == [["sent"]] * 3
    assert [[r.state for r in runs(tenant_app, b)] for b, _c in prepared] == [["done"]] * 3


def test_a_send_whose_grace_runs_out_during_the_batch_is_not_made(tenant_app, emulator):
    """The calls before it took so long that a delivery's grace ran out: it is not called, and the per-job
    handler records it missed (with its alert), as one job at a time would."""
    prepared = _prepared(tenant_app, emulator, 3)
    [last] = deliveries(tenant_app, prepared[2][0])
    with tenant_app.app_context():
        soon = db_now(db.session) + timedelta(seconds=1.5)
        db.session.execute(sa.update(BulletinDelivery).where(BulletinDelivery.id == last.id).values(deadline_at=soon))
        db.session.commit()
    emulator.admin("faults", action="latency", endpoint="appchat/send", seconds=1.0)
    try:
        Worker(tenant_app, names=["bulletins.send"]).run_once()
    finally:
        emulator.admin("faults", method="DELETE")
    assert [len(chat_messages(emulator, c)) for _b, c in prepared] == [1, 1, 0]
    [missed] = deliveries(tenant_app, prepared[2][0])
    assert missed.state == "missed"
    assert [j.result.get("batch") for j in _send_jobs(tenant_app)] == [3, 3, None]


def test_big_chats_are_granted_in_chunks_a_minute_can_hold():
    """One grant for 25 chats of 2,000 members would exceed the corp's minute (18,000 granted) and never be
    granted: the batch takes them in chunks of at most PERSON_TIMES_PER_CHUNK recipients."""
    from wecom_plugin.services import bulletin_batch as bb

    def plan(job_id: int, members: int):
        send = bb._Send(None, job_id, job_id, job_id, 1, None, "c", None, [f"u{i}" for i in range(members)])
        return job_id, [send]

    plans = dict(plan(job_id, 2000) for job_id in range(1, 26))
    chunks = bb._chunks(plans)
    assert [len(chunk) for chunk in chunks] == [2] * 12 + [1]
    assert max(sum(len(s.members) for sends in c.values() for s in sends) for c in chunks) <= bb.PERSON_TIMES_PER_CHUNK
    assert len(bb._chunks(dict([plan(1, 9000)]))) == 1  # a chat bigger than a chunk goes alone
    assert [len(c) for c in bb._chunks(dict(plan(job_id, 15) for job_id in range(1, 26)))] == [25]
