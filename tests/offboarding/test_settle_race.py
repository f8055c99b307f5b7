"""Two settles of one offboarding at once (a status read, the settle job, the sweep) finish it once:
one audit row, one set of manual actions."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.groups.check_support import people, set_mode
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import Offboarding
from wecom_plugin.models.ops import AuditEvent
from wecom_plugin.services import offboarding as service

from . import support
from .support import chat, drain

tenant_app = support.tenant_app  # the fixture


def test_concurrent_settles_finish_the_offboarding_once(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    with tenant_app.app_context():
        off_id = service.start_offboarding(
            db.session, userid=leaver, source="cli", requested_by="user:test"
        ).offboarding_id
        db.session.commit()
    drain(tenant_app)
    with tenant_app.app_context():  # back to the moment before anyone settled it
        db.session.execute(
            sa.update(Offboarding).where(Offboarding.id == off_id).values(state="running", finished_at=None)
        )
        db.session.execute(sa.delete(AuditEvent).where(AuditEvent.action.like("offboarding.done")))
        db.session.commit()
        engine = db.engine
    first_settled = threading.Event()
    results: dict[str, str] = {}

    def first() -> None:
        with Session(engine) as session:
            results["first"] = service.settle(session, off_id)
            first_settled.set()
            threading.Event().wait(0.5)  # the second settle reads and tries to write meanwhile
            session.commit()

    def second() -> None:
        first_settled.wait(10)
        with Session(engine) as session:
            results["second"] = service.settle(session, off_id)
            session.commit()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    with tenant_app.app_context():
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert results == {"first": "done", "second": "done"}
    with tenant_app.app_context():
        done = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "offboarding.done")).all()
        assert len(done) == 1
