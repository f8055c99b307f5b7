"""Small helpers the runtime tests share."""

from __future__ import annotations

from wecom_plugin.extensions import db
from wecom_plugin.models import Job
from wecom_plugin.runtime.queue import enqueue


def enqueue_committed(app, name, payload=None, **kwargs) -> int:
    """Enqueue a job in its own committed transaction; returns its id."""
    with app.app_context():
        job_id = enqueue(name, payload or {}, **kwargs)
        db.session.commit()
        return job_id


def load_job(app, job_id) -> Job:
    """The job row as it is now, detached from the session."""
    with app.app_context():
        job = db.session.get(Job, job_id)
        db.session.expunge(job)
        return job
