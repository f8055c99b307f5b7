"""The claim primitive: leases, fencing and the lease boundary, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models import Job
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.runtime import claim
from wecom_plugin.runtime.queue import enqueue

JOB = Job.__table__


def _claim(engine, owner="w1", limit=10, lease=60.0):
    with engine.begin() as conn:
        return claim.claim_batch(conn, JOB, owner=owner, limit=limit, lease_seconds=lease)


def _set_lease_expiry(engine, job_id, delta):
    with engine.begin() as conn:
        conn.execute(sa.update(JOB).where(JOB.c.id == job_id).values(lease_expires_at=db_now(conn) + delta))


def test_a_claim_takes_due_rows_oldest_first_and_bumps_fence_and_attempts(app):
    with app.app_context():
        ids = [enqueue("noop") for _ in range(3)]
        db.session.commit()
        first = _claim(db.engine, limit=2)
        assert [c.id for c in first] == ids[:2]
        assert {(c.fence, c.attempts) for c in first} == {(1, 1)}
        assert [c.id for c in _claim(db.engine, owner="w2")] == ids[2:]
        assert _claim(db.engine, owner="w3") == []


def test_a_lease_is_reclaimable_only_after_it_expires(app):
    with app.app_context():
        job_id = enqueue("noop")
        db.session.commit()
        [held] = _claim(db.engine)
        _set_lease_expiry(db.engine, job_id, timedelta(seconds=5))
        assert _claim(db.engine, owner="w2") == []
        _set_lease_expiry(db.engine, job_id, -timedelta(milliseconds=5))
        [taken] = _claim(db.engine, owner="w2")
        assert taken.fence == held.fence + 1


def test_the_old_holder_can_neither_renew_nor_finish_after_a_takeover(app):
    with app.app_context():
        job_id = enqueue("noop")
        db.session.commit()
        [old] = _claim(db.engine)
        _set_lease_expiry(db.engine, job_id, -timedelta(seconds=1))
        [new] = _claim(db.engine, owner="w2")
        with db.engine.begin() as conn:
            assert not claim.renew(conn, JOB, job_id, old.fence, 60)
            assert not claim.finish(conn, JOB, job_id, old.fence, state="done")
            assert claim.renew(conn, JOB, job_id, new.fence, 60)
            assert claim.finish(conn, JOB, job_id, new.fence, state="done")


def test_an_expired_lease_is_not_revived_by_its_holder_even_if_nobody_took_it(app):
    with app.app_context():
        job_id = enqueue("noop")
        db.session.commit()
        [held] = _claim(db.engine)
        _set_lease_expiry(db.engine, job_id, -timedelta(milliseconds=1))
        with db.engine.begin() as conn:
            assert not claim.renew(conn, JOB, job_id, held.fence, 60)
            assert claim.renew_all(conn, JOB, [(job_id, held.fence)], 60) == set()


def test_renew_all_renews_only_the_leases_still_held(app):
    """The batch renewal: a valid lease is extended, an expired one and a stale fence are not."""
    with app.app_context():
        ids = [enqueue("noop") for _ in range(3)]
        db.session.commit()
        held = {c.id: c for c in _claim(db.engine)}
        _set_lease_expiry(db.engine, ids[1], -timedelta(milliseconds=1))
        with db.engine.begin() as conn:
            pairs = [(ids[0], held[ids[0]].fence), (ids[1], held[ids[1]].fence), (ids[2], held[ids[2]].fence + 1)]
            assert claim.renew_all(conn, JOB, pairs, 60) == {ids[0]}


def test_the_database_clock_decides_what_is_due(app):
    with app.app_context():
        job_id = enqueue("noop", run_after=timedelta(seconds=30))
        db.session.commit()
        assert _claim(db.engine) == []
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(due_at=db_now(db.session)))
        db.session.commit()
        assert [c.id for c in _claim(db.engine)] == [job_id]
