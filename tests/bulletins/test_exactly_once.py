"""Bulletins fire exactly once, with real worker and clock processes (reliability scenarios S1, S3-S6, S8).

Every test runs on SQLite and on PostgreSQL (``db_url``). The plugin runs as real ``wecom-plugin clock``
and ``wecom-plugin worker`` subprocesses (tests/bulletins/process_support.py starts them) that send
over real HTTP to the sandbox tenant served by this test process, so "sent once" is counted where a
send lands: the messages the tenant recorded. Faults are the tenant's own (``timeout_after_apply``),
signals (kill -9, SIGSTOP/SIGCONT) and a pause hook in the subprocesses that holds a worker at a known
point of the firing path while it holds the job's lease (process_support's docstring).

Each test says in a comment what product change would make it fail.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from tests.bulletins import process_support as ps
from tests.groups.check_support import make_chat, people
from wecom_plugin.extensions import db
from wecom_plugin.models import Alert, Job, Occurrence, Schedule
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now, sql_now
from wecom_plugin.models.jobs import ProcessHeartbeat
from wecom_plugin.services import bulletins

pytestmark = pytest.mark.timeout(240)

FIRE = bulletins.JOB_NAME
LEASE = "2"  # seconds: short, so a takeover after a kill or a pause happens within the test


# --- setup ----------------------------------------------------------------------------------------
@pytest.fixture
def bapp(make_app, db_url, emulator):
    """The plugin (test process side) on a fresh database, talking to the sandbox tenant."""
    return make_app(**ps.app_overrides(emulator, db_url))


@pytest.fixture
def chatid(bapp, emulator) -> str:
    """A chat of the tenant that the test robots post into."""
    members = people(emulator, 3)
    return make_chat(bapp, members, members[0], "通报机器人群")


def save(app, doc: dict) -> int:
    with app.app_context():
        row = bulletins.save(db.session, doc, actor="user:test", settings=app.extensions["wecom_settings"])
        db.session.commit()
        return row.id


def robot_bulletin(app, emulator, chatid: str, name: str, **extra) -> tuple[int, str]:
    """A bulletin to one robot of its own; returns (bulletin id, robot key)."""
    key = f"eo-{name}-robot-key"
    ps.add_robots(emulator, chatid, [key])
    return save(app, ps.robot_bulletin_doc(name, name, key, **extra)), key


def make_due(app, bulletin_id: int, *, ago: float = 1.0) -> datetime:
    """Point the bulletin's schedule at the database's now minus ``ago`` seconds (the next tick fires it)."""
    with app.app_context():
        when = db_now(db.session) - timedelta(seconds=ago)
        db.session.execute(
            sa.update(Schedule).where(Schedule.key == bulletins.schedule_key(bulletin_id)).values(next_run_at=when)
        )
        db.session.commit()
        return when


def rows(app, model, *where, order=None) -> list:
    with app.app_context():
        found = list(db.session.scalars(sa.select(model).where(*where).order_by(order or model.id)))
        db.session.expunge_all()
        return found


def open_alert_keys(app) -> list[str]:
    return sorted(a.key for a in rows(app, Alert, Alert.state == "open"))


def fire_jobs(app) -> list[Job]:
    return rows(app, Job, Job.name == FIRE)


def run_clock_once(db_url: str, emulator) -> None:
    """One real clock process, a couple of ticks, then exit."""
    ps.stop(ps.start_clock(db_url, emulator, "--max-ticks", "2", "--tick-seconds", "0.1"), terminate=False)


def drain(db_url: str, emulator, **env: str) -> str:
    """One real worker process that runs every due job and exits; returns its stderr."""
    env.setdefault("JOB_LEASE_SECONDS", LEASE)
    return ps.stop(ps.start_worker(db_url, emulator, "--exit-when-idle", **env), terminate=False)


# --- S1: the race ---------------------------------------------------------------------------------
RACE_N = 1000


def test_two_clocks_and_four_workers_send_1000_due_bulletins_exactly_once(bapp, db_url, emulator, chatid):
    """1,000 bulletins due at once, each to its own robot; 2 clock and 4 worker processes race.

    Breaks if: an occurrence is materialised twice, a job is claimed by two workers, a run or delivery
    is created twice, or a process dies on a lock error (a job left dead or unfinished, a Traceback).
    The clock's guards are layered, so it takes removing all of them: the due schedules' lock (SQLite's
    BEGIN IMMEDIATE, PostgreSQL's FOR UPDATE SKIP LOCKED), the conditional next_run_at advance, the
    occurrence's unique key and the job's dedupe key. (Checked: with all four gone on PostgreSQL this
    test fails, 1,600 jobs for 1,000 occurrences; on SQLite the write lock alone still holds.)
    """
    keys = [f"race-{i:04d}-robot-key" for i in range(RACE_N)]
    ps.add_robots(emulator, chatid, keys)
    with bapp.app_context():
        settings = bapp.extensions["wecom_settings"]
        for i, key in enumerate(keys):
            bulletins.save(db.session, ps.robot_bulletin_doc(f"race-{i:04d}", f"r{i:04d}", key),
                           actor="user:test", settings=settings)  # fmt: skip
        db.session.commit()
        # All due now: one occurrence each, the same instant for all of them.
        due = db_now(db.session) - timedelta(seconds=1)
        db.session.execute(sa.update(Schedule).where(Schedule.key.like("bulletin:%")).values(next_run_at=due))
        db.session.commit()

    started = time.monotonic()
    worker_env = {"JOB_LEASE_SECONDS": "30", "WORKER_BATCH_SIZE": "5", "WORKER_POLL_INTERVAL": "0.05"}
    workers = [ps.start_worker(db_url, emulator, **worker_env) for _ in range(4)]
    clocks = [ps.start_clock(db_url, emulator, "--tick-seconds", "0.2") for _ in range(2)]
    reader = ps.reader(db_url)
    try:
        finished = sa.select(sa.func.count()).select_from(BulletinDelivery).where(BulletinDelivery.state != "pending")
        idle = sa.select(sa.func.count()).select_from(Job).where(Job.state.in_(("ready", "running")))
        ps.wait_until(
            lambda: ps.scalar(reader, finished) >= RACE_N and ps.scalar(reader, idle) == 0,
            90,
            "every delivery to finish",
            interval=0.25,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{ps.diagnose(reader, clocks + workers)}") from None
    finally:
        reader.dispose()
    elapsed = time.monotonic() - started
    for proc in clocks + workers:
        ps.stop(proc)

    # Where the sends land: exactly one message per robot, nothing else.
    sends = ps.robot_sends(emulator)
    assert len(sends) == RACE_N and set(sends) == set(keys)
    assert {n for n in sends.values()} == {1}, {k: n for k, n in sends.items() if n != 1}
    requests = ps.webhook_requests(emulator)
    assert len(requests) == RACE_N and {r["errcode"] for r in requests} == {0}

    deliveries = rows(bapp, BulletinDelivery)
    assert len(deliveries) == RACE_N
    assert {d.state for d in deliveries} == {"sent"}
    assert {d.attempt for d in deliveries} == {1}
    assert len({(d.bulletin_id, d.scheduled_at) for d in deliveries}) == RACE_N
    assert {d.scheduled_at for d in deliveries} == {due}
    run_rows = rows(bapp, BulletinRun)
    assert len(run_rows) == RACE_N and {r.state for r in run_rows} == {"done"}
    occurrences = rows(bapp, Occurrence, Occurrence.schedule_key.like("bulletin:%"))
    assert len(occurrences) == RACE_N and {o.state for o in occurrences} == {"enqueued"}
    jobs = fire_jobs(bapp)
    assert len(jobs) == RACE_N and {(j.state, j.attempts) for j in jobs} == {("done", 1)}
    assert rows(bapp, Job, Job.state == "dead") == []
    assert open_alert_keys(bapp) == []
    # The work really was shared: several worker processes each sent some of it.
    busy = [h.jobs_done for h in rows(bapp, ProcessHeartbeat, ProcessHeartbeat.kind == "worker") if h.jobs_done]
    assert sum(busy) == RACE_N and len(busy) >= 2, busy
    print(f"race: {RACE_N} bulletins sent in {elapsed:.1f}s, per worker {sorted(busy)}")


# --- S3: a worker killed after the claim, before the send -----------------------------------------
def tick(app) -> int:
    """One in-process clock pass (setup for the worker-fault scenarios; the real clock processes are
    exercised by the race, S4, S6 and S8)."""
    from wecom_plugin.jobs.clock import Clock

    return Clock(app, owner="test-clock").tick()


def due_bulletin(app, emulator, chatid: str, name: str, **extra) -> tuple[int, str, datetime, Job]:
    """A robot bulletin whose occurrence is due and materialised: (bulletin id, robot key, time, job)."""
    bulletin_id, key = robot_bulletin(app, emulator, chatid, name, **extra)
    when = make_due(app, bulletin_id)
    assert tick(app) == 1
    [job] = fire_jobs(app)
    assert job.state == "ready"
    return bulletin_id, key, when, job


def wait_lease_expired(db_url: str, job_id: int) -> None:
    engine = ps.reader(db_url)
    try:
        ps.wait_lease_expired(engine, job_id)
    finally:
        engine.dispose()


def test_s3_worker_killed_after_claim_before_send_is_taken_over_and_sent_once(bapp, db_url, emulator, chatid, tmp_path):
    """kill -9 while the worker holds the job, its delivery pending, no ``sending`` mark yet: after the
    lease another worker sends it, once, within grace.

    Breaks if: an expired lease is not reclaimed (runtime/claim.py), a takeover re-creates the run or
    the delivery instead of finding them (bulletin_delivery._open_run), or an occurrence whose holder
    died is treated as unknown/missed although nothing was ever marked ``sending``.
    """
    from wecom_plugin.models import JobStep

    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s3-killed")
    marker = tmp_path / "paused.json"
    first = ps.start_worker(
        db_url, emulator, pause={"at": "step", "seconds": 120, "marker": str(marker)}, JOB_LEASE_SECONDS=LEASE
    )
    held = ps.wait_for_marker(marker)
    [delivery] = rows(bapp, BulletinDelivery)
    assert (held["job_id"], held["fence"], held["target"]) == (job.id, 1, f"d{delivery.id}")
    # The moment of the kill: claimed, delivery pending, nothing marked sending, nothing sent.
    assert rows(bapp, Job, Job.id == job.id)[0].state == "running"
    assert delivery.state == "pending"
    assert rows(bapp, JobStep) == []
    ps.kill9(first)
    assert ps.robot_sends(emulator) == {}

    wait_lease_expired(db_url, job.id)
    drain(db_url, emulator)

    assert ps.robot_sends(emulator) == {key: 1}
    [delivery] = rows(bapp, BulletinDelivery)
    assert (delivery.state, delivery.attempt, delivery.scheduled_at) == ("sent", 1, when)
    assert [r.state for r in rows(bapp, BulletinRun)] == ["done"]
    [job] = fire_jobs(bapp)
    assert (job.state, job.attempts) == ("done", 2)
    assert open_alert_keys(bapp) == []


def test_s3_worker_killed_after_claim_past_grace_records_missed_and_sends_nothing(
    bapp, db_url, emulator, chatid, tmp_path
):
    """kill -9 right after the claim (before the handler opened the run); by the time another worker
    takes over, the occurrence's grace has passed: ``missed`` with the alert, nothing sent.

    The grace is shortened to 3 seconds directly in the bulletin row (the service's minimum is one
    minute), so the test need not wait a minute for the deadline.

    Breaks if: a takeover sends late regardless of the grace (the deadline check in
    bulletin_delivery._Sender.deliver), or the missed delivery raises no ``bulletin.missed:<id>`` alert.
    """
    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s3-late")
    with bapp.app_context():
        db.session.execute(sa.update(Bulletin).where(Bulletin.id == bulletin_id).values(misfire_grace_seconds=3))
        db.session.commit()
    marker = tmp_path / "paused.json"
    first = ps.start_worker(
        db_url, emulator, pause={"at": "handler", "seconds": 120, "marker": str(marker)}, JOB_LEASE_SECONDS=LEASE
    )
    held = ps.wait_for_marker(marker)
    assert (held["job_id"], held["fence"]) == (job.id, 1)
    assert rows(bapp, BulletinRun) == [] and rows(bapp, BulletinDelivery) == []
    ps.kill9(first)

    wait_lease_expired(db_url, job.id)
    reader = ps.reader(db_url)
    try:
        past_grace = sa.select(sql_now() > when + timedelta(seconds=3))
        ps.wait_until(lambda: bool(ps.scalar(reader, past_grace)), 10, "the grace to pass")
    finally:
        reader.dispose()
    drain(db_url, emulator)

    assert ps.robot_sends(emulator) == {}
    assert ps.webhook_requests(emulator) == []
    [delivery] = rows(bapp, BulletinDelivery)
    assert (delivery.state, delivery.scheduled_at) == ("missed", when)
    assert "not sent" in delivery.reason
    assert [r.state for r in rows(bapp, BulletinRun)] == ["missed"]  # its only delivery missed
    assert f"bulletin.missed:{bulletin_id}" in open_alert_keys(bapp)
    [job] = fire_jobs(bapp)
    assert (job.state, job.attempts) == ("done", 2)


# --- S4: between the WeCom call and the ``sent`` commit -------------------------------------------
def test_s4_send_applied_but_answer_lost_ends_unknown_is_never_repeated_and_resends_only_when_asked(
    bapp, db_url, emulator, chatid
):
    """The tenant applies the robot send, then the answer never comes (``timeout_after_apply``): the
    client times out after its 10 s read timeout. The delivery ends ``unknown`` with an alert, and
    nothing sends it again, however many worker passes and clock ticks follow; an operator's explicit
    resend sends it exactly once more.

    Breaks if: a read timeout after a POST is treated as "nothing happened" (WeComNetworkError without
    side_effect_possible in wecom/client.py, or run_step deleting the mark and retrying), an unknown
    step is retried by a later pass, the clock re-materialises the occurrence, or resend() does not
    create a new attempt that the worker sends.
    """
    from wecom_plugin.models import AuditEvent, JobStep
    from wecom_plugin.services import bulletin_delivery

    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s4-timeout")
    emulator.admin("faults", action="timeout_after_apply", endpoint="webhook/send", seconds=60, times=1)
    # A lease well above the client's timeouts, as production has (architecture.md, "Limits").
    err = drain(db_url, emulator, JOB_LEASE_SECONDS="30")
    assert "webhook/send" in err  # the client logged the timeout

    assert ps.robot_sends(emulator) == {key: 1}  # WeCom did apply it
    [delivery] = rows(bapp, BulletinDelivery)
    assert delivery.state == "unknown"
    [step] = rows(bapp, JobStep)
    assert (step.target, step.state) == (f"d{delivery.id}", "unknown")
    assert f"job.step_unknown:{FIRE}:{job.id}" in open_alert_keys(bapp)
    [job] = fire_jobs(bapp)
    assert job.state == "done"
    emulator.admin("faults", method="DELETE")  # also wakes the request still asleep in the tenant

    # Further clock ticks and worker passes: nothing is sent again.
    run_clock_once(db_url, emulator)
    drain(db_url, emulator)
    assert ps.robot_sends(emulator) == {key: 1}
    assert len(rows(bapp, BulletinDelivery)) == 1 and len(fire_jobs(bapp)) == 1

    # The operator checked and decides to resend: exactly one more send, recorded as a resend.
    with bapp.app_context():
        bulletin_delivery.resend(db.session, delivery.id, actor="user:ops", reason="群里没有收到")
        db.session.commit()
    drain(db_url, emulator)
    assert ps.robot_sends(emulator) == {key: 2}
    first, second = rows(bapp, BulletinDelivery)
    assert (first.state, first.attempt) == ("unknown", 1)
    assert (second.state, second.attempt, second.resend_of) == ("sent", 2, first.id)
    assert second.scheduled_at == when
    assert [a.actor for a in rows(bapp, AuditEvent, AuditEvent.action == "bulletins.resend")] == ["user:ops"]
    drain(db_url, emulator)
    assert ps.robot_sends(emulator) == {key: 2}


def test_s4_worker_killed_while_its_applied_send_is_unanswered_leaves_it_unknown(bapp, db_url, emulator, chatid):
    """kill -9 of the worker while the tenant has applied the send and the answer is still pending:
    the next holder finds the step ``sending`` and ends it ``unknown`` with the alert; no second send.

    Breaks if: a step left ``sending`` by a dead holder is sent again (JobContext._at_most_once), or the
    delivery is left ``pending``/``sent`` instead of ``unknown``.
    """
    from wecom_plugin.models import JobStep

    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s4-killed")
    emulator.admin("faults", action="timeout_after_apply", endpoint="webhook/send", seconds=60, times=1)
    first = ps.start_worker(db_url, emulator, JOB_LEASE_SECONDS=LEASE)
    ps.wait_until(lambda: ps.robot_sends(emulator)[key] == 1, 30, "the tenant to apply the send")
    ps.kill9(first)
    emulator.admin("faults", method="DELETE")

    wait_lease_expired(db_url, job.id)
    drain(db_url, emulator)

    assert ps.robot_sends(emulator) == {key: 1}
    assert len(ps.webhook_requests(emulator)) == 1
    [delivery] = rows(bapp, BulletinDelivery)
    assert delivery.state == "unknown"
    [step] = rows(bapp, JobStep)
    assert (step.target, step.state, step.fence) == (f"d{delivery.id}", "unknown", 1)
    assert f"job.step_unknown:{FIRE}:{job.id}" in open_alert_keys(bapp)
    [job] = fire_jobs(bapp)
    assert (job.state, job.attempts) == ("done", 2)


# --- S5: a zombie holder --------------------------------------------------------------------------
def test_s5_worker_paused_past_its_lease_before_the_send_does_not_send_after_the_takeover(
    bapp, db_url, emulator, chatid, tmp_path
):
    """SIGSTOP a worker that holds the job (delivery pending, about to start its step) past its lease;
    another worker takes over and sends; SIGCONT: the old holder sends nothing and its completion is
    refused. Total sends: 1.

    Breaks if: the resumed holder's step is not refused (JobContext._at_most_once: no step-state check
    / lease check before the call), or its completion is recorded (the fence in Worker._finish).
    """
    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s5-before")
    marker = tmp_path / "paused.json"
    zombie = ps.start_worker(
        db_url, emulator, pause={"at": "step", "seconds": 60, "marker": str(marker)}, JOB_LEASE_SECONDS=LEASE
    )
    ps.wait_for_marker(marker)
    zombie.send_signal(signal.SIGSTOP)
    try:
        wait_lease_expired(db_url, job.id)
        drain(db_url, emulator)
        assert ps.robot_sends(emulator) == {key: 1}
    finally:
        ps.release(marker)
        zombie.send_signal(signal.SIGCONT)
    err = ps.stop(zombie)  # SIGTERM: it finishes the job it holds (as far as it can), then exits

    assert ps.robot_sends(emulator) == {key: 1}
    assert len(ps.webhook_requests(emulator)) == 1
    assert "finished but its lease was lost; not recorded" in err, err  # the fence refused its completion
    [delivery] = rows(bapp, BulletinDelivery)
    assert (delivery.state, delivery.attempt) == ("sent", 1)
    [job] = fire_jobs(bapp)
    assert (job.state, job.attempts) == ("done", 2)
    assert open_alert_keys(bapp) == []


def test_s5_worker_paused_past_its_lease_inside_the_send_makes_no_call_after_resuming(
    bapp, db_url, emulator, chatid, tmp_path
):
    """SIGSTOP a worker after it marked the delivery ``sending`` but before its WeCom call; the worker
    that takes over cannot know whether the call left, so the delivery ends ``unknown`` (alerted, not
    sent); SIGCONT: the old holder's lease check refuses the call. Total sends: 0, and the record of the
    unknown step survives the zombie.

    Breaks if: the client makes the call without ``guard()`` (ensure_lease) right before the request,
    the takeover sends a step another holder left ``sending``, or the zombie's clean-up after its
    LeaseLostError removes the ``unknown`` step the takeover recorded (JobContext._at_most_once deletes
    the step by job, target and fence only, not by state).
    """
    from wecom_plugin.models import JobStep

    bulletin_id, key, when, job = due_bulletin(bapp, emulator, chatid, "s5-inside")
    marker = tmp_path / "paused.json"
    zombie = ps.start_worker(
        db_url, emulator, pause={"at": "call", "seconds": 60, "marker": str(marker)}, JOB_LEASE_SECONDS=LEASE
    )
    ps.wait_for_marker(marker)
    zombie.send_signal(signal.SIGSTOP)
    try:
        [step] = rows(bapp, JobStep)
        assert (step.state, step.fence) == ("sending", 1)
        wait_lease_expired(db_url, job.id)
        drain(db_url, emulator)
        [delivery] = rows(bapp, BulletinDelivery)
        assert delivery.state == "unknown"
    finally:
        ps.release(marker)
        zombie.send_signal(signal.SIGCONT)
    err = ps.stop(zombie)

    assert ps.robot_sends(emulator) == {}
    assert ps.webhook_requests(emulator) == []  # not even a call the tenant refused
    assert "lease lost" in err, err
    [delivery] = rows(bapp, BulletinDelivery)
    assert delivery.state == "unknown"
    assert f"job.step_unknown:{FIRE}:{job.id}" in open_alert_keys(bapp)
    [job] = fire_jobs(bapp)
    assert (job.state, job.attempts) == ("done", 2)
    # The zombie's lease loss must not delete the ``unknown`` step the takeover recorded (it once did:
    # _at_most_once removed "its" mark by job, target and fence without checking the state).
    steps = [(s.target, s.state) for s in rows(bapp, JobStep)]
    assert steps == [(f"d{delivery.id}", "unknown")]


# --- S6: downtime ---------------------------------------------------------------------------------
def test_s6_after_downtime_only_the_newest_occurrence_within_grace_is_sent_once(bapp, db_url, emulator, chatid):
    """No clock ran across three occurrences of a bulletin, five minutes apart. A clock process starts:

    * grace 2 minutes, covering only the newest: exactly one catch-up send (the newest), the two older
      occurrences recorded ``missed`` and alerted (``schedule.missed:bulletin:<id>``);
    * grace 1 minute, the newest already older than that: nothing sent, three ``missed`` rows, alerted.

    The downtime is made by pointing next_run_at back at the oldest occurrence (where the last clock
    left it); the times are whole minutes (a bulletin's times are HH:MM), chosen from the database's now
    so that each grace decision has at least 30 s of margin.

    Breaks if: the clock replays every missed occurrence (no misfire grace) or none (no catch-up), does
    not coalesce, fires an occurrence outside grace, records no missed rows or raises no alert.
    """
    with bapp.app_context():
        now = db_now(db.session)
    newest = now.replace(second=0, microsecond=0)  # 0-60 s ago
    catch_up = [newest - timedelta(minutes=10), newest - timedelta(minutes=5), newest]
    too_late = [newest - timedelta(minutes=25), newest - timedelta(minutes=20), newest - timedelta(minutes=15)]
    shanghai = ZoneInfo("Asia/Shanghai")

    def schedule(times: list[datetime]) -> dict:
        return {"times": [t.astimezone(shanghai).strftime("%H:%M") for t in times], "days": {"rule": "every_day"}}

    ids, keys = {}, {}
    for name, times, grace in (("s6-catch-up", catch_up, 2), ("s6-too-late", too_late, 1)):
        ids[name], keys[name] = robot_bulletin(
            bapp, emulator, chatid, name, schedule=schedule(times), misfire_grace_minutes=grace
        )
        with bapp.app_context():
            db.session.execute(
                sa.update(Schedule)
                .where(Schedule.key == bulletins.schedule_key(ids[name]))
                .values(next_run_at=times[0])
            )
            db.session.commit()

    run_clock_once(db_url, emulator)
    drain(db_url, emulator)

    def occurrences(name: str) -> list[tuple[datetime, str]]:
        key = bulletins.schedule_key(ids[name])
        found = rows(bapp, Occurrence, Occurrence.schedule_key == key, order=Occurrence.scheduled_at)
        return [(o.scheduled_at, o.state) for o in found]

    assert ps.robot_sends(emulator) == {keys["s6-catch-up"]: 1}
    assert occurrences("s6-catch-up") == [(catch_up[0], "missed"), (catch_up[1], "missed"), (newest, "enqueued")]
    [delivery] = rows(bapp, BulletinDelivery, BulletinDelivery.bulletin_id == ids["s6-catch-up"])
    assert (delivery.state, delivery.scheduled_at) == ("sent", newest)

    assert occurrences("s6-too-late") == [(t, "missed") for t in too_late]
    assert rows(bapp, BulletinRun, BulletinRun.bulletin_id == ids["s6-too-late"]) == []

    alerts = {a.key: a for a in rows(bapp, Alert, Alert.state == "open")}
    assert set(alerts) == {f"schedule.missed:bulletin:{ids[n]}" for n in ids}
    assert alerts[f"schedule.missed:bulletin:{ids['s6-catch-up']}"].detail["missed_count"] == 2
    assert alerts[f"schedule.missed:bulletin:{ids['s6-too-late']}"].detail["missed_count"] == 3
    for name in ids:
        [row] = rows(bapp, Schedule, Schedule.key == bulletins.schedule_key(ids[name]))
        assert row.next_run_at > now  # caught up: the next occurrence is in the future

    # A second clock and another worker pass change nothing.
    run_clock_once(db_url, emulator)
    drain(db_url, emulator)
    assert ps.robot_sends(emulator) == {keys["s6-catch-up"]: 1}
    assert len(rows(bapp, Occurrence, Occurrence.schedule_key.like("bulletin:%"))) == 6


# --- S8: time zones -------------------------------------------------------------------------------
BERLIN = ZoneInfo("Europe/Berlin")
SHANGHAI = ZoneInfo("Asia/Shanghai")
HALF_PAST_TWO = {"times": ["02:30"], "days": {"rule": "every_day"}}


def _walk(spec: dict, tz: ZoneInfo, after: datetime, until: datetime) -> list[datetime]:
    from wecom_plugin.domain import schedules
    from wecom_plugin.domain.workdays import WorkdayCalendar

    calendar, out = WorkdayCalendar(), []
    current = schedules.next_after(spec, tz, after, calendar)
    while current < until:
        out.append(current)
        current = schedules.next_after(spec, tz, current, calendar)
    return out


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "bulletin", **HALF_PAST_TWO},
        {"kind": "bulletin", "days": {"rule": "cron", "expr": "30 2 * * *"}},
        {"kind": "daily", "times": ["02:30"]},
    ],
    ids=["bulletin-times", "bulletin-cron", "code-daily"],
)
def test_s8_half_past_two_runs_once_on_both_2026_dst_days_in_berlin_and_daily_in_shanghai(spec):
    """02:30 in Europe/Berlin: on 2026-03-29 (clocks jump 02:00 → 03:00) it does not exist and runs
    once, shifted forward by the gap (03:30 CEST = 01:30 UTC); on 2026-10-25 (03:00 → 02:00) it happens
    twice and runs once, at its first instance (02:30 CEST = 00:30 UTC). Asia/Shanghai has no DST:
    every day at 18:30 UTC the day before. Each kind of wall-clock schedule follows the one policy of
    domain/schedules.py.

    Breaks if: a gap time is skipped or run twice, the repeated hour runs twice (fold=1 after fold=0),
    or a shifted time is ordered wrongly against the walk.
    """
    spring = _walk(spec, BERLIN, _utc(2026, 3, 27, 12), _utc(2026, 3, 31))
    assert spring == [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 30), _utc(2026, 3, 30, 0, 30)]
    assert [t.astimezone(BERLIN).strftime("%m-%d %H:%M %z") for t in spring] == [
        "03-28 02:30 +0100",
        "03-29 03:30 +0200",  # inside the gap: shifted forward by it
        "03-30 02:30 +0200",
    ]
    autumn = _walk(spec, BERLIN, _utc(2026, 10, 23, 12), _utc(2026, 10, 27))
    assert autumn == [_utc(2026, 10, 24, 0, 30), _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)]
    assert [t.astimezone(BERLIN).strftime("%m-%d %H:%M %z") for t in autumn] == [
        "10-24 02:30 +0200",
        "10-25 02:30 +0200",  # the first of the two 02:30s; the second (+0100) never comes
        "10-26 02:30 +0100",
    ]
    # Right at the boundaries: the next occurrence after the first 02:30 is not the repeated one,
    # and the one after the night before the gap is the shifted 03:30.
    from wecom_plugin.domain import schedules
    from wecom_plugin.domain.workdays import WorkdayCalendar

    calendar = WorkdayCalendar()
    assert schedules.next_after(spec, BERLIN, _utc(2026, 10, 25, 0, 30), calendar) == _utc(2026, 10, 26, 1, 30)
    assert schedules.next_after(spec, BERLIN, _utc(2026, 10, 25, 0, 59), calendar) == _utc(2026, 10, 26, 1, 30)
    assert schedules.next_after(spec, BERLIN, _utc(2026, 3, 29, 0, 59), calendar) == _utc(2026, 3, 29, 1, 30)

    for start in (_utc(2026, 3, 27, 12), _utc(2026, 10, 23, 12)):
        shanghai = _walk(spec, SHANGHAI, start, start + timedelta(days=3))
        assert [t - start for t in shanghai] == [timedelta(hours=6, minutes=30) + timedelta(days=n) for n in range(3)]
        assert {t.astimezone(SHANGHAI).strftime("%H:%M %z") for t in shanghai} == {"02:30 +0800"}


def test_s8_a_clock_process_fires_02_30_across_both_dst_days_once_per_day(bapp, db_url, emulator, chatid):
    """End to end: three bulletins at 02:30, each limited to three days around a 2026 DST transition
    (Berlin spring, Berlin autumn) or the autumn one in Shanghai. A real clock walks each schedule from
    an explicit first occurrence and real workers send every occurrence; each day is sent exactly once,
    stamped with the local time the members read.

    Those days are past, and the database's clock cannot be moved, so the schedule rows are stretched
    directly: next_run_at = the first occurrence (the day before the transition, unambiguous), a grace
    of 400 days in the schedule and the bulletin (the service caps it at 24 h), and no coalescing, so
    every occurrence of the walk fires instead of only the newest.

    Breaks if: the clock's walk repeats the fall-back hour or loses the spring-forward day, or the
    firing job renders another local time than the occurrence's.
    """
    grace = 400 * 24 * 3600
    cases = {
        "s8-berlin-spring": ("Europe/Berlin", "2026-03-28", "2026-03-30", _utc(2026, 3, 28, 1, 30)),
        "s8-berlin-autumn": ("Europe/Berlin", "2026-10-24", "2026-10-26", _utc(2026, 10, 24, 0, 30)),
        "s8-shanghai": ("Asia/Shanghai", "2026-10-24", "2026-10-26", _utc(2026, 10, 23, 18, 30)),
    }
    ids, keys = {}, {}
    for name, (zone, start, end, first) in cases.items():
        ids[name], keys[name] = robot_bulletin(
            bapp, emulator, chatid, name, timezone=zone, schedule={**HALF_PAST_TWO, "start": start, "end": end}
        )
        with bapp.app_context():
            db.session.execute(
                sa.update(Schedule)
                .where(Schedule.key == bulletins.schedule_key(ids[name]))
                .values(next_run_at=first, misfire_grace_seconds=grace, coalesce=False)
            )
            db.session.execute(sa.update(Bulletin).where(Bulletin.id == ids[name]).values(misfire_grace_seconds=grace))
            db.session.commit()

    run_clock_once(db_url, emulator)
    drain(db_url, emulator)

    expected = {
        "s8-berlin-spring": (
            [_utc(2026, 3, 28, 1, 30), _utc(2026, 3, 29, 1, 30), _utc(2026, 3, 30, 0, 30)],
            {"2026-03-28 02:30", "2026-03-29 03:30", "2026-03-30 02:30"},
        ),
        "s8-berlin-autumn": (
            [_utc(2026, 10, 24, 0, 30), _utc(2026, 10, 25, 0, 30), _utc(2026, 10, 26, 1, 30)],
            {"2026-10-24 02:30", "2026-10-25 02:30", "2026-10-26 02:30"},
        ),
        "s8-shanghai": (
            [_utc(2026, 10, 23, 18, 30), _utc(2026, 10, 24, 18, 30), _utc(2026, 10, 25, 18, 30)],
            {"2026-10-24 02:30", "2026-10-25 02:30", "2026-10-26 02:30"},
        ),
    }
    sent = ps.robot_sends(emulator)
    texts: dict[str, set[str]] = {}
    for m in list(emulator.data.messages.values()):
        texts.setdefault(m.robot_key, set()).add(" ".join(m.content["content"].split()[1:3]))
    for name, (instants, local_texts) in expected.items():
        key = bulletins.schedule_key(ids[name])
        found = rows(bapp, Occurrence, Occurrence.schedule_key == key, order=Occurrence.scheduled_at)
        assert [(o.scheduled_at, o.state) for o in found] == [(t, "enqueued") for t in instants], name
        deliveries = rows(bapp, BulletinDelivery, BulletinDelivery.bulletin_id == ids[name])
        assert sorted((d.scheduled_at, d.state) for d in deliveries) == [(t, "sent") for t in instants], name
        assert sent[keys[name]] == 3, name
        assert texts[keys[name]] == local_texts, name
        [schedule_row] = rows(bapp, Schedule, Schedule.key == key)
        assert schedule_row.next_run_at.year == 9999  # past the end date: never again
    assert open_alert_keys(bapp) == []
