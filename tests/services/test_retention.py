from datetime import timedelta

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models import Job, Occurrence
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services.retention import prune_old_rows


def test_old_finished_jobs_and_occurrences_are_pruned_but_dead_jobs_are_kept(app):
    with app.app_context():
        now = db_now(db.session)
        old = now - timedelta(days=31)
        ids = {state: enqueue("noop") for state in ("done", "dead", "recent")}
        db.session.execute(sa.update(Job).where(Job.id == ids["done"]).values(state="done", finished_at=old))
        db.session.execute(sa.update(Job).where(Job.id == ids["dead"]).values(state="dead", finished_at=old))
        db.session.execute(sa.update(Job).where(Job.id == ids["recent"]).values(state="done", finished_at=now))
        db.session.add(Occurrence(schedule_key="s", scheduled_at=old, state="enqueued", created_at=old))
        db.session.commit()
        removed = prune_old_rows(db.session, retention_days=30)
        assert removed["job"] == 1 and removed["occurrence"] == 1
        assert set(db.session.scalars(sa.select(Job.id))) == {ids["dead"], ids["recent"]}
