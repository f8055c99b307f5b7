"""The mass-change brake and broken answers: nothing changes, one alert, a person decides."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.cli import cli
from wecom_plugin.extensions import db
from wecom_plugin.models.ops import Alert, AuditEvent
from wecom_plugin.services.directory_sync import run_sync


def _alerts(app) -> list[Alert]:
    with app.app_context():
        rows = db.session.scalars(sa.select(Alert).where(Alert.key.like("directory.%"))).all()
        db.session.expunge_all()
        return rows


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "empty_directory", "endpoint": "*"},
        {"action": "empty_directory", "endpoint": "user/list"},
        {"action": "truncated_directory", "endpoint": "user/list"},
        {"action": "truncated_directory", "endpoint": "*"},
        {"action": "errcode", "endpoint": "*", "errcode": 60020},
        {"action": "errcode", "endpoint": "user/list", "errcode": 48009},
        {"action": "errcode", "endpoint": "department/list", "errcode": 60011},
    ],
    ids=["empty", "empty-members", "truncated-members", "truncated-all", "60020", "48009", "60011"],
)
def test_a_broken_answer_changes_nothing_and_raises_one_alert(tenant_app, mirror, emulator, fault):
    run_sync(tenant_app)
    before, history = mirror.snapshot(), len(mirror.changes())
    emulator.admin("faults", **fault)
    for _ in range(2):  # a second sync with the same problem does not add a second alert
        report = run_sync(tenant_app, trigger="schedule")
        assert report.state in ("failed", "braked"), report
    assert mirror.snapshot() == before
    assert len(mirror.changes()) == history
    assert mirror.outbox() == []
    alerts = _alerts(tenant_app)
    assert len(alerts) == 1, [a.key for a in alerts]
    if "errcode" in fault:
        assert str(fault["errcode"]) in alerts[0].detail["fix"]  # names what to change in the console


def test_a_real_mass_departure_waits_for_confirmation_then_applies(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    leavers = [u.userid for u in emulator.users()[10:25]]  # 15 > max(10, 5 % of 60)
    for userid in leavers:
        emulator.admin("directory/depart", userid=userid)
    report = run_sync(tenant_app)
    assert report.state == "braked" and len(report.planned_departures) == 15
    assert all(mirror.person(u).status != 5 for u in leavers)
    [alert] = _alerts(tenant_app)
    assert alert.key == "directory.brake" and alert.severity == "critical"
    # A scheduled sync in the meantime stays braked and changes nothing.
    assert run_sync(tenant_app, trigger="schedule").state == "braked"

    runner = tenant_app.test_cli_runner()
    result = runner.invoke(cli, ["directory", "confirm", "--by", "王主任", "--reason", "门店关闭"])
    assert result.exit_code == 0, result.output
    assert all(mirror.person(u).status == 5 for u in leavers)
    assert len([o for o in mirror.outbox() if o.kind == "departed"]) == 15
    with tenant_app.app_context():
        [audit] = db.session.scalars(sa.select(AuditEvent).where(AuditEvent.action == "directory.brake.confirm")).all()
        assert audit.actor == "user:王主任" and audit.reason == "门店关闭"
    assert [a.state for a in _alerts(tenant_app)] == ["acked"]


def test_confirm_without_a_braked_sync_is_a_clear_error(tenant_app):
    result = tenant_app.test_cli_runner().invoke(cli, ["directory", "confirm", "--by", "someone"])
    assert result.exit_code == 1
    assert "no sync is waiting for confirmation" in result.output
    assert "Traceback" not in result.output


def test_departures_under_the_threshold_apply_and_are_confirmed_by_60111(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    leavers = [u.userid for u in emulator.users()[30:33]]
    emulator.admin("callbacks/faults", action="drop")
    for userid in leavers:
        emulator.admin("directory/depart", userid=userid)
    report = run_sync(tenant_app)
    assert report.state == "completed" and report.stats["departed"] == 3
    for userid in leavers:
        person = mirror.person(userid)
        assert person.status == 5 and person.departed_at is not None
    got = emulator.requests(endpoint="user/get")
    assert sorted(r["query"]["userid"] for r in got) == sorted(leavers)


def test_a_member_outside_the_visibility_is_a_scope_alert_not_a_departure(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    member = emulator.users()[40].userid
    emulator.admin("faults", action="errcode", endpoint="user/list", errcode=60011)
    report = run_sync(tenant_app)
    assert report.state == "failed"
    assert mirror.person(member).status == 1
    [alert] = _alerts(tenant_app)
    assert "可见范围" in alert.detail["fix"]


def test_the_app_secret_in_place_of_the_contact_sync_secret_is_diagnosed(
    make_app, db_url, emulator, mirror, tenant_app
):
    run_sync(tenant_app)
    app = make_app(
        DATABASE_URL=tenant_app.extensions["wecom_settings"].database_url,
        WECOM_API_BASE_URL=emulator.url,
        WECOM_CORP_ID=emulator.corp_id,
        WECOM_AGENT_ID=str(emulator.OUR),
        WECOM_SECRET=emulator.secret(),
        WECOM_CONTACT_SECRET=emulator.secret(),  # the wrong one: user/list_id answers 48002
    )
    emulator.admin("directory/depart", userid=emulator.users()[12].userid)
    assert run_sync(app).state == "completed"
    [alert] = _alerts(app)
    assert alert.key == "directory.setup.48002" and "WECOM_CONTACT_SECRET" in alert.detail["fix"]


def test_a_dry_run_over_the_brake_leaves_nothing_to_confirm(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    for userid in [u.userid for u in emulator.users()[10:25]]:
        emulator.admin("directory/depart", userid=userid)
    report = run_sync(tenant_app, dry_run=True)
    assert report.state == "dry_run" and report.stats["planned_departures"] == 15
    result = tenant_app.test_cli_runner().invoke(cli, ["directory", "confirm", "--by", "x", "--no-sync"])
    assert result.exit_code == 1 and "no sync is waiting" in result.output
    assert _alerts(tenant_app) == []


def test_a_truncated_tag_list_deletes_no_tag(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    live = {i for i, t in mirror.tags().items() if t.deleted_at is None}
    members = mirror.tag_members()
    emulator.admin("faults", action="truncated_directory", endpoint="tag/list", keep=1)
    run_sync(tenant_app, trigger="schedule")
    assert {i for i, t in mirror.tags().items() if t.deleted_at is None} == live
    assert mirror.tag_members() == members


def test_a_deleted_tag_is_deleted_once_tag_get_confirms_it(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    tagid = sorted(emulator.data.tags)[-1]
    with emulator.tenant.lock:  # the sandbox has no admin route for deleting a tag
        del emulator.data.tags[tagid]
    run_sync(tenant_app, trigger="schedule")
    assert mirror.tags()[tagid].deleted_at is not None
    assert not [m for m in mirror.tag_members() if m[0] == tagid]


def test_mass_disablement_counts_towards_the_brake(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    disabled = [u.userid for u in emulator.users()[10:22]]
    for userid in disabled:
        emulator.admin("directory/disable", userid=userid)
    report = run_sync(tenant_app)
    assert report.state == "braked" and len(report.planned_departures) == 12
    assert all(mirror.person(u).status == 1 for u in disabled)  # not written while braked
    assert mirror.outbox() == []


def test_a_confirmation_is_applied_by_the_next_sync_whoever_starts_it(tenant_app, mirror, emulator):
    run_sync(tenant_app)
    leavers = [u.userid for u in emulator.users()[10:25]]
    for userid in leavers:
        emulator.admin("directory/depart", userid=userid)
    assert run_sync(tenant_app).state == "braked"
    result = tenant_app.test_cli_runner().invoke(cli, ["directory", "confirm", "--by", "王主任", "--no-sync"])
    assert result.exit_code == 0, result.output
    assert run_sync(tenant_app, trigger="schedule").state == "completed"  # not the job the confirm enqueued
    assert all(mirror.person(u).status == 5 for u in leavers)
    with tenant_app.app_context():
        states = list(db.session.scalars(sa.text("SELECT state FROM directory_sync ORDER BY id")))
    assert states == ["completed", "applied", "completed"]
