"""The bulletins API (``/api/v1/bulletins``): scopes (``bulletins``, and ``bulletins:broadcast`` for @all or a
large department), create/read/replace with compare-and-set, pause/resume, delete, history, preview, resend;
every refusal is JSON with every problem and changes nothing; robot keys never appear in an answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.groups.check_support import governed_chat, people, sync
from wecom_plugin.extensions import db
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.ops import AuditEvent
from wecom_plugin.services import api_keys

ROBOT_KEY = "0b5e8f6a-1c2d-4e3f-8a9b-ApIsEcReT777"
ROBOT_URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={ROBOT_KEY}"
BROADCAST_LIMIT = 5


@pytest.fixture
def app(make_app, db_url, emulator):
    """The plugin on the sandbox tenant (mirror synced), departments above 5 members count as broadcasts."""
    made = make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        CUSTOMER_GROUP_HANDOVER="off",
        BULLETIN_BROADCAST_DEPARTMENT_SIZE=str(BROADCAST_LIMIT),
    )
    sync(made)
    return made


@pytest.fixture
def setup(app, emulator):
    members = people(emulator, 3)
    group_id, _chatid = governed_chat(app, members, name="研发部工作群")
    return app, group_id, members


class Http:
    """A test client that checks every answer: JSON (or empty), never a 500, never a robot key."""

    def __init__(self, app, headers: dict[str, str]) -> None:
        self.client, self.headers = app.test_client(), headers

    def __call__(self, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
        data = raw if raw is not None else (json.dumps(body, ensure_ascii=False) if body is not None else None)
        response = self.client.open(
            f"/api/v1{path}", method=method, data=data, headers=headers if headers is not None else self.headers
        )
        text = response.get_data(as_text=True)
        assert response.status_code < 500, (method, path, text)
        assert ROBOT_KEY not in text and ROBOT_KEY.lower() not in text.lower()
        assert "key_enc" not in text
        if response.status_code != 204:
            assert response.is_json, text
        return response


def key(app, name: str, scopes) -> dict[str, str]:
    with app.app_context():
        client = api_keys.create_client(db.session, name, list(scopes))
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
    return {"Authorization": f"Bearer {key_id}.{secret}", "Content-Type": "application/json"}


def body(user: str, **overrides) -> dict:
    doc = {
        "name": "每日安全生产通报",
        "message": {
            "msgtype": "text",
            "title": "{{ date_zh }}（{{ weekday }}）安全生产通报",
            "content": "各位同事：请于今日 17:00 前提交{{ this_week.label }}安全检查表。",
        },
        "targets": {
            "chats": ["研发部工作群"],
            "robots": [{"name": "值班机器人", "key": ROBOT_URL}],
            "users": [user],
        },
        "schedule": {"times": ["09:00"], "days": {"rule": "workdays"}, "start": "2026-09-01", "skip": ["2026-12-24"]},
        "timezone": "Asia/Shanghai",
        "confidential": False,
        "quiet_policy": "defer",
        "misfire_grace_minutes": 10,
    }
    doc.update(overrides)
    return doc


def count(app, model) -> int:
    with app.app_context():
        n = db.session.scalar(sa.select(sa.func.count()).select_from(model))
        db.session.rollback()
        return n


def audits(app, prefix: str = "bulletins.") -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(AuditEvent.action, AuditEvent.actor)
            .where(AuditEvent.action.like(f"{prefix}%"))
            .order_by(AuditEvent.id)
        ).all()
        db.session.rollback()
        return [tuple(r) for r in rows]


def test_scopes_bulletins_and_bulletins_broadcast(setup):
    app, _group_id, members = setup
    outsider = Http(app, key(app, "hr", ["offboarding:write"]))
    assert outsider("GET", "/bulletins").status_code == 403
    assert outsider("POST", "/bulletins", body(members[0])).status_code == 403
    assert outsider("GET", "/bulletins/1/preview").status_code == 403
    assert outsider("POST", "/bulletin-deliveries/1/resend", {"reason": "x"}).status_code == 403
    assert Http(app, {"Content-Type": "application/json"})("GET", "/bulletins").status_code == 401
    assert ("api.auth", "api:hr") in audits(app, "api.")

    plain = Http(app, key(app, "oa", ["bulletins"]))
    to_all = body(members[0], targets={"users": ["@all"]})
    refused = plain("POST", "/bulletins", to_all)
    assert refused.status_code == 403, refused.get_json()
    error = refused.get_json()
    assert error["error"] == "forbidden" and "bulletins:broadcast" in error["message"]
    assert error["problems"][0]["path"] == "targets" and error["request_id"]
    big_department = plain("POST", "/bulletins", body(members[0], targets={"departments": [1]}))
    assert big_department.status_code == 403 and "bulletins:broadcast" in big_department.get_json()["message_en"]
    assert count(app, Bulletin) == 0

    small = plain("POST", "/bulletins", body(members[0]))
    assert small.status_code == 201, small.get_json()

    broadcaster = Http(app, key(app, "notice", ["bulletins", "bulletins:broadcast"]))
    made = broadcaster("POST", "/bulletins", dict(to_all, name="全员通报"))
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["targets"]["users"] == ["@all"]
    assert ("bulletins.create", "api:notice") in audits(app) and ("bulletins.create", "api:oa") in audits(app)

    # a client without the broadcast scope cannot change a broadcast bulletin, nor make one of its own
    bulletin_id = made.get_json()["id"]
    edit = plain("PUT", f"/bulletins/{bulletin_id}", {"misfire_grace_minutes": 20})
    assert edit.status_code == 403
    widen = plain("PUT", f"/bulletins/{small.get_json()['id']}", {"targets": {"users": ["@all"]}})
    assert widen.status_code == 403
    assert broadcaster("PUT", f"/bulletins/{bulletin_id}", {"misfire_grace_minutes": 20}).status_code == 200


def test_create_read_replace_pause_resume_and_delete(setup):
    app, group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    made = http("POST", "/bulletins", body(members[0]))
    assert made.status_code == 201, made.get_json()
    view = made.get_json()
    bulletin_id = view["id"]
    assert made.headers["Location"] == f"/api/v1/bulletins/{bulletin_id}"
    assert view["targets"]["chats"] == [group_id] and view["owner"] == "api:oa" and view["version"] == 1
    assert view["targets"]["robots"] == [{"name": "值班机器人", "chat": "", "key_hint": "…T777"}]
    assert view["schedule"]["days"] == {"rule": "workdays"} and view["next_run_at"]

    assert http("GET", f"/bulletins/{bulletin_id}").get_json() == view
    assert [b["id"] for b in http("GET", "/bulletins").get_json()["bulletins"]] == [bulletin_id]
    assert http("GET", "/bulletins?state=paused").get_json() == {"bulletins": []}
    assert http("GET", "/bulletins?state=gone").status_code == 400
    again = http("POST", "/bulletins", body(members[0]))
    assert again.status_code == 400 and again.get_json()["problems"][0]["path"] == "name"

    # what a GET answers goes back in a PUT (read-only fields ignored, the robot keeps its key)
    edited = dict(view, quiet_policy="skip", schedule={"times": ["08:30"], "days": {"rule": "weekdays"}})
    replaced = http("PUT", f"/bulletins/{bulletin_id}", edited)
    assert replaced.status_code == 200, replaced.get_json()
    after = replaced.get_json()
    assert after["version"] == 2 and after["quiet_policy"] == "skip" and after["schedule"]["times"] == ["08:30"]
    assert after["targets"]["robots"] == view["targets"]["robots"] and after["owner"] == "api:oa"
    with app.app_context():
        from wecom_plugin.services.bulletins import robot_key

        stored = db.session.get(Bulletin, bulletin_id).targets["robots"][0]
        assert robot_key(app.extensions["wecom_settings"], stored) == ROBOT_KEY
        db.session.rollback()

    stale = http("PUT", f"/bulletins/{bulletin_id}", {"version": 1, "misfire_grace_minutes": 30})
    assert stale.status_code == 409, stale.get_json()
    assert stale.get_json()["error"] == "conflict" and stale.get_json()["problems"][0]["path"] == "version"
    assert http("GET", f"/bulletins/{bulletin_id}").get_json()["misfire_grace_minutes"] == 10
    current = http("PUT", f"/bulletins/{bulletin_id}", {"version": 2, "misfire_grace_minutes": 30})
    assert current.status_code == 200 and current.get_json()["version"] == 3
    assert http("PUT", f"/bulletins/{bulletin_id}", {"version": "3"}).status_code == 400
    assert http("PUT", f"/bulletins/{bulletin_id}", {"id": bulletin_id + 1}).status_code == 400

    paused = http("POST", f"/bulletins/{bulletin_id}/pause", {"reason": "国庆调整"})
    assert paused.status_code == 200 and paused.get_json()["state"] == "paused"
    assert paused.get_json()["next_run_at"] is None
    resumed = http("POST", f"/bulletins/{bulletin_id}/resume", raw=b"")
    assert resumed.status_code == 200 and resumed.get_json()["state"] == "active" and resumed.get_json()["next_run_at"]
    assert http("POST", f"/bulletins/{bulletin_id}/pause", {"why": "x"}).status_code == 400

    assert http("DELETE", f"/bulletins/{bulletin_id}").status_code == 204
    gone = http("GET", f"/bulletins/{bulletin_id}")
    assert gone.status_code == 404 and gone.get_json()["error"] == "not_found"
    for method, path in (("GET", "/bulletins/999"), ("PUT", "/bulletins/999"), ("DELETE", "/bulletins/999"),
                         ("POST", "/bulletins/999/pause"), ("GET", "/bulletins/999/history"),
                         ("GET", "/bulletins/999/preview"), ("GET", "/bulletins/abc"),
                         ("GET", f"/bulletins/{2**40}"), ("GET", "/bulletins/-1")):  # fmt: skip
        assert http(method, path, {} if method == "PUT" else None).status_code == 404, (method, path)
    assert [a for a, _ in audits(app)] == [
        "bulletins.create", "bulletins.update", "bulletins.update", "bulletins.pause", "bulletins.resume",
        "bulletins.delete",
    ]  # fmt: skip
    assert {actor for _, actor in audits(app)} == {"api:oa"}
    with app.app_context():  # the key is stored encrypted only: not in the audit log, nor in the schedule
        details = db.session.scalars(sa.select(AuditEvent.detail)).all()
        assert ROBOT_KEY not in json.dumps(details, ensure_ascii=False, default=str)
        db.session.rollback()


def test_refusals_report_every_problem_and_store_nothing(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    not_json = http("POST", "/bulletins", raw=b"{name: oops")
    assert not_json.status_code == 400 and not_json.get_json()["problems"][0]["en"].startswith("the body")
    for raw in (b"[]", "[" * 5000 + "]" * 5000, json.dumps({"name": "值班\u0000"})):
        assert http("POST", "/bulletins", raw=raw).status_code == 400

    message = dict(body(members[0])["message"], content="截至{{ yesterdy.label }}的情况")
    unknown = http("POST", "/bulletins", body(members[0], message=message))
    assert unknown.status_code == 400
    [problem] = unknown.get_json()["problems"]
    assert problem["path"] == "message.content" and "yesterdy" in problem["zh"] and "yesterdy" in problem["en"]

    confidential = http("POST", "/bulletins", body(members[0], confidential=True))
    assert confidential.status_code == 400
    reasons = confidential.get_json()["problems"]
    assert [p["path"] for p in reasons] == ["message.confidential"]
    assert "群机器人没有 safe 字段" in reasons[0]["zh"] and "robot webhook has no `safe` field" in reasons[0]["en"]

    several = http(
        "POST",
        "/bulletins",
        body("nobody_here", quiet_policy="later", timezone="Mars/Olympus", extra=1,
             schedule={"times": ["25:00"], "days": {"rule": "workdays"}}),
    )  # fmt: skip
    assert several.status_code == 400
    paths = {p["path"] for p in several.get_json()["problems"]}
    assert {"", "quiet_policy", "timezone", "schedule", "targets.users"} <= paths
    assert several.get_json()["message"].startswith("共 ")

    odd_shapes = [
        {"name": 5, "message": [], "targets": "x", "schedule": 7, "timezone": 5, "misfire_grace_minutes": True},
        body(members[0], targets={"chats": [True, 1.5, None, {}, 2**40], "robots": ["x", {"name": 5}, {"name": "r"}],
                                  "users": [5, None, "x" * 100], "departments": ["2", True, -1], "tags": [2**40]}),
        body(members[0], schedule={"times": [5, None], "days": {"rule": "days_of_week", "days": [7, "x"]}}),
        body(members[0], schedule={"days": {"rule": "cron", "expr": 5}}),
        body(members[0], schedule={"times": ["09:00"], "days": {"rule": "workdays"}, "start": 5, "skip": "x"}),
        body(members[0], message={"msgtype": "text", "content": "{{ ", "mentions": "x"}),
        body(members[0], message={"msgtype": "news", "title": "{{ date.__class__ }}", "content": "x"}),
        body(members[0], name=" 空格 ", confidential="yes", state="on"),
    ]  # fmt: skip
    for doc in odd_shapes:
        answer = http("POST", "/bulletins", doc)
        assert answer.status_code == 400, (doc, answer.get_json())
        assert answer.get_json()["problems"], doc
    assert count(app, Bulletin) == 0 and audits(app) == []


def test_history_preview_and_resend(setup):
    app, group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    bulletin_id = http("POST", "/bulletins", body(members[0])).get_json()["id"]

    history = http("GET", f"/bulletins/{bulletin_id}/history")
    assert history.status_code == 200 and history.get_json() == {"bulletin_id": bulletin_id, "runs": []}
    assert http("GET", f"/bulletins/{bulletin_id}/history?limit=0").status_code == 400
    assert http("GET", f"/bulletins/{bulletin_id}/history?limit=x").status_code == 400

    preview = http("GET", f"/bulletins/{bulletin_id}/preview?next=5&from=2026-09-29")
    assert preview.status_code == 200, preview.get_json()
    days = preview.get_json()["days"]
    by_date = {d["date"]: d for d in days}
    holiday = by_date["2026-10-01"]
    assert holiday["state"] == "skip" and holiday["weekday"] == "星期四" and holiday["occurrences"] == []
    assert (holiday["reason_zh"], holiday["reason_en"]) == ("国庆节放假", "National Day holiday")
    assert by_date["2026-10-10"]["state"] == "send" and "调休" in by_date["2026-10-10"]["reason_zh"]
    first = by_date["2026-09-29"]["occurrences"][0]
    assert first["at"] == "2026-09-29T09:00:00+08:00"
    assert [t["target"] for t in first["targets"]] == [f"chat:{group_id}", "robot:值班机器人", "message:0"]
    assert {t["action"] for t in first["targets"]} == {"send"}
    assert {m["path"] for m in first["messages"]} == {"appchat", "robot", "message"}
    assert all("2026年9月29日（星期二）安全生产通报" in m["text"] for m in first["messages"])
    assert sum(len(d["occurrences"]) for d in days) == 5
    assert http("GET", f"/bulletins/{bulletin_id}/preview?next=101").status_code == 400
    assert http("GET", f"/bulletins/{bulletin_id}/preview?from=someday").status_code == 400

    delivery = failed_delivery(app, bulletin_id, f"chat:{group_id}")
    runs = http("GET", f"/bulletins/{bulletin_id}/history").get_json()["runs"]
    assert [d["id"] for d in runs[0]["deliveries"]] == [delivery] and runs[0]["deliveries"][0]["errcode"] == 86003
    assert http("POST", f"/bulletin-deliveries/{delivery}/resend", {}).status_code == 400
    assert http("POST", f"/bulletin-deliveries/{delivery}/resend", {"reason": "  "}).status_code == 400
    assert http("POST", "/bulletin-deliveries/424242/resend", {"reason": "x"}).status_code == 404
    resent = http("POST", f"/bulletin-deliveries/{delivery}/resend", {"reason": "群已恢复，补发"})
    assert resent.status_code == 202, resent.get_json()
    new = resent.get_json()
    assert new["resend_of"] == delivery and new["attempt"] == 2 and new["state"] == "pending"
    again = http("POST", f"/bulletin-deliveries/{delivery}/resend", {"reason": "again"})
    assert again.status_code == 409 and again.get_json()["error"] == "conflict"
    assert ("bulletins.resend", "api:oa") in audits(app)
    assert count(app, BulletinDelivery) == 2


def test_resending_a_broadcast_message_needs_the_broadcast_scope(setup):
    app, _group_id, _members = setup
    broadcaster = Http(app, key(app, "notice", ["bulletins", "bulletins:broadcast"]))
    made = broadcaster("POST", "/bulletins", body("x", targets={"users": ["@all"]}))
    assert made.status_code == 201, made.get_json()
    delivery = failed_delivery(app, made.get_json()["id"], "message:0")
    plain = Http(app, key(app, "oa", ["bulletins"]))
    refused = plain("POST", f"/bulletin-deliveries/{delivery}/resend", {"reason": "补发"})
    assert refused.status_code == 403 and "bulletins:broadcast" in refused.get_json()["message"]
    assert count(app, BulletinDelivery) == 1
    assert broadcaster("POST", f"/bulletin-deliveries/{delivery}/resend", {"reason": "补发"}).status_code == 202


def failed_delivery(app, bulletin_id: int, target: str) -> int:
    """A run of 2026-11-20 09:00 (Shanghai) whose delivery to ``target`` failed; returns the delivery's id."""
    scheduled = datetime(2026, 11, 20, 1, 0, tzinfo=UTC)
    with app.app_context():
        now = db_now(db.session)
        run = BulletinRun(bulletin_id=bulletin_id, scheduled_at=scheduled, state="partial", reason="", version=1,
                          created_at=now, finished_at=now)  # fmt: skip
        db.session.add(run)
        db.session.flush()
        delivery = BulletinDelivery(
            delivery_id="cd" * 16, run_id=run.id, bulletin_id=bulletin_id, target=target, attempt=1, state="failed",
            scheduled_at=scheduled, due_at=scheduled, deadline_at=scheduled + timedelta(minutes=10), errcode=86003,
            reason="errcode 86003: chat not found", updated_at=now,
        )  # fmt: skip
        db.session.add(delivery)
        db.session.commit()
        return delivery.id
