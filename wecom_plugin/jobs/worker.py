"""The worker: claims jobs in batches and runs them.

Any number of workers (processes or threads) can run against one database; the claim primitive
(:mod:`wecom_plugin.runtime.claim`) hands each job to one of them at a time.

* A lease keeper thread renews the leases of every job this worker holds (its heartbeat) and
  records the process heartbeat. A worker that is paused past its leases (SIGSTOP, a long GC,
  a VM freeze) finds them lost when it resumes and makes no further external call for them.
* SIGTERM (or :meth:`Worker.stop`) lets the running job finish; jobs claimed but not started
  are handed back at once.
* :func:`run_threads` runs several workers as threads of one process (``WORKER_THREADS``):
  jobs mostly wait on WeCom, so threads give the parallelism.
* An idle worker sleeps until the next ready job is due, at most ``WORKER_POLL_INTERVAL``.
* Failures follow :mod:`wecom_plugin.errors`: rate limits reschedule without spending an attempt,
  permanent errors and exhausted budgets go ``dead`` with an alert, the rest retry with backoff.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask import Flask

from wecom_plugin.context import request_id_scope
from wecom_plugin.domain.retry import backoff_delay
from wecom_plugin.errors import (
    ConfigurationError,
    LeaseLostError,
    PermanentError,
    RateLimitedError,
    describe_error,
)
from wecom_plugin.extensions import db
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import sql_now
from wecom_plugin.models.jobs import Job
from wecom_plugin.runtime import claim, heartbeat, registry
from wecom_plugin.runtime.registry import AT_MOST_ONCE

log = logging.getLogger("wecom_plugin.worker")

JOB = Job.__table__
_JOB_COLUMNS = (JOB.c.name, JOB.c.payload, JOB.c.delivery, JOB.c.max_attempts)


def process_id(kind: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{kind}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims and runs jobs. Use :meth:`run` for a loop, :meth:`run_once` in tests."""

    def __init__(
        self,
        app: Flask,
        *,
        owner: str | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        lease_seconds: float | None = None,
        names: Iterable[str] | None = None,
    ):
        settings = app.extensions["wecom_settings"]
        self.app = app
        self.owner = owner or process_id("worker")
        self.batch_size = batch_size or settings.worker_batch_size
        self.poll_interval = poll_interval if poll_interval is not None else settings.worker_poll_interval
        self.lease_seconds = lease_seconds or settings.job_lease_seconds
        self._names = list(names) if names is not None else None
        self._stop = threading.Event()
        self._held: dict[int, int] = {}  # job id -> fence
        self._held_lock = threading.Lock()
        # The job being run now: (id, name, monotonic deadline); past it the lease is let go.
        self._running: tuple[int, str, float] | None = None
        self._last_reclaim = float("-inf")
        self.jobs_done = 0
        with app.app_context():
            self.engine = db.engine

    # --- loop --------------------------------------------------------------------------------
    def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Loop until stopped (or ``max_jobs`` run, or idle with ``exit_when_idle``)."""
        keeper = threading.Thread(target=self._keep_leases, name="lease-keeper", daemon=True)
        keeper.start()
        log.info("worker %s started (batch %s, lease %ss)", self.owner, self.batch_size, self.lease_seconds)
        try:
            while not self._stop.is_set():
                try:
                    ran = self.run_once()
                except sa.exc.SQLAlchemyError as exc:
                    # The database is briefly unavailable (locked, restarting): leases protect the
                    # jobs; wait and try again rather than dying.
                    log.warning("worker %s: database error, retrying: %s", self.owner, describe_error(exc)[:300])
                    ran = 0
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
                if not ran:
                    if exit_when_idle:
                        break
                    self._stop.wait(self._idle_seconds())
        finally:
            self._stop.set()
            keeper.join(timeout=5)
            with self.app.app_context():
                self._beat("stopped")
            log.info("worker %s stopped after %s jobs", self.owner, self.jobs_done)
        return self.jobs_done

    def stop(self) -> None:
        """Finish the running job, hand back the others, then return from :meth:`run`."""
        self._stop.set()

    def run_once(self) -> int:
        """Claim one batch and run it. Returns how many jobs were claimed."""
        names = self._names if self._names is not None else registry.known_names()
        with self.engine.begin() as conn:
            batch = claim.claim_batch(
                conn,
                JOB,
                owner=self.owner,
                limit=self.batch_size,
                lease_seconds=self.lease_seconds,
                # Only jobs this code knows: during a deploy, old workers leave new job types alone.
                where=JOB.c.name.in_(names),
                returning=_JOB_COLUMNS,
                reclaim_expired=self._reclaim_due(),
            )
            batch += self._top_up(conn, batch)
        with self._held_lock:
            self._held.update({c.id: c.fence for c in batch})
        try:
            rest = self._run_batch_handlers(batch)
            for index, claimed in enumerate(rest):
                if self._stop.is_set():
                    self._hand_back(rest[index:])
                    break
                try:
                    self._run(claimed)
                finally:
                    with self._held_lock:
                        self._held.pop(claimed.id, None)
        finally:
            # A database error escaping (a job's final write, a hand-back) must not leave the rest held:
            # the lease keeper would renew them forever. Let their leases lapse for another worker.
            with self._held_lock:
                for claimed in batch:
                    self._held.pop(claimed.id, None)
        return len(batch)

    def _top_up(self, conn: sa.Connection, batch: list[claim.Claimed]) -> list[claim.Claimed]:
        """A full claim holding jobs of a type with a batch handler means more of them are waiting: claim
        up to the type's ``batch_size`` of them now (in the same transaction), so one batch carries their
        fixed costs (a few transactions) instead of several. Other types keep the worker's share."""
        if len(batch) < self.batch_size:
            return []
        counts: dict[str, int] = {}
        for claimed in batch:
            counts[claimed.row.name] = counts.get(claimed.row.name, 0) + 1
        extra: list[claim.Claimed] = []
        for name, have in counts.items():
            job_type = registry.get(name)
            if job_type.batch_handler is None or job_type.batch_size <= have:
                continue
            extra += claim.claim_batch(
                conn, JOB, owner=self.owner, limit=job_type.batch_size - have, lease_seconds=self.lease_seconds,
                where=JOB.c.name == name, returning=_JOB_COLUMNS, reclaim_expired=False,
            )  # fmt: skip
        return extra

    def _run_batch_handlers(self, batch: list[claim.Claimed]) -> list[claim.Claimed]:
        """Give the jobs of each type that has a batch handler to it, together; returns the jobs left for
        their per-job handler (those it did not finish, or all of a type whose batch handler failed)."""
        from wecom_plugin.jobs.context import JobContext

        by_type: dict[str, list[claim.Claimed]] = {}
        for claimed in batch:
            # A job past its attempts goes the per-job way (dead, its steps abandoned).
            if claimed.attempts <= claimed.row.max_attempts and registry.get(claimed.row.name).batch_handler:
                by_type.setdefault(claimed.row.name, []).append(claimed)
        if not by_type or self._stop.is_set():
            return batch
        finished: dict[int, bool] = {}
        for name, items in by_type.items():
            contexts = [
                JobContext(self.app, self.engine, _JobView(c.id, name, c.row.payload, c.row.delivery), c.fence,
                           c.attempts, self.lease_seconds)
                for c in items
            ]  # fmt: skip
            with self.app.app_context(), request_id_scope(f"jobs-{items[0].id}-{items[-1].id}"):
                try:
                    done = registry.get(name).batch_handler(contexts)
                except Exception as exc:  # noqa: BLE001 - the per-job handler takes over every job
                    log.warning("batch of %s %s jobs failed; running them one by one: %s", len(items), name,
                                describe_error(exc)[:300])  # fmt: skip
                    done = {}
                finally:
                    db.session.remove()
            ids = {c.id for c in items}
            finished.update({job_id: ok for job_id, ok in done.items() if job_id in ids})
        for job_id, ok in finished.items():
            if ok:
                self.jobs_done += 1
            else:
                log.warning("job %s finished in a batch but its lease was lost; not recorded", job_id)
            with self._held_lock:
                self._held.pop(job_id, None)
        return [c for c in batch if c.id not in finished]

    def _idle_seconds(self) -> float:
        """How long an idle worker sleeps: until the next ready job is due, at most the poll
        interval. A job queued a fraction of a second ahead (the offboarding coalescing window)
        then runs when it is due, not up to a whole poll later. A read only; no lock taken."""
        names = self._names if self._names is not None else registry.known_names()
        try:
            with self.engine.connect() as conn:
                due, now = conn.execute(
                    sa.select(sa.func.min(JOB.c.due_at), sql_now()).where(
                        JOB.c.state == ClaimState.READY, JOB.c.name.in_(names)
                    )
                ).one()
        except sa.exc.SQLAlchemyError:
            return self.poll_interval
        if due is None or now is None:
            return self.poll_interval
        return min(self.poll_interval, max((due - now).total_seconds(), 0.01))

    def _reclaim_due(self) -> bool:
        """Look for expired leases at most every quarter lease: they are rare, ready jobs are not."""
        now = time.monotonic()
        if now - self._last_reclaim >= self.lease_seconds / 4:
            self._last_reclaim = now
            return True
        return False

    # --- one job ----------------------------------------------------------------------------
    def _run(self, claimed: claim.Claimed) -> None:
        from wecom_plugin.jobs.context import JobContext

        row = claimed.row
        job = _JobView(claimed.id, row.name, row.payload, row.delivery)
        with self.app.app_context(), request_id_scope(f"job-{claimed.id}"):
            if claimed.attempts > row.max_attempts:
                # Claimed again after its lease expired too often: its holders keep dying.
                if job.delivery == AT_MOST_ONCE:
                    # A dead holder may have left a send half-done: make it visible, never repeat it.
                    JobContext(
                        self.app, self.engine, job, claimed.fence, claimed.attempts, self.lease_seconds
                    ).abandon_sending_steps("the job's holders kept dying")
                self._dead(claimed, job, "lease expired on every attempt (the worker died or hung)")
                return
            job_type = registry.get(job.name)
            ctx = JobContext(self.app, self.engine, job, claimed.fence, claimed.attempts, self.lease_seconds)
            self._running = (claimed.id, job.name, time.monotonic() + job_type.timeout_seconds)
            try:
                result = job_type.handler(ctx)
            except LeaseLostError as exc:
                db.session.rollback()
                log.warning("job %s (%s): %s; another worker may take it over", claimed.id, job.name, exc)
                return
            except RateLimitedError as exc:
                db.session.rollback()
                self._rate_limited(claimed, job, exc)
                return
            except (PermanentError, ConfigurationError) as exc:
                # Retrying cannot help (bad input, or a setting a person must fix): dead + alert.
                db.session.rollback()
                self._dead(claimed, job, describe_error(exc))
                return
            except Exception as exc:  # noqa: BLE001 - any failure of a handler is retried, bounded
                db.session.rollback()
                why = describe_error(exc)
                log.warning("job %s (%s) attempt %s failed: %s", claimed.id, job.name, claimed.attempts, why)
                if claimed.attempts >= row.max_attempts:
                    self._dead(claimed, job, why)
                else:
                    delay = backoff_delay(claimed.attempts, retry_after=getattr(exc, "retry_after", None))
                    self._finish(claimed, state=ClaimState.READY, due_at=sql_now(delay), last_error=why)
                return
            finally:
                self._running = None
                db.session.remove()
            if self._finish(
                claimed,
                state=ClaimState.DONE,
                finished_at=sql_now(),
                result=result if isinstance(result, dict) else None,
                last_error=None,
            ):
                self.jobs_done += 1
            else:
                log.warning("job %s (%s) finished but its lease was lost; not recorded", claimed.id, job.name)

    def _rate_limited(self, claimed: claim.Claimed, job: _JobView, exc: RateLimitedError) -> None:
        # The remote side said "later": come back when the limit lifts, attempt not spent.
        delay = max(float(exc.retry_after or 0), 1.0)
        log.info("job %s (%s) rate limited; retrying in %.0fs", claimed.id, job.name, delay)
        self._finish(
            claimed,
            state=ClaimState.READY,
            due_at=sql_now(delay),
            attempts=JOB.c.attempts - 1,
            last_error=describe_error(exc),
        )

    def _dead(self, claimed: claim.Claimed, job: _JobView, why: str) -> None:
        from wecom_plugin.services.alerts import raise_alert

        with self.engine.begin() as conn:
            if not claim.finish(
                conn,
                JOB,
                claimed.id,
                claimed.fence,
                state=ClaimState.DEAD,
                finished_at=sql_now(),
                last_error=why[:2000],
            ):
                return
            raise_alert(
                f"job.dead:{job.name}",
                severity="error",
                title_zh=f"后台任务 {job.name} 多次失败，已停止重试",
                title_en=f"Background job {job.name} failed permanently",
                detail={"job_id": claimed.id, "error": why[:500]},
                session=conn,
            )
        log.error("job %s (%s) is dead: %s", claimed.id, job.name, why)

    def _finish(self, claimed: claim.Claimed, **values: Any) -> bool:
        with self.engine.begin() as conn:
            return claim.finish(conn, JOB, claimed.id, claimed.fence, **values)

    def _hand_back(self, claimed: list[claim.Claimed]) -> None:
        for item in claimed:
            self._finish(item, state=ClaimState.READY, attempts=JOB.c.attempts - 1)
            with self._held_lock:
                self._held.pop(item.id, None)

    # --- heartbeat ----------------------------------------------------------------------------
    def _keep_leases(self) -> None:
        interval = max(min(self.lease_seconds / 3, 5.0), 0.2)
        with self.app.app_context():
            self._beat()
            while not self._stop.wait(interval):
                with self._held_lock:
                    held = list(self._held.items())
                held = self._drop_overrun(held)
                try:
                    with self.engine.begin() as conn:
                        lost = {job_id for job_id, _fence in held} - claim.renew_all(
                            conn, JOB, held, self.lease_seconds
                        )
                except sa.exc.SQLAlchemyError as exc:
                    # The database is briefly unreachable: leases may lapse, and the fenced
                    # writes make sure that is safe. Keep trying.
                    log.warning("worker %s lease renewal failed: %s", self.owner, exc.__class__.__name__)
                    continue
                with self._held_lock:
                    # a job that finished while we renewed is not lost, only done
                    lost = [job_id for job_id in lost if job_id in self._held]
                for job_id in lost:
                    log.warning("worker %s lost the lease of job %s", self.owner, job_id)
                self._beat()

    def _beat(self, state: str = "running") -> None:
        """Record the process heartbeat; a failure is logged, never fatal."""
        try:
            heartbeat.beat(self.engine, self.owner, "worker", jobs_done=self.jobs_done, state=state)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("worker %s heartbeat failed: %s", self.owner, exc.__class__.__name__)

    def _drop_overrun(self, held: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Stop renewing a job that ran past its type's timeout: it is hung, let another worker
        take it over (the hung handler can then make no further call), and tell a person."""
        running = self._running
        if running is None or time.monotonic() <= running[2]:
            return held
        job_id, name, _ = running
        if job_id not in dict(held):
            return held
        from wecom_plugin.services.alerts import raise_alert

        log.error("job %s (%s) exceeded its timeout; releasing its lease", job_id, name)
        try:
            with self.engine.begin() as conn:
                raise_alert(
                    f"job.overran:{name}",
                    severity="error",
                    title_zh=f"后台任务 {name} 运行超时，已交由其他进程接管",
                    title_en=f"Background job {name} ran past its timeout; released for another worker",
                    detail={"job_id": job_id},
                    session=conn,
                )
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not record the overrun alert: %s", exc.__class__.__name__)
        self._running = None
        with self._held_lock:
            self._held.pop(job_id, None)
        return [(i, f) for i, f in held if i != job_id]


def run_threads(
    app: Flask,
    threads: int,
    *,
    batch_size: int | None = None,
    max_jobs: int | None = None,
    exit_when_idle: bool = False,
    install_signals: bool = True,
) -> int:
    """Run ``threads`` workers in this process until SIGTERM; returns the jobs they ran.

    Jobs mostly wait on WeCom (50-300 ms a call), so threads, not processes, give the
    parallelism: 50 chats of one offboarding are updated by several threads at once instead of
    one after another. Each thread is a :class:`Worker` with its own owner id and claims its own
    share of the batch size (at least 1), so one thread does not take every due job while the
    others sleep. ``max_jobs`` counts per thread."""
    settings = app.extensions["wecom_settings"]
    size = batch_size or settings.worker_batch_size
    per_thread = max(1, size // max(threads, 1))
    workers = [Worker(app, batch_size=per_thread) for _ in range(max(threads, 1))]
    if install_signals:

        def _handler(signum, _frame):
            log.info("worker process got signal %s: finishing the running jobs", signum)
            for w in workers:
                w.stop()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    if len(workers) == 1:
        return workers[0].run(max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    pool = [
        threading.Thread(
            target=w.run, kwargs={"max_jobs": max_jobs, "exit_when_idle": exit_when_idle}, name=f"worker-{i}"
        )
        for i, w in enumerate(workers)
    ]
    for thread in pool:
        thread.start()
    # join with a timeout so the main thread stays responsive to signals
    while any(t.is_alive() for t in pool):
        for thread in pool:
            thread.join(timeout=0.5)
    return sum(w.jobs_done for w in workers)


class _JobView:
    __slots__ = ("id", "name", "payload", "delivery")

    def __init__(self, id: int, name: str, payload: Any, delivery: str):  # noqa: A002
        self.id, self.name, self.payload, self.delivery = id, name, payload, delivery
