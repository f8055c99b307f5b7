"""Offboarding by employee number (工号): the imported table (``offboard employees import``), the
directory field (EMPLOYEE_ID_FIELD, synced onto the mirror) and the HR API resolving through them."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from tests.groups.check_support import people, rows, set_mode
from tests.groups.check_support import sync as sync_mirror
from wecom_plugin.cli import cli
from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import MemberRecord
from wecom_plugin.extensions import db
from wecom_plugin.models.directory import Person
from wecom_plugin.models.employee_numbers import EmployeeNumber
from wecom_plugin.models.groups import Offboarding
from wecom_plugin.models.ops import AuditEvent

from . import support
from .support import chat, dels, drain, key

tenant_app = support.tenant_app  # the fixture
FIELD = "工号"


def post(app, headers, body):
    return app.test_client().post("/api/v1/offboardings", data=json.dumps(body), headers=headers)


def run(app, *args):
    result = app.test_cli_runner().invoke(cli, ["offboard", "employees", *args])
    assert "Traceback" not in result.output, result.output
    return result


def write(tmp_path, text: str, *, bom: bool = False, name: str = "hr.csv"):
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


def table(app) -> dict[str, str]:
    return {r.employee_id: r.userid for r in rows(app, EmployeeNumber)}


def audits(app) -> list[AuditEvent]:
    return rows(app, AuditEvent, AuditEvent.action == "offboarding.employee_numbers_imported")


def number_of(app, userid: str) -> str | None:
    with app.app_context():
        value = db.session.scalar(sa.select(Person.employee_id).where(Person.userid_folded == userid.casefold()))
        db.session.rollback()
    return value


def set_number(emulator, userid: str, value: str, name: str = FIELD) -> None:
    attrs = [
        {"type": 0, "name": "爱好", "text": {"value": "旅游"}},
        {"type": 0, "name": name, "text": {"value": value}},
    ]
    emulator.admin("directory/update", userid=userid, extattr=attrs)


# --- the imported table -----------------------------------------------------------------------------
def test_a_good_file_is_imported_and_shown(tenant_app, emulator, tmp_path):
    a, b = people(emulator, 2)
    path = write(tmp_path, f"employee_id,userid,name\n  E001 ,{a},张三\n\nE002,{b.upper()},李四\n", bom=True)
    result = run(tenant_app, "import", path, "--by", "王磊")
    assert result.exit_code == 0, result.output
    assert "added 2" in result.output
    assert table(tenant_app) == {"E001": a, "E002": b}  # trimmed; the userid as the directory spells it
    [event] = audits(tenant_app)
    assert event.actor == "user:王磊" and event.detail["added"] == 2 and event.detail["source"] == "csv:hr.csv"
    shown = run(tenant_app, "show", "E001")
    assert shown.exit_code == 0 and a in shown.output and "mapping" in shown.output
    assert json.loads(run(tenant_app, "show", " E002 ", "--json").output)["resolves_to"]["userid"] == b
    assert run(tenant_app, "show", "e001").exit_code != 0  # exact match: case counts
    again = run(tenant_app, "import", path)
    assert again.exit_code == 0 and "unchanged 2" in again.output


def test_a_bad_file_names_every_bad_line_and_stores_nothing(tenant_app, emulator, tmp_path):
    a, b = people(emulator, 2)
    assert run(tenant_app, "import", write(tmp_path, f"employee_id,userid\nE001,{a}\n")).exit_code == 0
    bad = write(tmp_path, f"employee_id,userid\nE009,{b}\n,{a}\nE009,{a}\nE010,nobody-here\nE011,\nE012,{b}\n")
    result = run(tenant_app, "import", bad, "--replace")
    assert result.exit_code == 1
    out = result.output
    assert "line 3: 工号为空" in out and "first on line 2" in out and "line 4" in out
    assert "'nobody-here' is not in the directory mirror" in out and "line 5" in out and "line 6" in out
    assert "line 7" not in out and "line 2:" not in out
    assert out.strip().splitlines()[-1].startswith("Error: 导入失败，未写入任何数据：4 处错误")
    assert table(tenant_app) == {"E001": a}  # all or nothing
    assert len(audits(tenant_app)) == 1
    for data, said in (
        (b"employee_id,userid\nE1,\xff\xfe\n", "not UTF-8"),
        (b"id,userid\nE1,x\n", "header needs employee_id"),
        (b"", "empty file"),
    ):
        path = tmp_path / "broken.csv"
        path.write_bytes(data)
        refused = run(tenant_app, "import", str(path))
        assert refused.exit_code == 1 and said in refused.output
        assert refused.output.strip().splitlines()[-1].startswith("Error:")
    assert run(tenant_app, "import", str(tmp_path / "missing.csv")).exit_code != 0
    assert table(tenant_app) == {"E001": a}


def test_dry_run_changes_nothing_and_replace_makes_the_table_the_file(tenant_app, emulator, tmp_path):
    a, b, c = people(emulator, 3)
    assert run(tenant_app, "import", write(tmp_path, f"employee_id,userid\nE001,{a}\nE002,{b}\n")).exit_code == 0
    new = write(tmp_path, f"employee_id,userid\nE002,{c}\nE003,{a}\n", name="new.csv")
    dry = run(tenant_app, "import", new, "--replace", "--dry-run")
    assert dry.exit_code == 0 and "dry run" in dry.output
    assert "added 1, 更新 updated 1" in dry.output and "removed 1" in dry.output
    assert table(tenant_app) == {"E001": a, "E002": b} and len(audits(tenant_app)) == 1
    merged = run(tenant_app, "import", new)  # without --replace: E001 stays
    assert merged.exit_code == 0 and table(tenant_app) == {"E001": a, "E002": c, "E003": a}
    replaced = run(tenant_app, "import", write(tmp_path, f"employee_id,userid\nE003,{b}\n", name="r.csv"), "--replace")
    assert replaced.exit_code == 0 and "removed 2" in replaced.output
    assert table(tenant_app) == {"E003": b}


# --- the HR API -------------------------------------------------------------------------------------
def test_the_hr_api_offboards_by_employee_number_through_the_table(tenant_app, emulator, tmp_path):
    set_mode(tenant_app, "enforce")
    leaver, other, third = people(emulator, 3)
    _gid, chatid = chat(tenant_app, [leaver, other, third], owner=other)
    assert (
        run(tenant_app, "import", write(tmp_path, f"employee_id,userid\nHR-7,{leaver}\nHR-8,{other}\n")).exit_code == 0
    )
    headers = key(tenant_app, "hr")

    unknown = post(tenant_app, headers, {"employee_id": "HR-404"})
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_person"
    assert "HR-404" in unknown.get_json()["message_en"] and "EMPLOYEE_ID_FIELD" in unknown.get_json()["message_en"]
    conflict = post(tenant_app, headers, {"userid": other, "employee_id": "HR-7"})
    assert conflict.status_code == 400 and conflict.get_json()["error"] == "employee_id_mismatch"
    assert leaver in conflict.get_json()["message_en"]
    assert post(tenant_app, headers, {"employee_id": 7}).status_code == 400  # a number, not a string
    assert not rows(tenant_app, Offboarding)  # nothing stored by the refusals

    started = post(tenant_app, headers, {"employee_id": " HR-7 ", "reason": "离职"})
    assert started.status_code == 201, started.get_json()
    assert started.get_json()["userid"] == leaver
    assert started.get_json()["resolved_by"]["via"] == "mapping"  # shown to HR too
    [off] = rows(tenant_app, Offboarding)
    assert off.detail["resolved_by"] == {
        "key": "employee_id",
        "userid": leaver,
        "employee_id": "HR-7",
        "via": "mapping",
    }
    drain(tenant_app)
    assert dels(emulator, chatid) == [[leaver]]

    both = post(tenant_app, headers, {"userid": leaver.upper(), "employee_id": "HR-7"})  # agree: the same one
    assert both.status_code == 200 and both.get_json()["id"] == off.id
    [off] = rows(tenant_app, Offboarding)
    assert off.detail["triggers"][-1]["resolved_by"]["key"] == "userid"
    assert off.detail["triggers"][-1]["resolved_by"]["via"] == "mapping"


@pytest.fixture
def field_app(make_app, db_url, emulator):
    """The tenant with EMPLOYEE_ID_FIELD set (the directory's custom field 工号)."""
    app = make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        CUSTOMER_GROUP_HANDOVER="off",
        EMPLOYEE_ID_FIELD=FIELD,
    )
    return app


def test_the_hr_api_offboards_by_the_directory_field(field_app, emulator, tmp_path):
    leaver, other, third, fourth = people(emulator, 4)
    set_number(emulator, leaver, "0042")
    set_number(emulator, third, "0077")
    set_number(emulator, fourth, "0077")  # two members with one number
    sync_mirror(field_app)
    assert number_of(field_app, leaver) == "0042" and number_of(field_app, other) is None
    set_number(emulator, leaver, " 0099 ")  # a changed value is picked up by the next sync
    sync_mirror(field_app)
    assert number_of(field_app, leaver) == "0099"

    set_mode(field_app, "enforce")
    _gid, chatid = chat(field_app, [leaver, other, third], owner=other)
    headers = key(field_app, "hr")
    gone = post(field_app, headers, {"employee_id": "0042"})
    assert gone.status_code == 404 and FIELD in gone.get_json()["message_en"]
    ambiguous = post(field_app, headers, {"employee_id": "0077"})
    assert ambiguous.status_code == 409 and ambiguous.get_json()["error"] == "ambiguous_employee_id"
    assert post(field_app, headers, {"userid": other, "employee_id": "0099"}).status_code == 400
    assert not rows(field_app, Offboarding)

    started = post(field_app, headers, {"employee_id": "0099"})
    assert started.status_code == 201 and started.get_json()["userid"] == leaver
    [off] = rows(field_app, Offboarding)
    assert off.detail["resolved_by"]["via"] == "directory_field"
    drain(field_app)
    assert dels(emulator, chatid) == [[leaver]]

    # The imported table comes first; a shown number says where it resolves.
    path = write(tmp_path, f"employee_id,userid\n0077,{third}\n")
    assert run(field_app, "import", path).exit_code == 0
    shown = json.loads(run(field_app, "show", "0077", "--json").output)
    assert shown["resolves_to"] == {"userid": third, "via": "mapping", "employee_id": "0077"}
    assert {m["userid"] for m in shown["directory_members"]} == {third, fourth}


def test_turning_the_field_off_clears_the_numbers_and_alias_works_too(make_app, db_url, emulator):
    leaver = people(emulator, 1)[0]
    emulator.admin("directory/update", userid=leaver, alias="jack-0042")
    base = dict(
        DATABASE_URL=db_url, WECOM_API_BASE_URL=emulator.url, WECOM_CORP_ID=emulator.corp_id,
        WECOM_AGENT_ID=str(emulator.OUR), WECOM_SECRET=emulator.secret(), CUSTOMER_GROUP_HANDOVER="off",
    )  # fmt: skip
    app = make_app(**base, EMPLOYEE_ID_FIELD="alias")
    sync_mirror(app)
    assert number_of(app, leaver) == "jack-0042"
    off = make_app(**base)
    before = fingerprints(off)
    sync_mirror(off)
    assert number_of(off, leaver) is None
    after = fingerprints(off)
    # Only the member who had a number was rewritten: with the field off, fingerprints are as before.
    assert {userid for userid, fp in after.items() if before[userid] != fp} == {leaver.casefold()}


def fingerprints(app) -> dict[str, str]:
    with app.app_context():
        out = dict(db.session.execute(sa.select(Person.userid_folded, Person.fingerprint)).all())
        db.session.rollback()
    return out


# --- the domain rule ------------------------------------------------------------------------------------
_attr = st.one_of(
    st.fixed_dictionaries({"type": st.just(0), "name": st.sampled_from([FIELD, "爱好"]),
                           "text": st.fixed_dictionaries({"value": st.one_of(st.text(max_size=5), st.integers())})}),
    st.fixed_dictionaries({"type": st.just(0), "name": st.sampled_from([FIELD, "x"]), "value": st.text(max_size=5)}),
    st.fixed_dictionaries({"type": st.just(1), "name": st.just(FIELD), "web": st.just({"url": "u", "title": "t"})}),
    st.none(),
    st.text(max_size=3),
)  # fmt: skip


@given(
    attrs=st.one_of(st.lists(_attr, max_size=3), st.none(), st.text(max_size=2)),
    alias=st.one_of(st.none(), st.text(max_size=5)),
    field=st.sampled_from(["", FIELD, "alias", "x"]),
    status=st.sampled_from([1, 2, 4, 5, None]),
)
def test_row_fingerprint_agrees_with_the_record_with_an_employee_field(attrs, alias, field, status):
    row = {"userid": "zhangsan", "name": "张三", "department": [1, 2], "is_leader_in_dept": [0, 1],
           "position": "工程师", "status": status, "alias": alias, "extattr": {"attrs": attrs}}  # fmt: skip
    record = MemberRecord.from_api(row, rules.ACTIVE, field)
    assert rules.row_fingerprint(row, rules.ACTIVE, field) == record.fingerprint()
    assert rules.fingerprint_values(record.values()) == record.fingerprint()
    if record.employee_id is None:  # no number: the fingerprint of before the field existed
        assert record.fingerprint() == MemberRecord.from_api(row).fingerprint()
    else:
        assert record.employee_id == record.employee_id.strip() and record.employee_id
        assert record.fingerprint() != MemberRecord.from_api(row).fingerprint()
