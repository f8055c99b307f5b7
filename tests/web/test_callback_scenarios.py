"""Callback scenarios W4 (retry storm) and W6 (crash matrix) of shared/reliability.md §1.5.

Real processes, real HTTP, real databases (SQLite and PostgreSQL): gunicorn with the project's
config/gunicorn.conf.py serves the receivers; ``wecom-plugin worker`` processes run the
``callbacks.dispatch`` jobs. The side effect counted is the one a handler commits: the test
handler (tests/support/callback_load.py, loaded through WECOM_PLUGIN_JOB_MODULES) adds one audit
row per run to the dispatch transaction, so "handled exactly once" means exactly one audit row per
event. Crashes are SIGKILLs at chosen points (tests/support/crash_wsgi.py for the web worker).

The Hypothesis state machine runs in-process (Flask test client, ``Worker.run_once``) and checks
the same invariants against a model under random interleavings of deliveries, duplicates,
reordering and workers that die after claiming.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.support import callback_load as load
from tests.support import procs
from tests.web.test_callback import APP_KEY, APP_TOKEN, CORP
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import AuditEvent, CallbackInbox, Job
from wecom_plugin.models.jobs import ProcessHeartbeat
from wecom_plugin.runtime import claim
from wecom_plugin.services import callbacks as callback_service

JOB_MODULES = "tests.support.jobs,tests.support.callback_load"
INBOX, JOB = CallbackInbox.__table__, Job.__table__


# --- the stack: gunicorn + workers on one database -------------------------------------------------
class Stack:
    """Processes of one deployment on ``db_url``; everything is stopped by :meth:`close`."""

    def __init__(self, db_url: str, folder: Path):
        self.db_url = db_url
        self.folder = folder
        self.processes: list = []
        self.reader = sa.create_engine(db_url, poolclass=sa.pool.NullPool)

    def env(self, **extra: str) -> dict[str, str]:
        return procs.plugin_env(
            self.db_url,
            WECOM_CORP_ID=CORP,
            WECOM_CALLBACK_TOKEN=APP_TOKEN,
            WECOM_CALLBACK_AES_KEY=APP_KEY,
            WECOM_PLUGIN_JOB_MODULES=JOB_MODULES,
            CALLBACK_LOAD_HANDLER="record",
            **extra,
        )

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def web(self, target: str = "wsgi:app", workers: int = 2) -> str:
        proc, base = load.start_gunicorn(
            self.env(WEB_CONCURRENCY=str(workers), LOG_LEVEL="INFO"), self.log("web"), target=target
        )
        self._track(proc, signal.SIGINT)  # gunicorn's quick shutdown: nothing is in flight by then
        return base

    def worker(self, name: str, **env: str):
        # One thread per worker process: the scenarios time their storms against a worker's pace.
        proc = load.start_worker(
            self.env(**{"WORKER_POLL_INTERVAL": "0.05", "WORKER_THREADS": "1", **env}), self.log(name)
        )
        self._track(proc, signal.SIGTERM)
        return proc

    def _track(self, proc, stop_signal: int) -> None:
        self.processes.append((proc, stop_signal))
        procs.STARTED.append(proc)  # the conftest's backstop

    def wait_for_workers(self, count: int, timeout: float = 30) -> None:
        def ready() -> bool:
            with self.reader.connect() as conn:
                query = (
                    sa.select(sa.func.count()).select_from(ProcessHeartbeat).where(ProcessHeartbeat.kind == "worker")
                )
                return conn.execute(query).scalar_one() >= count

        procs.wait_for(ready, timeout, interval=0.1, what=f"{count} worker heartbeat(s)")

    # --- reading the outcome ---------------------------------------------------------------------
    def inbox(self) -> dict[str, sa.Row]:
        with self.reader.connect() as conn:
            rows = conn.execute(sa.select(INBOX.c.dedupe_key, INBOX.c.state, INBOX.c.deliveries, INBOX.c.processed_at))
            return {row.dedupe_key: row for row in rows}

    def handled(self) -> list[tuple[str, dict]]:
        """(target, detail) of every committed handler run."""
        with self.reader.connect() as conn:
            query = sa.select(AuditEvent.target, AuditEvent.detail).where(AuditEvent.action == load.HANDLED_ACTION)
            return [(row.target, row.detail) for row in conn.execute(query)]

    def dispatch_jobs(self) -> list[sa.Row]:
        with self.reader.connect() as conn:
            query = sa.select(JOB.c.id, JOB.c.state, JOB.c.attempts).where(JOB.c.name == "callbacks.dispatch")
            return conn.execute(query).all()

    def wait_handled(self, keys: set[str], timeout: float) -> None:
        def done() -> bool:
            rows = self.inbox()
            return all(key in rows and rows[key].state == "handled" for key in keys)

        procs.wait_for(done, timeout, interval=0.05, what=f"{len(keys)} callback(s) to be handled")

    def close(self) -> list[str]:
        """Stop everything; returns the log texts (for a check that nothing crashed unexpectedly)."""
        load.stop_all(self.processes)
        self.processes.clear()
        self.reader.dispose()
        return [path.read_text(errors="replace") for path in sorted(self.folder.glob("*.log"))]


@pytest.fixture
def stack(db_url, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    stack = Stack(db_url, folder)
    yield stack
    stack.close()


def _post(session: requests.Session, base: str, signed: load.SignedCallback, **headers: str) -> int | str:
    try:
        response = session.post(signed.url(base + "/wecom/callback"), data=signed.body, headers=headers, timeout=15)
    except requests.ConnectionError:
        return "connection lost"
    return response.status_code


def _key(msgid: str) -> str:
    return f"msgid:{msgid}"


# --- W4: the retry storm -------------------------------------------------------------------------
# WeCom's retries come at +5 s and +10 s; scaled down here so that they land while the first copies
# are still queued or being handled: the handler works 4 s / events (outside any transaction), so the
# two workers need about 2 s for the whole storm whatever its size.
RETRY_AT = (0.5, 1.5)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("events", [40, pytest.param(200, marks=pytest.mark.slow)])
def test_retry_storm_every_event_delivered_4_times_is_handled_exactly_once(stack, events):
    for i in range(2):  # the workers boot while gunicorn does
        stack.worker(f"worker-{i}", CALLBACK_LOAD_SLEEP=f"{4 / events:.3f}")
    base = stack.web(workers=2)
    stack.wait_for_workers(2)

    sender = load.Sender(APP_TOKEN, APP_KEY, CORP)
    msgids = [str(7_200_000_000_000 + i) for i in range(events)]
    # Wave 0: two identical copies of each event at once. Waves 1 and 2: WeCom's retries, each a
    # fresh encryption of the same plaintext (new nonce, timestamp, random prefix).
    waves = [[(m, signed) for m in msgids for signed in [sender.text(m)] * 2]]
    waves += [[(m, sender.text(m)) for m in msgids] for _ in RETRY_AT]
    local = threading.local()
    answers: list[tuple[str, int, object, float]] = []  # (msgid, wave, status, answered at)

    def send(wave: int, msgid: str, signed: load.SignedCallback) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        status = _post(local.session, base, signed)
        answers.append((msgid, wave, status, time.time()))

    # Each wave has its own client threads, so that a retry wave leaves on time, not behind the first.
    pools = [ThreadPoolExecutor(max_workers=8) for _ in waves]
    start = time.monotonic()
    for wave, (pool, requests_) in enumerate(zip(pools, waves, strict=True)):
        if wave:
            time.sleep(max(0.0, start + RETRY_AT[wave - 1] - time.monotonic()))
        for msgid, signed in requests_:
            pool.submit(send, wave, msgid, signed)
    for pool in pools:
        pool.shutdown(wait=True)
    sent_for = time.monotonic() - start

    keys = {_key(m) for m in msgids}
    stack.wait_handled(keys, timeout=90)

    # Every request answered 200.
    assert len(answers) == 4 * events
    assert Counter(status for _, _, status, _ in answers) == {200: 4 * events}
    # One inbox row per event, holding all four deliveries, handled.
    inbox = stack.inbox()
    assert set(inbox) == keys
    assert {(row.state, row.deliveries) for row in inbox.values()} == {("handled", 4)}
    # One dispatch job per event, run once.
    assert Counter((job.state, job.attempts) for job in stack.dispatch_jobs()) == {("done", 1): events}
    # Exactly one side effect per event.
    handled = stack.handled()
    assert len(handled) == events
    assert {target for target, _ in handled} == keys
    # The retries really overlapped the processing: some were answered before their event was handled.
    overlapping = {
        msgid
        for msgid, wave, _, answered in answers
        if wave > 0 and answered < inbox[_key(msgid)].processed_at.replace(tzinfo=UTC).timestamp()
    }
    print(f"storm of {4 * events} requests sent in {sent_for:.1f}s; "
          f"{len(overlapping)} events got a retry while still queued or in progress")  # fmt: skip
    assert overlapping, "no retry arrived before its event was handled: the storm did not overlap processing"

    logs = stack.close()
    assert not any("Traceback" in text for text in logs), "\n".join(logs)


# --- W4: the model-based test --------------------------------------------------------------------
class CallbackStorm(RuleBasedStateMachine):
    """Random interleavings of WeCom's deliveries and the workers, against a model.

    The network holds requests in flight; ``arrive`` delivers any of them (so they are reordered),
    ``duplicate`` adds an identical copy of one in flight, ``retry`` a fresh encryption of an event
    already sent (WeCom's retry). ``crash_after_claim`` is a worker that claims an event's dispatch
    job and dies before running it: the job stays ``running`` under a lease that expires at once,
    and a later worker takes it over. After ``quiesce`` (every in-flight request delivered, the
    workers run until nothing is left): each event that arrived is handled exactly once and its
    inbox row holds every delivery; no event that never arrived is stored.
    """

    app = None  # set by the test
    examples = 0  # machines made so far: each one's message ids start with its own prefix

    def __init__(self):
        super().__init__()
        CallbackStorm.examples += 1
        self.prefix = f"{CallbackStorm.examples:04d}"
        self.client = self.app.test_client()
        self.sender = load.Sender(APP_TOKEN, APP_KEY, CORP)
        self.next_event = 0
        self.in_flight: list[tuple[str, load.SignedCallback]] = []
        self.sent: set[str] = set()
        self.arrived: Counter = Counter()  # msgid -> deliveries that reached the receiver
        self.crashes: Counter = Counter()  # msgid -> workers that died holding its job

    # --- WeCom and the network --------------------------------------------------------------------
    @rule()
    def emit(self):
        msgid = f"9{self.prefix}{self.next_event:05d}"
        self.next_event += 1
        self.sent.add(msgid)
        self.in_flight.append((msgid, self.sender.text(msgid)))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def duplicate(self, data):
        self.in_flight.append(data.draw(st.sampled_from(self.in_flight), label="copy of"))

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def retry(self, data):
        msgid = data.draw(st.sampled_from(sorted(self.sent)), label="retry of")
        self.in_flight.append((msgid, self.sender.text(msgid)))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def arrive(self, data):
        index = data.draw(st.integers(0, len(self.in_flight) - 1), label="arrives")
        msgid, signed = self.in_flight.pop(index)
        response = self.client.post(signed.path("/wecom/callback"), data=signed.body)
        assert (response.status_code, response.get_data()) == (200, b"")
        self.arrived[msgid] += 1

    # --- workers --------------------------------------------------------------------------------
    @precondition(lambda self: self.arrived)
    @rule(data=st.data())
    def crash_after_claim(self, data):
        msgid = data.draw(st.sampled_from(sorted(self.arrived)), label="worker dies holding")
        # Two deaths per event at most: a job whose holders keep dying ends dead (by design), which
        # this model does not follow.
        if self.crashes[msgid] >= 2:
            return
        with self.app.app_context():
            inbox_id = db.session.scalar(sa.select(INBOX.c.id).where(INBOX.c.dedupe_key == _key(msgid)))
            db.session.remove()
            with db.engine.begin() as conn:
                claimed = claim.claim_batch(
                    conn, JOB, owner="doomed-worker", limit=1, lease_seconds=0.001,
                    where=JOB.c.dedupe_key == f"inbox:{inbox_id}", returning=(JOB.c.name,),
                )  # fmt: skip
        if claimed:  # not claimable when it is already done (or held by a live lease)
            self.crashes[msgid] += 1

    @rule()
    def run_worker(self):
        Worker(self.app, lease_seconds=30).run_once()

    @rule()
    def quiesce(self):
        for msgid, signed in self.in_flight:
            response = self.client.post(signed.path("/wecom/callback"), data=signed.body)
            assert response.status_code == 200
            self.arrived[msgid] += 1
        self.in_flight.clear()
        deadline = time.monotonic() + 20
        while self._pending():
            assert time.monotonic() < deadline, "the workers did not finish"
            if not Worker(self.app, lease_seconds=30).run_once():
                time.sleep(0.005)  # a crashed holder's lease (1 ms) is about to expire
        rows = self._rows()
        assert {key: (state, deliveries) for key, (state, deliveries) in rows.items()} == {
            _key(m): ("handled", n) for m, n in self.arrived.items()
        }
        self.at_most_once_each()
        assert set(self._handled()) == {_key(m) for m in self.arrived}

    def teardown(self):
        self.quiesce()

    # --- invariants at every step ----------------------------------------------------------------
    @invariant()
    def one_row_per_distinct_event_that_arrived(self):
        rows = self._rows()
        assert set(rows) == {_key(m) for m in self.arrived}
        assert {k: d for k, (_, d) in rows.items()} == {_key(m): n for m, n in self.arrived.items()}

    @invariant()
    def at_most_once_each(self):
        counts = self._handled()
        assert all(n == 1 for n in counts.values()), counts
        assert set(counts) <= {_key(m) for m in self.arrived}

    # --- reading ---------------------------------------------------------------------------------
    def _mine(self, column):
        return column.like(f"msgid:9{self.prefix}%")

    def _rows(self) -> dict[str, tuple[str, int]]:
        with self.app.app_context():
            rows = db.session.execute(
                sa.select(INBOX.c.dedupe_key, INBOX.c.state, INBOX.c.deliveries).where(self._mine(INBOX.c.dedupe_key))
            ).all()
            db.session.remove()
        return {row.dedupe_key: (row.state, row.deliveries) for row in rows}

    def _handled(self) -> Counter:
        with self.app.app_context():
            targets = db.session.scalars(
                sa.select(AuditEvent.target).where(
                    AuditEvent.action == load.HANDLED_ACTION, self._mine(AuditEvent.target)
                )
            ).all()
            db.session.remove()
        return Counter(targets)

    def _pending(self) -> int:
        with self.app.app_context():
            count = db.session.scalar(
                sa.select(sa.func.count())
                .select_from(JOB)
                .where(JOB.c.name == "callbacks.dispatch", JOB.c.state != "done")
            )
            db.session.remove()
        return count


@pytest.mark.timeout(120)
def test_model_random_deliveries_duplicates_reordering_and_crashed_workers(make_app, db_url, monkeypatch):
    app = make_app(
        DATABASE_URL=db_url,
        WECOM_CORP_ID=CORP,
        WECOM_CALLBACK_TOKEN=APP_TOKEN,
        WECOM_CALLBACK_AES_KEY=APP_KEY,
    )
    # Only for this test: TextMessage events go to the counting handler.
    monkeypatch.setitem(callback_service.HANDLERS, "TextMessage", load.record_handled)
    monkeypatch.setattr(CallbackStorm, "app", app)
    run_state_machine_as_test(
        CallbackStorm,
        settings=settings(
            max_examples=10,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- W6: the crash matrix ------------------------------------------------------------------------
RETRY_PAUSES = (0.2, 0.5, 1.0)  # WeCom re-sends a callback it got no 200 for, three more times


def _retry_like_wecom(session, base, sender, msgid) -> list[object]:
    """Fresh-encrypted retries until one gets 200 (at most three, as WeCom)."""
    outcomes: list[object] = []
    for pause in RETRY_PAUSES:
        time.sleep(pause)
        outcomes.append(_post(session, base, sender.text(msgid)))
        if outcomes[-1] == 200:
            break
    return outcomes


@pytest.mark.timeout(150)
def test_crash_matrix_sigkill_before_commit_before_and_after_the_response_and_inside_the_handler(stack):
    """W6 (a)-(c): the web worker serving the callback is SIGKILLed at each point
    (tests/support/crash_wsgi.py); (d): the job worker is SIGKILLed inside the handler, after the
    handler's side effect was written but before it committed, and another worker takes over."""
    trace = stack.folder / "handler.trace"
    lease = {"JOB_LEASE_SECONDS": "2", "CALLBACK_LOAD_TRACE": str(trace)}
    # Handles (a)-(c) normally; hangs in the handler on (d)'s message (its content has the marker).
    doomed = stack.worker("doomed", CALLBACK_LOAD_PAUSE="60", **lease)
    base = stack.web(target="tests.support.crash_wsgi:app", workers=2)
    sender = load.Sender(APP_TOKEN, APP_KEY, CORP)
    session = requests.Session()
    # point -> (what the sender sees, stored by the first attempt, deliveries stored in the end)
    cases = {
        "before_commit": ("connection lost", False, 1),
        "before_response": ("connection lost", True, 2),
        "after_response": (200, True, 1),
    }
    for n, (point, (first_outcome, stored, deliveries)) in enumerate(cases.items(), start=1):
        msgid = str(7_300_000_000_000 + n)
        started = time.monotonic()
        # Connection: close, so that no pooled connection to the killed worker could be reused.
        first = _post(session, base, sender.text(msgid), **{load.CRASH_HEADER: point, "Connection": "close"})
        assert first == first_outcome, point
        # The web worker died at that point (gunicorn's master saw the SIGKILL and replaced it).
        procs.wait_for(
            lambda n=n: stack.log("web").read_text().count("was sent SIGKILL") == n, 10, what=f"{point}: the kill"
        )
        # (a) the transaction that had written the row and its job is gone; (b), (c) it committed.
        assert (_key(msgid) in stack.inbox()) is stored, point
        assert len(stack.dispatch_jobs()) == n - 1 + stored, point
        retries = [] if first == 200 else _retry_like_wecom(session, base, sender, msgid)
        assert retries[-1:] in ([], [200]), (point, retries)

        stack.wait_handled({_key(msgid)}, timeout=60)
        assert time.monotonic() - started < 60
        row = stack.inbox()[_key(msgid)]
        assert (point, row.state, row.deliveries) == (point, "handled", deliveries)
        assert [t for t, _ in stack.handled()].count(_key(msgid)) == 1, point

    # (d) The doomed worker enters the handler, writes its side effect (flushed, not committed), hangs.
    msgid = "7300000000004"
    started = time.monotonic()
    assert _post(session, base, sender.text(msgid, content=f"{load.PAUSE_MARKER} 你好")) == 200
    entered = f"enter {_key(msgid)} {doomed.pid}"
    procs.wait_for(lambda: entered in trace.read_text(), 30, what="the doomed worker inside the handler")
    survivor = stack.worker("survivor", **lease)
    doomed.kill()  # SIGKILL, while the survivor boots
    doomed.wait(timeout=10)
    stack.wait_handled({_key(msgid)}, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 60
    # The handler was entered twice; its side effect committed once, by the survivor.
    runs = [line for line in trace.read_text().splitlines() if _key(msgid) in line]
    assert runs == [entered, f"enter {_key(msgid)} {survivor.pid}"]
    assert [d["pid"] for t, d in stack.handled() if t == _key(msgid)] == [survivor.pid]
    row = stack.inbox()[_key(msgid)]
    assert (row.state, row.deliveries) == ("handled", 1)
    print(f"(d) handled by the second worker {elapsed:.1f}s after delivery (lease 2 s)")

    jobs = Counter((job.state, job.attempts) for job in stack.dispatch_jobs())
    assert jobs == {("done", 1): 3, ("done", 2): 1}
    logs = stack.close()
    assert not any("Traceback" in text for text in logs), "\n".join(logs)


# --- a holder paused past its lease inside the handler ----------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_a_holder_paused_inside_the_handler_past_its_lease_does_not_repeat_the_side_effect(postgres_url, tmp_path):
    stack = Stack(postgres_url, tmp_path)
    try:
        trace = tmp_path / "handler.trace"
        lease = {"JOB_LEASE_SECONDS": "2", "CALLBACK_LOAD_TRACE": str(trace)}
        paused = stack.worker("paused", CALLBACK_LOAD_PAUSE="3", **lease)  # 3 s inside the handler
        base = stack.web()
        msgid = "7300000000300"
        sender = load.Sender(APP_TOKEN, APP_KEY, CORP)
        assert _post(requests.Session(), base, sender.text(msgid, content=f"{load.PAUSE_MARKER} 你好")) == 200
        procs.wait_for(lambda: trace.exists() and str(paused.pid) in trace.read_text(), 30, what="the handler")
        paused.send_signal(signal.SIGSTOP)  # its lease keeper stops too: the lease lapses
        try:
            other = stack.worker("other", **lease)
            stack.wait_handled({_key(msgid)}, timeout=30)
        finally:
            paused.send_signal(signal.SIGCONT)
        procs.wait_for(lambda: "lease was lost" in stack.log("paused").read_text(), 30, what="the paused one to end")
        assert [d["pid"] for t, d in stack.handled() if t == _key(msgid)] == [other.pid]
    finally:
        stack.close()
