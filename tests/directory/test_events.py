"""change_contact handlers: re-read, never trust the event, and the departure rules."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models import Job
from wecom_plugin.models.ops import Alert
from wecom_plugin.services.directory_sync import run_sync


def _jobs(app, name: str) -> list[Job]:
    with app.app_context():
        rows = db.session.scalars(sa.select(Job).where(Job.name == name)).all()
        db.session.expunge_all()
        return rows


def _member(emulator, n: int) -> str:
    return [u for u in emulator.users() if u.departments and u.departments[0] != 1][n].userid


@pytest.mark.parametrize("pre_2022", [False, True], ids=["ids-only", "full-payload"])
def test_both_callback_forms_reach_the_same_state(live, mirror, emulator, tenant_app, pre_2022):
    emulator.flags(contact_callback_pre_2022=pre_2022)
    run_sync(tenant_app)
    userid = _member(emulator, 8)
    emulator.admin("directory/update", userid=userid, position="区域经理", name="改名后")
    live.settle()
    person = mirror.person(userid)
    assert (person.position, person.name) == ("区域经理", "改名后")
    [change] = [c for c in mirror.changes() if c.source == "callback"]
    assert change.detail["changes"]["position"][1] == "区域经理"


def test_one_60111_on_a_re_read_is_not_a_departure_but_asks_for_a_reconciliation(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    userid = _member(emulator, 9)
    # The member is renamed and the rename's own callback is lost; a late update for the old id arrives.
    emulator.admin("callbacks/faults", action="drop", change_type="update_user")
    emulator.admin("directory/rename", userid=userid, new_userid="silently.renamed")
    emulator.admin("callbacks/faults", method="DELETE")
    emulator.admin(
        "callbacks/raw",
        receiver="contact_sync",
        xml=(
            f"<xml><ToUserName><![CDATA[{emulator.corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
            "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            "<Event><![CDATA[change_contact]]></Event><ChangeType>update_user</ChangeType>"
            f"<UserID><![CDATA[{userid}]]></UserID></xml>"
        ),
    )
    live.settle()
    assert mirror.person(userid).status == 1  # not departed on one 60111
    assert mirror.outbox() == []
    [job] = _jobs(tenant_app, "directory.sync")
    assert job.payload["trigger"] == "callback" and job.state == "ready"  # due in a couple of minutes
    # The reconciliation it asked for recognises the rename.
    before = mirror.person(userid).id
    assert run_sync(tenant_app).stats["renamed"] == 1
    assert mirror.person("silently.renamed").id == before and mirror.person(userid) is None


def test_a_member_outside_the_visibility_raises_a_scope_alert_not_a_departure(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    userid = _member(emulator, 10)
    emulator.admin("faults", action="errcode", endpoint="user/get", errcode=60011)
    emulator.admin("directory/depart", userid=userid)
    live.settle()
    assert mirror.person(userid).status == 1
    with tenant_app.app_context():
        keys = list(db.session.scalars(sa.select(Alert.key)))
    assert keys == ["directory.scope"]


def test_department_and_tag_events_re_read_and_apply(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    parent = sorted(emulator.data.departments)[2]
    created = emulator.admin("directory/department", name="新设部门", parentid=parent)
    live.settle()
    assert mirror.departments()[created["id"]].name == "新设部门"
    tag = sorted(emulator.data.tags)[0]
    userid = _member(emulator, 11)
    emulator.admin("directory/tag", tagid=tag, add_users=[userid])
    live.settle()
    assert (tag, mirror.person(userid).id) in mirror.tag_members()
    emulator.admin("directory/department/delete", id=created["id"])
    live.settle()
    assert mirror.departments()[created["id"]].deleted_at is not None


def test_a_department_rename_that_sends_no_callback_is_healed_by_reconciliation(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    dep = sorted(emulator.data.departments)[5]
    emulator.admin("directory/department/update", id=dep, name="更名后的部门")  # post-2022: no callback for a rename
    live.settle()
    assert mirror.departments()[dep].name != "更名后的部门"
    run_sync(tenant_app, trigger="schedule")
    assert mirror.departments()[dep].name == "更名后的部门"


def test_a_rename_overtaken_by_an_update_for_the_new_id_keeps_one_person(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    userid = _member(emulator, 12)
    person_id = mirror.person(userid).id
    # The rename's callback is late: the update of the renamed member overtakes it.
    emulator.admin("callbacks/faults", action="delay", change_type="update_user", seconds=1)
    emulator.admin("directory/rename", userid=userid, new_userid="Overtaken.Rename")
    emulator.admin("callbacks/faults", method="DELETE")
    emulator.admin("directory/update", userid="Overtaken.Rename", position="调整后")
    live.settle()
    person = mirror.person("Overtaken.Rename")
    assert person.id == person_id and person.position == "调整后"
    assert mirror.person(userid) is None
    kinds = [c.kind for c in mirror.changes() if c.person_id == person_id]
    assert kinds[-3:] == ["merged", "renamed", "updated"] and "departed" not in kinds


def test_a_tag_event_before_the_hire_is_filled_in_by_the_next_sync(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    emulator.admin("callbacks/faults", action="drop", change_type="create_user")
    dep = sorted(emulator.data.departments)[3]
    emulator.admin("directory/hire", userid="TagFirst01", name="新人", department=[dep])
    tag = sorted(emulator.data.tags)[0]
    emulator.admin("directory/tag", tagid=tag, add_users=["TagFirst01"])
    live.settle()  # update_tag handled while the member is unknown to the mirror
    assert mirror.person("TagFirst01") is None
    run_sync(tenant_app, trigger="schedule")
    assert (tag, mirror.person("TagFirst01").id) in mirror.tag_members()


def test_a_rename_onto_a_departed_members_reused_id_keeps_both_people_apart(live, mirror, emulator, tenant_app):
    run_sync(tenant_app)
    gone, renamed = _member(emulator, 13), _member(emulator, 14)
    emulator.admin("directory/depart", userid=gone)
    live.settle()
    gone_id, renamed_id = mirror.person(gone).id, mirror.person(renamed).id
    emulator.admin("directory/rename", userid=renamed, new_userid=gone)  # WeCom lets the id be reused
    live.settle()
    assert mirror.person(gone).id == renamed_id and mirror.person(gone).status == 1
    departed = {p.id: p for p in mirror.people().values()}[gone_id]
    assert departed.status == 5 and departed.userid == gone  # moved aside, not overwritten
    run_sync(tenant_app, trigger="schedule")
    assert mirror.person(gone).id == renamed_id and mirror.person(gone).status == 1
    assert [(o.kind, o.person_id) for o in mirror.outbox()] == [("departed", gone_id), ("renamed", renamed_id)]
