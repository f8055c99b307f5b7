"""The group registry (备案): validation, versioning, approval rights, exemptions, YAML round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

from tests.groups.registry_helpers import count, fresh_sqlite_url, group, request, rows, setup_app, today
from wecom_plugin.extensions import db
from wecom_plugin.models import AuditEvent
from wecom_plugin.models.groups import GovernedGroup, GroupExemption, GroupVersion
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import group_registry as registry


@pytest.fixture
def gov(make_app, db_url, emulator):
    return setup_app(make_app, db_url, emulator)


def test_a_bad_request_lists_every_problem_and_stores_nothing(gov):
    with pytest.raises(registry.RegistryError) as info:
        request(
            gov,
            name="群" * 51,
            owner="nobody_here",
            admins=["houran"],  # disabled
            rule_doc={"required": {"departments": [999]}, "bogus": 1},
            quiet_windows=["22:00-07:00", "06:30-08:00"],
            confidentiality="secret",
            review_date=(today(gov) - timedelta(days=1)).isoformat(),
        )
    paths = {p.path for p in info.value.problems}
    assert {"name", "owner", "admins[0]", "bogus", "quiet_windows[1]", "confidentiality", "review_date"} <= {
        p.removeprefix("rule.") for p in paths
    }
    assert "/" in str(info.value)  # Chinese / English
    assert count(gov, GovernedGroup) == 0 and count(gov, GroupVersion) == 0


def test_a_rule_naming_an_unknown_department_is_refused_with_the_rule_path(gov):
    with pytest.raises(registry.RegistryError) as info:
        request(gov, rule_doc={"required": {"departments": [999]}})
    assert [p.path for p in info.value.problems] == ["rule.required.departments[0]"]


def test_a_request_picks_the_department_leader_and_keeps_the_eligible_list(gov):
    group_id = request(gov, rule_doc={"required": {"departments": [8], "positions": ["宇航员"]}})
    g = group(gov, group_id)
    assert (g.status, g.approver, g.version, g.owner, g.admins) == ("requested", "weikaian", 1, "weikaian", ["leiting"])
    [v1] = rows(gov, GroupVersion, GroupVersion.group_id == group_id)
    assert v1.action == "requested" and v1.before == {} and v1.after["eligible_approvers"] == ["weikaian"]
    assert v1.after["warnings"][0]["path"] == "rule.required.positions[0]"  # nobody holds it: a warning


def test_configured_approvers_serve_a_department_without_a_leader(make_app, db_url, emulator):
    app = setup_app(make_app, db_url, emulator, GROUP_APPROVERS="renying")
    group_id = request(app, department_id=1)  # the root department has no leader
    assert group(app, group_id).approver == "renying"
    bare = setup_app(make_app, db_url, emulator)
    with pytest.raises(registry.RegistryError, match="no approver"):
        request(bare, department_id=1)


def test_every_change_is_versioned_with_before_and_after_of_the_changed_fields(gov):
    group_id = request(gov)
    with gov.app_context():
        changes = {"purpose": "开发与测试协作", "name": "开发组工作群", "admins": ["leiting", "shitonglu"]}
        g = registry.update_group(db.session, group_id, changes, actor="user:fanwenjia", reason="加管理员")
        assert g.version == 2
        same = registry.update_group(db.session, group_id, {"purpose": "开发与测试协作"}, actor="user:fanwenjia")
        assert same.version == 2  # nothing changed: no version
        db.session.commit()
    v2 = rows(gov, GroupVersion, GroupVersion.group_id == group_id, GroupVersion.version == 2)[0]
    assert v2.actor == "user:fanwenjia" and v2.action == "updated" and v2.reason == "加管理员"
    assert v2.before == {"purpose": "开发组日常协作", "admins": ["leiting"]}
    assert v2.after == {"purpose": "开发与测试协作", "admins": ["leiting", "shitonglu"]}
    audited = rows(gov, AuditEvent, AuditEvent.action == "groups.updated")
    assert len(audited) == 1 and audited[0].target == f"group:{group_id}"


def test_a_stale_version_is_refused_and_changes_nothing(gov):
    group_id = request(gov)
    with gov.app_context():
        registry.update_group(db.session, group_id, {"purpose": "新用途"}, actor="user:a", expected_version=1)
        db.session.commit()
        with pytest.raises(registry.RegistryError, match="changed meanwhile"):
            registry.update_group(db.session, group_id, {"purpose": "另一个"}, actor="user:b", expected_version=1)
        db.session.rollback()
    assert group(gov, group_id).purpose == "新用途" and group(gov, group_id).version == 2


def test_an_owner_rehome_goes_through_the_single_writer(gov):
    group_id = request(gov)
    with gov.app_context():
        g = registry.update_group(
            db.session, group_id, {"owner": "ShiTongLu"}, actor="system:member-check", action="owner_rehomed"
        )
        db.session.commit()
        assert g.owner == "shitonglu"  # spelled as the directory spells it
    [v] = rows(gov, GroupVersion, GroupVersion.group_id == group_id, GroupVersion.action == "owner_rehomed")
    assert v.before == {"owner": "weikaian"} and v.after == {"owner": "shitonglu"}
    with gov.app_context(), pytest.raises(registry.RegistryError, match="not an active member"):
        registry.update_group(db.session, group_id, {"owner": "houran"}, actor="system:member-check")


def test_only_an_approver_may_decide_and_a_refusal_is_audited(gov):
    group_id = request(gov)
    with gov.app_context():
        with pytest.raises(registry.RegistryError) as info:
            registry.decide(db.session, group_id, approve=True, actor_userid="leiting")
        assert info.value.keep_audit
        db.session.commit()
    assert group(gov, group_id).status == "requested"
    [denied] = rows(gov, AuditEvent, AuditEvent.action == "groups.decide")
    assert (denied.outcome, denied.actor, denied.target) == ("denied", "user:leiting", f"group:{group_id}")
    with gov.app_context():
        with pytest.raises(registry.RegistryError, match="reason"):
            registry.decide(db.session, group_id, approve=False, actor_userid="weikaian")
        db.session.rollback()
        g = registry.decide(db.session, group_id, approve=True, actor_userid="WeiKaiAn", reason="同意")
        db.session.commit()
        assert (g.status, g.decided_by, g.version) == ("approved", "weikaian", 2)
    [job] = rows(gov, Job, Job.name == "groups.create_chat")
    assert job.payload["group_id"] == group_id and job.payload["chatid"].startswith(f"gov{group_id}")
    assert job.dedupe_key == f"groups.create_chat:{group_id}"
    with gov.app_context(), pytest.raises(registry.RegistryError, match="not awaiting"):
        registry.decide(db.session, group_id, approve=True, actor_userid="weikaian")


def test_exemptions_need_a_reason_a_known_person_and_a_bounded_expiry(make_app, db_url, emulator):
    app = setup_app(make_app, db_url, emulator, EXEMPTION_MAX_DAYS="30")
    group_id = request(app)
    soon = (today(app) + timedelta(days=10)).isoformat()
    late = (today(app) + timedelta(days=60)).isoformat()
    with app.app_context():
        with pytest.raises(registry.RegistryError) as info:
            registry.add_exemption(
                db.session, group_id, "nobody_here", reason=" ", expires_at=late,
                actor="user:fanwenjia",
            )  # fmt: skip
        assert {p.path for p in info.value.problems} == {"reason", "userid", "expires_at"}
        registry.add_exemption(
            db.session, group_id, "fanxia", reason="项目顾问", expires_at=soon, actor="user:fanwenjia"
        )
        db.session.commit()
        [row] = registry.list_exemptions(db.session, group_id)
        assert (row.userid, row.reason) == ("fanxia", "项目顾问")
        registry.revoke_exemption(db.session, group_id, "FANXIA", actor="user:fanwenjia")
        db.session.commit()
        assert registry.list_exemptions(db.session, group_id) == []
        with pytest.raises(registry.RegistryError):
            registry.revoke_exemption(db.session, group_id, "fanxia", actor="user:fanwenjia")
    assert count(app, GroupExemption) == 1
    assert len(rows(app, AuditEvent, AuditEvent.action.like("groups.exemption_%"))) == 2


def _populate(app) -> None:
    first = request(app)
    request(app, name="综合办公室备案群", department_id=3, requested_by="zouweibin", owner="fanwenjia", admins=[],
            rule_doc={"required": {"departments": [3]}, "permitted": {"tags": [4]}}, confidentiality="confidential",
            quiet_windows=["12:00-13:30", "22:00-07:00"], review_date=None, actor="user:zouweibin")  # fmt: skip
    until = (today(app) + timedelta(days=20)).isoformat()
    with app.app_context():
        registry.decide(db.session, first, approve=True, actor_userid="weikaian", reason="同意")
        registry.add_exemption(
            db.session, first, "fanxia", reason="项目顾问", expires_at=until,
            actor="user:fanwenjia",
        )  # fmt: skip
        db.session.commit()


def test_the_registry_round_trips_through_yaml(gov, make_app, emulator, _sqlite_template, tmp_path):
    _populate(gov)
    with gov.app_context():
        text = registry.export_yaml(db.session)
    doc = yaml.safe_load(text)
    assert [g["name"] for g in doc["groups"]] == ["开发组工作群", "综合办公室备案群"]
    assert list(doc["groups"][0]) == list(registry.EXPORT_KEYS)
    assert "开发组工作群" in text  # unicode, not escapes
    assert doc["groups"][1]["quiet_windows"] == ["12:00-13:30", "22:00-07:00"]

    other = setup_app(make_app, fresh_sqlite_url(_sqlite_template, tmp_path), emulator)
    with other.app_context():
        report = registry.import_yaml(db.session, text, actor="user:fanwenjia")
        db.session.commit()
        assert len(report.created) == 2 and report.applied
        assert registry.export_yaml(db.session) == text
        again = registry.import_yaml(db.session, text, actor="user:fanwenjia")
        assert again.created == [] and again.updated == [] and len(again.unchanged) == 2


def test_an_import_with_one_bad_entry_changes_nothing(gov):
    _populate(gov)
    with gov.app_context():
        doc = yaml.safe_load(registry.export_yaml(db.session))
    doc["groups"][0]["purpose"] = "改过的用途"
    doc["groups"][1]["owner"] = "nobody_here"
    doc["groups"][1]["quiet_windows"] = ["25:00-26:00"]
    versions = count(gov, GroupVersion)
    with gov.app_context():
        with pytest.raises(registry.RegistryError) as info:
            registry.import_yaml(db.session, yaml.safe_dump(doc, allow_unicode=True), actor="user:fanwenjia")
        db.session.rollback()
    paths = [p.path for p in info.value.problems]
    assert paths == ["groups[1]（综合办公室备案群）.owner", "groups[1]（综合办公室备案群）.quiet_windows[0]"]
    assert group(gov, 1).purpose == "开发组日常协作" and count(gov, GroupVersion) == versions

    del doc["groups"][1]
    with gov.app_context():
        dry = registry.import_yaml(db.session, yaml.safe_dump(doc, allow_unicode=True), actor="u", dry_run=True)
        db.session.rollback()
        assert dry.updated[0]["fields"] == ["purpose"] and not dry.applied
        assert db.session.get(GovernedGroup, 1).purpose == "开发组日常协作"
        registry.import_yaml(db.session, yaml.safe_dump(doc, allow_unicode=True), actor="user:fanwenjia")
        db.session.commit()
    assert group(gov, 1).purpose == "改过的用途"
    [v] = rows(gov, GroupVersion, GroupVersion.group_id == 1, GroupVersion.action == "imported")
    assert v.before == {"purpose": "开发组日常协作"}


def test_malformed_yaml_is_one_clear_error(gov):
    with gov.app_context():
        with pytest.raises(registry.RegistryError, match="YAML"):
            registry.import_yaml(db.session, "groups: [", actor="u")
        with pytest.raises(registry.RegistryError, match="groups"):
            registry.import_yaml(db.session, "42", actor="u")
