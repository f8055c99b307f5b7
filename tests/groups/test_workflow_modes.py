"""Observe and dry-run change nothing in WeCom: no chat is created until enforce (the job waits
without spending attempts). The welcome and the general office's notice are sent at most once."""

from __future__ import annotations

import pytest

from tests.groups.registry_helpers import group, request, rows, setup_app
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import governance_switches as switches
from wecom_plugin.services import group_registry as registry
from wecom_plugin.services import group_workflow as workflow


@pytest.fixture
def gov(make_app, db_url, emulator):
    return setup_app(make_app, db_url, emulator)


def _approve(app, group_id: int) -> None:
    with app.app_context():
        registry.decide(db.session, group_id, approve=True, actor_userid="weikaian", reason="同意")
        db.session.commit()


@pytest.mark.parametrize("mode", ["observe", "dry_run"])
def test_no_chat_is_created_outside_enforce_mode(gov, emulator, mode):
    group_id = request(gov)
    _approve(gov, group_id)
    with gov.app_context():
        switches.set_mode(db.session, "user:fanwenjia", mode, "enforce")
        db.session.commit()
    Worker(gov).run_once()
    [job] = rows(gov, Job, Job.name == "groups.create_chat")
    assert job.state == ClaimState.READY and job.attempts == 0 and "enforce" in job.last_error
    assert emulator.requests(endpoint="appchat/create") == []
    assert group(gov, group_id).status == "approved"


def test_the_welcome_and_the_office_notice_are_sent_at_most_once(gov, emulator):
    group_id = request(gov)
    _approve(gov, group_id)
    with gov.app_context():
        first = workflow.create_chat(gov, group_id)
        again = workflow.create_chat(gov, group_id)  # at-least-once: run again after a crash
    assert first["welcome"] is True and again["welcome"] == "already sent"
    assert again["general_office"] == "already told"
    assert len(emulator.requests(endpoint="appchat/send")) == 1
    assert len(emulator.requests(endpoint="message/send")) == 1
