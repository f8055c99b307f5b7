"""The HR API (``/api/v1/offboardings``) and the CLI (``wecom-plugin offboard``): idempotency keys,
cancellation before and after execution, clear 4xx with nothing changed, repeats removing once."""

from __future__ import annotations

import json

import sqlalchemy as sa

from tests.groups.check_support import chat_members, people, rows, set_mode, updates
from tests.groups.check_support import sync as sync_mirror
from wecom_plugin.cli import cli
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import ChatChange, Offboarding
from wecom_plugin.models.jobs import Job
from wecom_plugin.services import offboarding as service

from . import support
from .support import chat, dels, drain, key, offboardings, removals, status

tenant_app = support.tenant_app  # the fixture


def post(http, headers, body, idem: str | None = None):
    extra = {"Idempotency-Key": idem} if idem else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return http.post("/api/v1/offboardings", data=data, headers={**headers, **extra})


def nothing_stored(app) -> bool:
    with app.app_context():
        jobs = db.session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.name.like("offboarding.%")))
        db.session.rollback()
    return not rows(app, Offboarding) and not rows(app, ChatChange) and not jobs


def cli_run(app, *args):
    result = app.test_cli_runner().invoke(cli, ["offboard", *args])
    assert "Traceback" not in result.output
    return result


def test_bad_requests_are_clear_4xx_and_change_nothing(tenant_app, emulator):
    a, b, c = people(emulator, 3)
    chat(tenant_app, [a, b, c])
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    bad_json = post(http, headers, "{not json")
    assert bad_json.status_code == 400 and bad_json.get_json()["error"] == "invalid"
    assert post(http, headers, ["a"]).status_code == 400
    assert post(http, headers, {"userid": a, "colour": "red"}).status_code == 400
    assert post(http, headers, {"userid": a, "effective_at": "tomorrow"}).status_code == 400
    assert post(http, headers, {"userid": a, "effective_at": "2030-01-01T00:00:00"}).status_code == 400  # no offset
    for edge in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):  # not expressible in UTC
        out_of_range = post(http, headers, {"userid": a, "effective_at": edge})
        assert out_of_range.status_code == 400 and "out of range" in out_of_range.get_json()["message_en"]
        refused = cli_run(tenant_app, a, "--at", edge, "--by", "王磊")
        assert refused.exit_code != 0 and "out of range" in refused.output
    unknown = post(http, headers, {"userid": "nobody-here"})
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "unknown_person"
    employee = post(http, headers, {"employee_id": "E1001"})
    assert employee.status_code == 404 and employee.get_json()["error"] == "unknown_person"  # no such 工号
    assert http.get("/api/v1/offboardings/999", headers=headers).status_code == 404
    assert http.delete("/api/v1/offboardings/999", headers=headers).status_code == 404
    for huge in (2**31, 2**63, 10**30):  # beyond the id column: a 404, not an overflow (a 500)
        assert http.get(f"/api/v1/offboardings/{huge}", headers=headers).status_code == 404
        assert http.delete(f"/api/v1/offboardings/{huge}", headers=headers).status_code == 404
    assert cli_run(tenant_app, "status", str(10**30)).exit_code != 0
    # A NUL character (PostgreSQL text cannot hold it) and nesting that exhausts the parser: a 400, not a 500.
    nested: object = "HR"
    for _ in range(40):  # deeper than any body takes (json_body.MAX_DEPTH)
        nested = [nested]
    for body in ({"userid": a, "reason": "离\u0000职"}, {"userid": "x\u0000y"}, "[" * 5000 + "]" * 5000,
                 {"userid": a, "reason": "x", "requested_by": nested}):  # fmt: skip
        refused = post(http, headers, body)
        assert refused.status_code == 400 and refused.get_json()["error"] == "invalid", body
    assert post(http, headers, {"userid": a}, "key\u0000").status_code == 400
    reader = key(tenant_app, "reader", ["offboarding:read"])
    assert post(http, reader, {"userid": a}).status_code == 403
    assert post(http, {"Content-Type": "application/json"}, {"userid": a}).status_code == 401
    assert nothing_stored(tenant_app)


def test_idempotency_keys(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    body = {"userid": leaver, "reason": "离职", "effective_at": "2099-01-01T09:00:00+08:00"}
    first = post(http, headers, body, "k-1")
    assert first.status_code == 201, first.get_json()
    view = first.get_json()
    assert view["state"] == "scheduled" and view["userid"] == leaver
    again = post(http, headers, body, "k-1")
    assert again.status_code == 201 and again.get_json()["id"] == view["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = post(http, headers, {**body, "reason": "另一个"}, "k-1")
    assert changed.status_code == 422 and changed.get_json()["error"] == "idempotency_key_reused"
    other_key = post(http, headers, body, "k-2")  # the same person: the open offboarding answers
    assert other_key.status_code == 200 and other_key.get_json()["id"] == view["id"]
    assert post(http, headers, body, "k-2").status_code == 200
    other_client = post(http, key(tenant_app, "hr2"), body, "k-1")  # keys are per client
    assert other_client.status_code == 200 and other_client.get_json()["id"] == view["id"]
    read = http.get(f"/api/v1/offboardings/{view['id']}", headers=headers)
    assert read.status_code == 200 and read.get_json()["state"] == "scheduled"
    assert len([o for o in offboardings(tenant_app) if o.state != "duplicate"]) == 1
    assert updates(emulator) == []


def test_hr_api_outbox_and_cli_fired_five_times_remove_once_per_chat(tenant_app, emulator):
    leaver, a, b, c = people(emulator, 4)
    chats = [chat(tenant_app, [a, b, leaver], name="一群"), chat(tenant_app, [b, c, leaver], name="二群")]
    set_mode(tenant_app, "enforce")
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    for i in range(5):
        assert post(http, headers, {"userid": leaver}, f"key-{i}").status_code in (200, 201)
        assert cli_run(tenant_app, leaver, "--by", "王磊").exit_code == 0
    emulator.flags(on_member_delete="keep")
    emulator.admin("directory/depart", userid=leaver)
    for _ in range(5):
        sync_mirror(tenant_app)
    drain(tenant_app)
    for i in range(5):
        post(http, headers, {"userid": leaver}, f"key-{i}")
        cli_run(tenant_app, leaver, "--by", "王磊")
        sync_mirror(tenant_app)
    drain(tenant_app)
    for _gid, chatid in chats:
        assert dels(emulator, chatid) == [[leaver]]
        assert leaver.casefold() not in chat_members(emulator, chatid)
    assert len(removals(tenant_app, state="applied")) == 2
    shown = cli_run(tenant_app, "status", leaver, "--json")
    assert shown.exit_code == 0 and json.loads(shown.output)["state"] == "done"
    assert "已完成" in cli_run(tenant_app, "status", leaver).output


def test_cancel_before_execution_removes_nothing_and_after_is_409(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    gid, chatid = chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    headers = key(tenant_app, "hr")
    http = tenant_app.test_client()
    made = post(http, headers, {"userid": leaver}, "x").get_json()
    cancelled = http.delete(f"/api/v1/offboardings/{made['id']}", headers=headers)
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    drain(tenant_app)
    assert updates(emulator) == [] and leaver.casefold() in chat_members(emulator, chatid)
    assert [c.state for c in removals(tenant_app)] == ["cancelled"]
    # Again, through the CLI; then once it ran, cancelling is refused (409 / one line).
    started = json.loads(cli_run(tenant_app, leaver, "--by", "王磊", "--json").output)
    assert started["id"] != made["id"] and started["state"] == "pending"
    drain(tenant_app)
    assert status(tenant_app, leaver)["state"] == "done"
    late = http.delete(f"/api/v1/offboardings/{started['id']}", headers=headers)
    assert late.status_code == 409 and late.get_json()["error"] == "executed"
    refused = cli_run(tenant_app, "cancel", str(started["id"]), "--by", "王磊")
    assert refused.exit_code == 1 and "cannot be cancelled" in refused.output
    assert status(tenant_app, leaver)["state"] == "done"


def test_cli_cancel_and_scheduled_offboarding(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    assert cli_run(tenant_app, leaver).exit_code == 1  # --by is required
    assert cli_run(tenant_app, leaver, "--by", "x", "--at", "2099-01-01").exit_code == 1  # no offset
    assert cli_run(tenant_app, "nobody", "--by", "x").exit_code == 1
    made = json.loads(cli_run(tenant_app, leaver, "--by", "王磊", "--at", "2099-01-01T09:00+08:00", "--json").output)
    assert made["state"] == "scheduled" and made["chats"] == []
    out = cli_run(tenant_app, "cancel", str(made["id"]), "--by", "王磊")
    assert out.exit_code == 0 and "已取消" in out.output
    drain(tenant_app)
    assert updates(emulator) == []


def test_a_rehire_before_execution_removes_nothing(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    gid, chatid = chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(tenant_app)
    with tenant_app.app_context():  # the record is consumed; the removal waits for the window
        service.consume_outbox(db.engine, "test")
    assert [c.state for c in removals(tenant_app)] == ["pending"]
    emulator.admin("directory/enable", userid=leaver)
    sync_mirror(tenant_app)
    drain(tenant_app)
    assert updates(emulator) == [] and leaver.casefold() in chat_members(emulator, chatid)
    assert [c.state for c in removals(tenant_app)] == ["cancelled"]
    assert status(tenant_app, leaver)["state"] == "cancelled"


def test_a_departure_record_of_someone_already_back_does_nothing(tenant_app, emulator):
    leaver, a, b = people(emulator, 3)
    chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(tenant_app)
    emulator.admin("directory/enable", userid=leaver)
    sync_mirror(tenant_app)
    drain(tenant_app)  # both records consumed in order: the disablement finds them active again
    assert updates(emulator) == [] and not removals(tenant_app)


def test_a_rehire_after_part_of_the_chats_were_done_keeps_them_in_the_rest(tenant_app, emulator):
    """Disabled while in two chats: one chat is changed, then the directory says they are back.
    The second chat must not remove an active person (no active user removed)."""
    from wecom_plugin.services.chat_changes import apply_chat

    leaver, a, b = people(emulator, 3)
    first, first_chat = chat(tenant_app, [a, b, leaver])
    second, second_chat = chat(tenant_app, [a, b, leaver])
    set_mode(tenant_app, "enforce")
    emulator.admin("directory/disable", userid=leaver)
    sync_mirror(tenant_app)
    with tenant_app.app_context():
        service.consume_outbox(db.engine, "test")
    assert apply_chat(tenant_app, first)["state"] == "applied"
    assert leaver.casefold() not in chat_members(emulator, first_chat)
    emulator.admin("directory/enable", userid=leaver)
    sync_mirror(tenant_app)
    apply_chat(tenant_app, second)
    drain(tenant_app)
    assert leaver.casefold() in chat_members(emulator, second_chat)
    assert sorted(c.state for c in removals(tenant_app)) == ["applied", "cancelled"]
