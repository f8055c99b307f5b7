"""The shared fixed-window rate limiter (database-backed)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.threads import run_threads
from wecom_plugin.extensions import db
from wecom_plugin.models import RateCounter
from wecom_plugin.services import rate_limit

# 15.5 s into a one-minute window.
WINDOW = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
NOW = WINDOW + timedelta(seconds=15.5)


def test_a_window_allows_exactly_the_limit(app):
    with app.app_context():
        decisions = [rate_limit.hit(db.engine, "client:1", limit=3, now=NOW) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.count for d in decisions] == [1, 2, 3, 4, 5]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert {d.retry_after for d in decisions} == {45}  # ceil(60 - 15.5)


def test_the_next_window_and_other_buckets_start_fresh(app):
    with app.app_context():
        for _ in range(3):
            rate_limit.hit(db.engine, "client:1", limit=2, now=NOW)
        assert not rate_limit.hit(db.engine, "client:1", limit=2, now=WINDOW + timedelta(seconds=59.9)).allowed
        assert rate_limit.hit(db.engine, "client:2", limit=2, now=NOW).count == 1
        later = rate_limit.hit(db.engine, "client:1", limit=2, now=WINDOW + timedelta(seconds=60))
        assert (later.allowed, later.count, later.retry_after) == (True, 1, 60)
        rows = db.session.execute(sa.select(RateCounter.bucket, RateCounter.window_start, RateCounter.count)).all()
    start = int(WINDOW.timestamp())
    assert sorted(rows) == [("client:1", start, 4), ("client:1", start + 60, 1), ("client:2", start, 1)]


def test_the_count_is_committed_even_when_the_callers_transaction_rolls_back(app):
    with app.app_context():
        # The caller has a (read) transaction of its own; on SQLite it must not hold the write
        # lock while hitting the limiter, hence DEFERRED (the decorator commits first instead).
        db.session.connection(execution_options={"sqlite_begin": "DEFERRED"})
        db.session.execute(sa.select(1))
        rate_limit.hit(db.engine, "client:1", limit=5, now=NOW)
        db.session.rollback()  # the caller's transaction fails...
        assert db.session.scalar(sa.select(RateCounter.count)) == 1  # ...the hit stays counted


def test_it_uses_the_database_clock_by_default(app):
    with app.app_context():
        decision = rate_limit.hit(db.engine, "client:1", limit=1)
        window_start = db.session.scalar(sa.select(RateCounter.window_start))
    now = datetime.now(UTC).timestamp()
    assert window_start % 60 == 0
    assert window_start <= now < window_start + 61
    assert 1 <= decision.retry_after <= 60


def test_concurrent_hits_are_counted_atomically(app):
    """Eight threads on their own connections: every hit gets a distinct count, none is lost."""
    counts: list[int] = []
    lock = threading.Lock()

    def worker():
        with app.app_context():
            for _ in range(10):
                decision = rate_limit.hit(db.engine, "client:1", limit=1000, now=NOW)
                with lock:
                    counts.append(decision.count)

    errors = run_threads(worker, 8, timeout=60)
    assert errors == []
    assert sorted(counts) == list(range(1, 81))


def test_a_limit_below_one_is_a_programming_error(sqlite_app):
    with sqlite_app.app_context(), pytest.raises(ValueError, match="at least 1"):
        rate_limit.hit(db.engine, "client:1", limit=0, now=NOW)
