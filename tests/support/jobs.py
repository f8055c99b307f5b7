"""Job types used by the runtime tests (loaded through WECOM_PLUGIN_JOB_MODULES).

Each makes its "external call" over real HTTP to the test recorder, after checking its lease
exactly as production handlers must. Pauses are driven by the payload, so a test can kill or
stop a worker at a precise point.
"""

from __future__ import annotations

import os
import time

import requests

from wecom_plugin.errors import RateLimitedError
from wecom_plugin.runtime.registry import AT_LEAST_ONCE, AT_MOST_ONCE, PeriodicDefinition, job_type, periodic_provider


def _post(url: str, key: str, **extra) -> dict:
    response = requests.post(url, json={"key": key, "pid": os.getpid(), **extra}, timeout=5)
    response.raise_for_status()
    return response.json()


def _pause(payload: dict, name: str, attempt: int) -> None:
    spec = payload.get(name)
    if spec and attempt in spec.get("attempts", [1]):
        time.sleep(spec["seconds"])


@job_type("test.record", delivery=AT_LEAST_ONCE)
def record(ctx) -> dict:
    """One external call, after an optional pause (at-least-once)."""
    _pause(ctx.payload, "pause_before", ctx.attempt)
    ctx.ensure_lease()
    _post(ctx.payload["url"], ctx.payload["key"], job_id=ctx.job_id, attempt=ctx.attempt)
    return {"pid": os.getpid()}


@job_type("test.fanout", delivery=AT_LEAST_ONCE)
def fanout(ctx) -> dict:
    """One call per target, each a step; pauses after each call (at-least-once)."""
    for target in ctx.payload["targets"]:
        ctx.run_step(target, lambda t=target: _post(ctx.payload["url"], t, job_id=ctx.job_id))
        time.sleep(ctx.payload.get("pause_after_each", 0))
    return {"pid": os.getpid()}


@job_type("test.fanout_once", delivery=AT_MOST_ONCE)
def fanout_once(ctx) -> dict:
    """One call per target (at-most-once); optionally pauses after the call to ``pause_target``."""
    pause = ctx.payload.get("pause_after_call")

    def send(target: str) -> dict:
        result = _post(ctx.payload["url"], target, job_id=ctx.job_id, attempt=ctx.attempt)
        if pause and pause["target"] == target and ctx.attempt in pause.get("attempts", [1]):
            time.sleep(pause["seconds"])
        return result

    outcomes = {t: ctx.run_step(t, lambda t=t: send(t)).outcome.value for t in ctx.payload["targets"]}
    return {"pid": os.getpid(), "outcomes": outcomes}


@job_type("test.rate_limited", delivery=AT_LEAST_ONCE, max_attempts=1)
def rate_limited(ctx) -> dict:
    """Rate limited for the first ``limited_calls`` calls; one attempt only, so a limit that
    spent attempts would kill it."""
    ctx.ensure_lease()
    count = _post(ctx.payload["url"], ctx.payload["key"])["count"]
    if count <= ctx.payload["limited_calls"]:
        raise RateLimitedError("api freq out of limit", retry_after=ctx.payload["retry_after"])
    return {"calls": count}


@job_type("test.fail", delivery=AT_LEAST_ONCE, max_attempts=2)
def fail(ctx) -> dict:
    """Always fails with an unexpected error."""
    raise RuntimeError("boom")


@periodic_provider
def test_definitions(settings) -> list[PeriodicDefinition]:
    return [
        PeriodicDefinition(
            key="test.code.every_minute",
            job_name="noop",
            spec={"kind": "interval", "seconds": 60},
            misfire_grace_seconds=7200,
            coalesce=False,
        )
    ]


@job_type("test.hang", delivery=AT_LEAST_ONCE, timeout_seconds=1)
def hang(ctx) -> dict:
    """Hangs (sleeps) past its one-second timeout on the first attempt."""
    if ctx.attempt == 1:
        time.sleep(ctx.payload.get("seconds", 5))
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@job_type("test.leaves_transaction_open", delivery=AT_LEAST_ONCE, max_attempts=1)
def leaves_transaction_open(ctx) -> dict:
    """Reads through db.session and then calls ensure_lease without ending the transaction (a bug)."""
    import sqlalchemy as sa

    from wecom_plugin.extensions import db

    db.session.execute(sa.text("SELECT 1"))
    ctx.ensure_lease()
    return {}


CONCURRENCY = {"now": 0, "max": 0}
_CONCURRENCY_LOCK = __import__("threading").Lock()


@job_type("test.concurrent", delivery=AT_LEAST_ONCE)
def concurrent(ctx) -> dict:
    """Waits ``seconds`` like a WeCom call would, counting how many run at once in this process."""
    with _CONCURRENCY_LOCK:
        CONCURRENCY["now"] += 1
        CONCURRENCY["max"] = max(CONCURRENCY["max"], CONCURRENCY["now"])
    try:
        time.sleep(ctx.payload.get("seconds", 0.2))
    finally:
        with _CONCURRENCY_LOCK:
            CONCURRENCY["now"] -= 1
    return {}
