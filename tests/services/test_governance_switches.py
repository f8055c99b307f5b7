"""Governance switches: observe by default, modes and the kill switch changed only with an audit row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models import AuditEvent
from wecom_plugin.services import governance_switches as switches


@pytest.fixture
def gov_app(make_app, db_url):
    return make_app(DATABASE_URL=db_url)


def _audit(app) -> list[tuple[str, str, dict]]:
    with app.app_context():
        rows = db.session.execute(sa.select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        return [(r.action, r.outcome, r.detail) for r in rows if r.action.startswith("governance.")]


def test_a_new_install_observes_and_changes_nothing(gov_app):
    with gov_app.app_context():
        state = switches.effective(db.session, "observe")
    assert (state.mode, state.mode_source, state.kill_switch, state.may_change_chats) == (
        "observe", "setting", False, False,
    )  # fmt: skip


def test_only_enforce_without_the_kill_switch_may_change_chats_and_every_change_is_audited(gov_app):
    with gov_app.app_context():
        assert switches.set_mode(db.session, "cli:ops", "ENFORCE", "observe", reason="试运行结束").may_change_chats
        db.session.commit()
        thrown = switches.set_kill_switch(db.session, "cli:ops", True, "observe", reason="误删排查")
        db.session.commit()
        assert thrown.mode == "enforce" and thrown.mode_source == "operator" and not thrown.may_change_chats
        switches.set_kill_switch(db.session, "cli:ops", True, "observe")  # again: a no-op, still audited
        db.session.commit()
        assert switches.effective(db.session, "dry_run").mode == "enforce"  # the operator's choice wins
    assert _audit(gov_app) == [
        ("governance.mode", "success", {"before": "observe", "after": "enforce"}),
        ("governance.kill_switch", "success", {"before": False, "after": True}),
        ("governance.kill_switch", "noop", {"before": True, "after": True}),
    ]


def test_an_unknown_mode_is_refused_and_nothing_is_stored(gov_app):
    with gov_app.app_context():
        with pytest.raises(switches.GovernanceError, match="mode must be one of observe, dry_run, enforce"):
            switches.set_mode(db.session, "cli:ops", "remove-all", "observe")
        db.session.rollback()
        assert switches.effective(db.session, "observe").mode_source == "setting"
    assert _audit(gov_app) == []
