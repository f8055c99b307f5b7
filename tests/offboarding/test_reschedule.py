"""A later HR request naming another date moves a scheduled offboarding; the job for the old date
does nothing, the one for the new date removes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tests.groups.check_support import chat_members, people, run_worker, set_mode, updates
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import Offboarding
from wecom_plugin.models.jobs import Job
from wecom_plugin.models.ops import AuditEvent

from . import support
from .support import chat, drain, key

tenant_app = support.tenant_app  # the fixture


def _post(http, headers, body, idem):
    return http.post("/api/v1/offboardings", data=json.dumps(body), headers={**headers, "Idempotency-Key": idem})


def _run_jobs(app) -> list[Job]:
    with app.app_context():
        jobs = list(db.session.scalars(sa.select(Job).where(Job.name == "offboarding.run").order_by(Job.id)))
        db.session.expunge_all()
        return jobs


def _due_now(app, job_id: int) -> None:
    past = datetime(2000, 1, 1, tzinfo=UTC)
    with app.app_context():
        db.session.execute(sa.update(Job).where(Job.id == job_id).values(due_at=past))
        db.session.commit()


def test_a_later_request_with_another_date_moves_the_scheduled_offboarding(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    gid, chatid = chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    first_date = datetime.now(UTC) + timedelta(days=1)
    second_date = datetime.now(UTC) + timedelta(days=3)
    made = _post(http, headers, {"userid": leaver, "effective_at": first_date.isoformat()}, "d-1").get_json()
    moved = _post(http, headers, {"userid": leaver, "effective_at": second_date.isoformat()}, "d-2")
    assert moved.status_code == 200 and moved.get_json()["id"] == made["id"]
    with tenant_app.app_context():
        off = db.session.get(Offboarding, made["id"])
        assert off.state == "scheduled" and abs(off.effective_at - second_date) < timedelta(seconds=1)
        assert db.session.scalar(
            sa.select(sa.func.count()).select_from(AuditEvent).where(AuditEvent.action == "offboarding.rescheduled")
        ) == 1  # fmt: skip
    old_job, new_job = _run_jobs(tenant_app)
    # The old date comes: nothing happens (the offboarding now waits for the new one).
    _due_now(tenant_app, old_job.id)
    run_worker(tenant_app)  # (drain would wait for the job of the new date)
    assert updates(emulator) == [] and leaver.casefold() in chat_members(emulator, chatid)
    assert support.status(tenant_app, made["id"])["state"] == "scheduled"
    # The new date comes.
    with tenant_app.app_context():
        db.session.execute(
            sa.update(Offboarding)
            .where(Offboarding.id == made["id"])
            .values(effective_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
        db.session.commit()
    _due_now(tenant_app, new_job.id)
    drain(tenant_app)
    assert leaver.casefold() not in chat_members(emulator, chatid)
    assert [u["body"]["del_user_list"] for u in updates(emulator)] == [[leaver]]


def test_the_same_date_again_changes_nothing(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    when = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    _post(http, headers, {"userid": leaver, "effective_at": when}, "s-1")
    _post(http, headers, {"userid": leaver, "effective_at": when}, "s-2")
    assert len(_run_jobs(tenant_app)) == 1


def test_cancelling_a_moved_offboarding_cancels_the_runs_of_both_dates(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    made = _post(
        http, headers, {"userid": leaver, "effective_at": (datetime.now(UTC) + timedelta(days=1)).isoformat()}, "c-1"
    )
    _post(http, headers, {"userid": leaver, "effective_at": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, "c-2")
    gone = http.delete(f"/api/v1/offboardings/{made.get_json()['id']}", headers=headers)
    assert gone.status_code == 200 and gone.get_json()["state"] == "cancelled"
    assert [j.state for j in _run_jobs(tenant_app)] == ["cancelled", "cancelled"]
