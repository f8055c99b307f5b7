"""The directory's background work: the reconciliation schedule, the sync job, PIPL minimisation."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import sync_code_schedules
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import Job, Schedule
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.directory import Person
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services.directory_sync import run_sync


def _schedules(app) -> dict[str, Schedule]:
    with app.app_context():
        sync_code_schedules(db.session, app.extensions["wecom_settings"])
        db.session.commit()
        rows = db.session.scalars(sa.select(Schedule).where(Schedule.origin == "code")).all()
        db.session.expunge_all()
        return {s.key: s for s in rows}


def test_reconciliation_is_scheduled_hourly_by_default_and_configurable(make_app):
    hourly = _schedules(make_app())
    assert hourly["directory.reconcile"].job_name == "directory.sync"
    assert hourly["directory.reconcile"].spec == {"kind": "interval", "seconds": 3600}
    assert _schedules(make_app(DIRECTORY_SYNC_MINUTES="15"))["directory.reconcile"].spec["seconds"] == 900
    off = _schedules(make_app(DIRECTORY_SYNC_MINUTES="0"))
    assert "directory.reconcile" not in off or not off["directory.reconcile"].enabled
    assert "directory.minimise" in off


def test_the_sync_job_runs_in_the_worker_and_a_second_one_waits_its_turn(tenant_app, mirror, emulator):
    with tenant_app.app_context():
        enqueue("directory.sync", {"trigger": "schedule"})
        db.session.commit()
    Worker(tenant_app).run_once()
    assert len(mirror.people()) == len(emulator.data.users)
    with tenant_app.app_context():
        [job] = db.session.scalars(sa.select(Job).where(Job.name == "directory.sync")).all()
        assert job.state == "done" and job.result["state"] == "completed", job.last_error
        # A sync still running in another process makes the next job step aside.
        db.session.execute(sa.text("UPDATE directory_sync SET state = 'running'"))
        enqueue("directory.sync", {"trigger": "schedule"})
        db.session.commit()
    Worker(tenant_app).run_once()
    with tenant_app.app_context():
        second = db.session.scalars(sa.select(Job).where(Job.name == "directory.sync").order_by(Job.id)).all()[-1]
        assert second.result["skipped"].startswith("directory sync #1 (started ")
        assert second.result["skipped"].endswith(") is still running")


def test_departed_members_are_minimised_after_the_retention_period(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    leaver, stayer = emulator.users()[20].userid, emulator.users()[21].userid
    emulator.admin("directory/depart", userid=leaver)
    run_sync(tenant_app)
    person_id = mirror.person(leaver).id
    with tenant_app.app_context():
        # Backdate the departure past DIRECTORY_DEPARTED_RETENTION_DAYS (180 by default).
        db.session.execute(
            sa.update(Person).where(Person.id == person_id).values(departed_at=utcnow() - timedelta(days=181))
        )
        enqueue("directory.minimise")
        db.session.commit()
    Worker(tenant_app).run_once()
    minimised = {p.id: p for p in mirror.people().values()}[person_id]
    assert minimised.name == "" and minimised.userid == f"~departed-{person_id}" and minimised.minimised_at
    assert minimised.departed_at is not None and minimised.status == 5  # ids and dates stay
    history = [c for c in mirror.changes() if c.person_id == person_id]
    assert [c.kind for c in history] == ["hired", "departed", "minimised"]
    assert leaver not in str([c.detail for c in history])
    assert all(leaver not in str(o.detail) for o in mirror.outbox())
    assert mirror.person(stayer).name  # others untouched
