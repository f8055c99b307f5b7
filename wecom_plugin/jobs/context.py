"""What a job handler sees: its payload, its lease, and per-target steps.

A handler that makes external calls must call :meth:`JobContext.ensure_lease` right before each
one (or do the call inside :meth:`JobContext.run_step`, which does it): a holder that lost its
lease then makes no further call.

Fan-out jobs run each target through :meth:`JobContext.run_step`, which records progress per
target, so a job that dies at target 20 of 50 continues from 21 when it is run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa
from flask import Flask

from wecom_plugin.errors import LeaseLostError, PermanentError, PluginError, describe_error
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.jobs import Job, JobStep
from wecom_plugin.runtime import claim
from wecom_plugin.runtime.registry import AT_MOST_ONCE

log = logging.getLogger("wecom_plugin.jobs")

JOB = Job.__table__
STEP = JobStep.__table__


class OpenTransactionError(RuntimeError):
    """A handler called ensure_lease()/run_step() while its db.session transaction was open (a bug)."""


class StepOutcome(Enum):
    DONE = "done"  # ran now and succeeded
    ALREADY_DONE = "already_done"  # a previous run finished it
    FAILED = "failed"  # permanent error for this target; recorded, not retried
    UNKNOWN = "unknown"  # at-most-once side effect may or may not have happened; alerted


@dataclass
class StepResult:
    outcome: StepOutcome
    value: Any = None


class JobContext:
    """Handed to every job handler as its only argument."""

    def __init__(self, app: Flask, engine: sa.Engine, job: sa.Row, fence: int, attempt: int, lease_seconds: float):
        self.app = app
        self.settings = app.extensions["wecom_settings"]
        self._engine = engine
        self.job_id: int = job.id
        self.name: str = job.name
        self.payload: dict[str, Any] = dict(job.payload or {})
        self.delivery: str = job.delivery
        self.fence = fence
        self.attempt = attempt
        self.lease_seconds = lease_seconds

    # --- lease ------------------------------------------------------------------------------
    def ensure_lease(self) -> None:
        """Renew the lease, or raise :class:`LeaseLostError` if another holder may have it.

        Raises :class:`OpenTransactionError` if the handler still has a ``db.session`` transaction
        open: end it first (commit or roll back). Holding a transaction across an external call
        keeps locks for the call's duration, and on SQLite it would lock out the lease renewal.
        """
        self._require_no_open_transaction()
        with self._engine.begin() as conn:
            if not claim.renew(conn, JOB, self.job_id, self.fence, self.lease_seconds):
                raise LeaseLostError(f"job {self.job_id} lease lost (fence {self.fence})")

    # --- steps ------------------------------------------------------------------------------
    def run_step(self, target: str, action: Callable[[], Any]) -> StepResult:
        """Run ``action`` for ``target`` once, recording the outcome.

        At-least-once jobs: a target already ``done`` is skipped; otherwise the lease is checked
        and ``action`` runs (again, after a crash).

        At-most-once jobs: ``sending`` is committed together with the lease check before
        ``action`` runs. A target a previous holder left in ``sending`` becomes ``unknown`` with
        an alert and is skipped. If ``action`` raises an error that proves nothing was applied
        (a :class:`PluginError` without ``side_effect_possible``), the mark is removed and the
        error propagates, so the job retries the target; any other failure ends ``unknown``.
        """
        target = str(target)[:255]
        self._require_no_open_transaction()
        if self.delivery == AT_MOST_ONCE:
            return self._at_most_once(target, action)
        return self._at_least_once(target, action)

    def _require_no_open_transaction(self) -> None:
        from wecom_plugin.extensions import db

        if db.session().in_transaction():
            raise OpenTransactionError(
                f"job {self.name}: commit or roll back db.session before ensure_lease()/run_step() "
                "(no transaction may stay open across an external call)"
            )

    def step_states(self) -> dict[str, str]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(STEP.c.target, STEP.c.state).where(STEP.c.job_id == self.job_id))
            return {target: state for target, state in rows}

    def _at_least_once(self, target: str, action: Callable[[], Any]) -> StepResult:
        with self._engine.begin() as conn:
            state = self._step_state(conn, target)
            if state == "done":
                return StepResult(StepOutcome.ALREADY_DONE)
            if state == "failed":
                return StepResult(StepOutcome.FAILED)
            if not claim.renew(conn, JOB, self.job_id, self.fence, self.lease_seconds):
                raise LeaseLostError(f"job {self.job_id} lease lost before target {target}")
        try:
            value = action()
        except PluginError as exc:
            if isinstance(exc, PermanentError):
                self._write_step(target, "failed", {"error": describe_error(exc, 1000)})
                return StepResult(StepOutcome.FAILED)
            raise
        self._write_step(target, "done", _detail(value))
        return StepResult(StepOutcome.DONE, value)

    def _at_most_once(self, target: str, action: Callable[[], Any]) -> StepResult:
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(STEP.c.state, STEP.c.fence).where(STEP.c.job_id == self.job_id, STEP.c.target == target)
            ).first()
            if row is not None:
                if row.state == "done":
                    return StepResult(StepOutcome.ALREADY_DONE)
                if row.state == "failed":
                    return StepResult(StepOutcome.FAILED)
                if row.state == "unknown":
                    return StepResult(StepOutcome.UNKNOWN)
                # 'sending' left by an earlier holder: it may have sent. Never repeat it.
                if not claim.renew(conn, JOB, self.job_id, self.fence, self.lease_seconds):
                    raise LeaseLostError(f"job {self.job_id} lease lost before target {target}")
                self._mark_unknown(conn, target, row.fence, "holder lost its lease while sending")
                return StepResult(StepOutcome.UNKNOWN)
            # Check the lease and mark 'sending' in one transaction: if this commits, we hold the
            # job and nobody else will touch this target.
            if not claim.renew(conn, JOB, self.job_id, self.fence, self.lease_seconds):
                raise LeaseLostError(f"job {self.job_id} lease lost before target {target}")
            conn.execute(
                sa.insert(STEP).values(
                    job_id=self.job_id, target=target, state="sending", fence=self.fence, updated_at=utcnow()
                )
            )
        try:
            value = action()
        except BaseException as exc:
            if isinstance(exc, PluginError) and not exc.side_effect_possible:
                if isinstance(exc, PermanentError):
                    self._update_own_step(target, "failed", {"error": describe_error(exc, 1000)})
                    return StepResult(StepOutcome.FAILED)
                # Nothing was applied: forget the mark so a retry may try this target again.
                with self._engine.begin() as conn:
                    conn.execute(
                        # Only our own mark: a takeover may have turned it ``unknown`` meanwhile
                        # (we were paused past our lease), and that record must stay.
                        sa.delete(STEP).where(
                            STEP.c.job_id == self.job_id,
                            STEP.c.target == target,
                            STEP.c.fence == self.fence,
                            STEP.c.state == "sending",
                        )
                    )
                raise
            with self._engine.begin() as conn:
                self._mark_unknown(conn, target, self.fence, describe_error(exc, 1000))
            if isinstance(exc, PluginError):
                return StepResult(StepOutcome.UNKNOWN)
            raise
        self._update_own_step(target, "done", _detail(value))
        return StepResult(StepOutcome.DONE, value)

    def abandon_sending_steps(self, why: str) -> int:
        """Mark every step left ``sending`` by an earlier holder ``unknown`` (with the alert)."""
        with self._engine.begin() as conn:
            rows = conn.execute(
                sa.select(STEP.c.target, STEP.c.fence).where(STEP.c.job_id == self.job_id, STEP.c.state == "sending")
            ).all()
            for target, fence in rows:
                self._mark_unknown(conn, target, fence, why)
        return len(rows)

    def _step_state(self, conn: sa.Connection, target: str) -> str | None:
        return conn.execute(
            sa.select(STEP.c.state).where(STEP.c.job_id == self.job_id, STEP.c.target == target)
        ).scalar_one_or_none()

    def _write_step(self, target: str, state: str, detail: dict[str, Any] | None) -> None:
        with self._engine.begin() as conn:
            updated = conn.execute(
                sa.update(STEP)
                .where(STEP.c.job_id == self.job_id, STEP.c.target == target)
                .values(state=state, fence=self.fence, detail=detail, updated_at=utcnow())
            ).rowcount
            if not updated:
                conn.execute(
                    sa.insert(STEP).values(
                        job_id=self.job_id,
                        target=target,
                        state=state,
                        fence=self.fence,
                        detail=detail,
                        updated_at=utcnow(),
                    )
                )

    def _update_own_step(self, target: str, state: str, detail: dict[str, Any] | None) -> None:
        # Recorded even if the lease was lost meanwhile: the side effect did happen (or failed),
        # and the step row is ours by its fence.
        with self._engine.begin() as conn:
            conn.execute(
                sa.update(STEP)
                .where(
                    STEP.c.job_id == self.job_id,
                    STEP.c.target == target,
                    STEP.c.fence == self.fence,
                    STEP.c.state == "sending",
                )
                .values(state=state, detail=detail, updated_at=utcnow())
            )

    def _mark_unknown(self, conn: sa.Connection, target: str, fence: int, why: str) -> None:
        from wecom_plugin.services.alerts import raise_alert

        changed = conn.execute(
            sa.update(STEP)
            .where(
                STEP.c.job_id == self.job_id,
                STEP.c.target == target,
                STEP.c.fence == fence,
                STEP.c.state == "sending",
            )
            .values(state="unknown", detail={"why": why[:500]}, updated_at=utcnow())
        ).rowcount
        if changed:
            log.error("job %s (%s) target %s ended unknown: %s", self.job_id, self.name, target, why)
            raise_alert(
                f"job.step_unknown:{self.name}:{self.job_id}",
                severity="error",
                title_zh=f"任务 {self.name} #{self.job_id} 的发送结果未知，已停止自动重发，请人工核实",
                title_en=f"Job {self.name} #{self.job_id}: a send's outcome is unknown; not retried, please check",
                detail={"job_id": self.job_id, "target": target, "why": why[:500]},
                session=conn,
            )


def mark_sending_in(conn: sa.Connection, marks: list[tuple[JobContext, str]]) -> None:
    """Mark each (job, target) ``sending`` in the caller's transaction, one statement for all. That
    transaction must also have renewed the jobs' leases (:func:`~wecom_plugin.runtime.claim.renew_all`):
    the two committed together are :meth:`JobContext.run_step`'s promise that nobody else will make these
    calls. A step that already exists fails the insert (the caller rolls back)."""
    now = utcnow()
    rows = [
        {"job_id": ctx.job_id, "target": str(target)[:255], "state": "sending", "fence": ctx.fence, "updated_at": now}
        for ctx, target in marks
    ]
    conn.execute(sa.insert(STEP), rows)


def close_steps_in(
    conn: sa.Connection, closes: list[tuple[JobContext, str, StepOutcome | None, dict[str, Any] | None]]
) -> None:
    """Record how steps marked by :func:`mark_sending_in` ended: DONE or FAILED (one statement for all),
    UNKNOWN (one each, with its alert), or None, which forgets the mark: the call proved nothing was
    applied and the target may be tried again. Only each holder's own mark is touched (a takeover's
    ``unknown`` stays)."""
    now = utcnow()
    own = sa.and_(
        STEP.c.job_id == sa.bindparam("_job"), STEP.c.target == sa.bindparam("_target"),
        STEP.c.fence == sa.bindparam("_fence"), STEP.c.state == "sending",
    )  # fmt: skip
    updates, forgets = [], []
    for ctx, target, outcome, detail in closes:
        key = {"_job": ctx.job_id, "_target": str(target)[:255], "_fence": ctx.fence}
        if outcome == StepOutcome.UNKNOWN:
            ctx._mark_unknown(conn, key["_target"], ctx.fence, str((detail or {}).get("why", "")))
        elif outcome is None:
            forgets.append(key)
        else:
            updates.append({**key, "_state": outcome.value, "_detail": detail, "_now": now})
    if updates:
        conn.execute(
            sa.update(STEP)
            .where(own)
            .values(state=sa.bindparam("_state"), detail=sa.bindparam("_detail"), updated_at=sa.bindparam("_now")),
            updates,
        )
    if forgets:
        conn.execute(sa.delete(STEP).where(own), forgets)


def finish_all_in(conn: sa.Connection, done: list[tuple[JobContext, dict[str, Any] | None]]) -> dict[int, bool]:
    """Mark jobs done in the caller's transaction, each fenced: {job id: False if its lease was lost}."""
    from wecom_plugin.models.claims import ClaimState
    from wecom_plugin.models.dbtime import sql_now

    if not done:
        return {}
    done = sorted(done, key=lambda item: item[0].job_id)  # id order, as renew_all locks (no deadlock)
    conn.execute(
        sa.update(JOB)
        .where(
            JOB.c.id == sa.bindparam("_id"), JOB.c.fence == sa.bindparam("_fence"), JOB.c.state == ClaimState.RUNNING
        )
        .values(
            state=ClaimState.DONE,
            finished_at=sql_now(),
            result=sa.bindparam("_result"),
            last_error=None,
            lease_owner=None,
            lease_expires_at=None,
        ),  # fmt: skip
        [{"_id": ctx.job_id, "_fence": ctx.fence, "_result": result} for ctx, result in done],
    )
    # Which of them are now done by this holder (a takeover would have moved the fence on).
    rows = conn.execute(
        sa.select(JOB.c.id).where(
            sa.tuple_(JOB.c.id, JOB.c.fence).in_([(ctx.job_id, ctx.fence) for ctx, _r in done]),
            JOB.c.state == ClaimState.DONE,
        )
    )
    mine = set(rows.scalars())
    return {ctx.job_id: ctx.job_id in mine for ctx, _r in done}


def _detail(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None
