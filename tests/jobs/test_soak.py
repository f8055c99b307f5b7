"""Soak: workers killed, paused and restarted at random while jobs keep arriving (``./dev soak``).

Bounded by SOAK_SECONDS (default 120) of chaos per backend, then a drain. Not part of ./dev test.
Invariants after quiescence:
* nothing is lost or stuck: every job is done;
* at-least-once jobs made their call at least once;
* at-most-once targets were called at most once; a target recorded ``done`` was called exactly
  once; a target not called is never ``done``; every ``unknown`` target has an open alert.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest
import sqlalchemy as sa

from tests.support import procs
from wecom_plugin.extensions import db
from wecom_plugin.models import Alert, Job, JobStep
from wecom_plugin.runtime.queue import enqueue

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
WORKER_ENV = {"JOB_LEASE_SECONDS": "2", "WORKER_POLL_INTERVAL": "0.05", "WORKER_BATCH_SIZE": "4"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_SECONDS) + 600)]


def test_workers_under_random_kills_and_pauses_lose_nothing_and_never_repeat_an_at_most_once_send(
    app, db_url, recorder
):
    rng = random.Random(int(os.environ.get("SOAK_SEED", "2026")))
    stop = threading.Event()
    enqueued = {"record": [], "once": []}

    def feed() -> None:
        with app.app_context():
            n = 0
            while not stop.is_set():
                n += 1
                enqueued["record"].append(
                    enqueue("test.record", {"url": recorder.url, "key": f"r{n}", "pause_before": {"seconds": 0.05}})
                )
                targets = [f"o{n}-{t}" for t in range(3)]
                # A pause after the middle call widens the window in which a kill leaves it unknown.
                pause = {"target": targets[1], "seconds": 0.2, "attempts": [1]}
                enqueued["once"].append(
                    enqueue("test.fanout_once", {"url": recorder.url, "targets": targets, "pause_after_call": pause})
                )
                db.session.commit()
                time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    workers = [procs.start(db_url, "worker", **WORKER_ENV) for _ in range(3)]
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))
            victim = rng.randrange(len(workers))
            if rng.random() < 0.7:
                workers[victim].send_signal(signal.SIGKILL)
                workers[victim].communicate()
            else:
                workers[victim].send_signal(signal.SIGSTOP)
                time.sleep(rng.uniform(2.5, 4.0))  # past the lease
                workers[victim].send_signal(signal.SIGCONT)
                workers[victim].send_signal(signal.SIGTERM)
                workers[victim].communicate(timeout=60)
            workers[victim] = procs.start(db_url, "worker", **WORKER_ENV)
    finally:
        stop.set()
        feeder.join()

    def drained() -> bool:
        with app.app_context():
            return not db.session.scalar(
                sa.select(sa.func.count()).select_from(Job).where(Job.state.in_(("ready", "running")))
            )

    procs.wait_for(drained, 300, interval=1, what="the queue to drain")
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)

    counts = recorder.counts()
    with app.app_context():
        states = dict(db.session.execute(sa.select(Job.id, Job.state)).all())
        steps = {
            (job_id, target): state
            for job_id, target, state in db.session.execute(sa.select(JobStep.job_id, JobStep.target, JobStep.state))
        }
        alert_keys = set(db.session.scalars(sa.select(Alert.key).where(Alert.state == "open")))
        once_payloads = dict(
            db.session.execute(sa.select(Job.id, Job.payload).where(Job.id.in_(enqueued["once"]))).all()
        )

    assert {states[j] for j in enqueued["record"] + enqueued["once"]} == {"done"}
    for n in range(1, len(enqueued["record"]) + 1):
        assert counts[f"r{n}"] >= 1
    unknown = 0
    for job_id, payload in once_payloads.items():
        for target in payload["targets"]:
            state = steps.get((job_id, target))
            assert counts[target] <= 1, f"{target} sent {counts[target]} times"
            if state == "done":
                assert counts[target] == 1
            if counts[target] == 0:
                assert state != "done"
            if state == "unknown":
                unknown += 1
                assert f"job.step_unknown:test.fanout_once:{job_id}" in alert_keys
    print(
        f"soak: {len(enqueued['record'])} at-least-once and {len(once_payloads)} at-most-once jobs, {unknown} unknown"
    )
