"""``POST /api/v1/groups`` and ``GET /api/v1/groups/<id>``: scopes, 201, every problem as 400 JSON."""

from __future__ import annotations

import json

import pytest

from tests.groups.registry_helpers import count, setup_app
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.services import api_keys


@pytest.fixture
def gov(make_app, db_url, emulator):
    return setup_app(make_app, db_url, emulator)


def key(app, name: str, scopes) -> dict[str, str]:
    with app.app_context():
        client = api_keys.create_client(db.session, name, list(scopes))
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
    return {"Authorization": f"Bearer {key_id}.{secret}", "Content-Type": "application/json"}


BODY = {
    "name": "开发组工作群",
    "purpose": "开发组日常协作",
    "department_id": 8,
    "requested_by": "leiting",
    "owner": "weikaian",
    "admins": ["leiting"],
    "rule": {"required": {"departments": [8]}},
    "quiet_windows": ["22:00-07:00"],
}


def test_a_client_with_the_scope_requests_a_group_and_reads_it_back(gov):
    headers = key(gov, "oa", ["groups:request", "groups:read"])
    http = gov.test_client()
    made = http.post("/api/v1/groups", data=json.dumps(BODY), headers=headers)
    assert made.status_code == 201, made.get_json()
    view = made.get_json()
    assert view["status"] == "requested" and view["approver"] == "weikaian"
    read = http.get(f"/api/v1/groups/{view['id']}", headers=headers)
    assert read.status_code == 200 and read.get_json()["name"] == "开发组工作群"
    assert http.get("/api/v1/groups/999", headers=headers).status_code == 404


def test_bad_input_is_a_400_with_every_problem_and_stores_nothing(gov):
    headers = key(gov, "oa", ["groups:request"])
    http = gov.test_client()
    not_json = http.post("/api/v1/groups", data=b"{name: oops", headers=headers)
    assert not_json.status_code == 400 and not_json.get_json()["problems"][0]["en"].startswith("the body")
    unknown = http.post("/api/v1/groups", data=json.dumps({**BODY, "owner": "nobody_here", "admins": ["houran"],
                                                          "quiet_windows": ["7pm"]}), headers=headers)  # fmt: skip
    assert unknown.status_code == 400
    paths = {p["path"] for p in unknown.get_json()["problems"]}
    assert paths == {"owner", "admins[0]", "quiet_windows[0]"}
    wrong_types = http.post(
        "/api/v1/groups", data=json.dumps({**BODY, "admins": 5, "name": 7, "x": 1}), headers=headers
    )
    assert wrong_types.status_code == 400 and {"x"} <= {p["path"] for p in wrong_types.get_json()["problems"]}
    shapes = http.post("/api/v1/groups", data=json.dumps({**BODY, "admins": 5, "name": 7}), headers=headers)
    assert shapes.status_code == 400, shapes.get_json()
    for huge in (2**32, 2**63, 10**30):  # beyond WeCom's 32-bit ids: a 400, not an overflow in the database
        big = http.post("/api/v1/groups", data=json.dumps({**BODY, "department_id": huge}), headers=headers)
        assert big.status_code == 400, (huge, big.get_json())
        assert [p["path"] for p in big.get_json()["problems"]] == ["department_id"]
    for bad in (json.dumps({**BODY, "purpose": "值班\u0000"}), "[" * 5000 + "]" * 5000):  # no 500 on either
        refused = http.post("/api/v1/groups", data=bad, headers=headers)
        assert refused.status_code == 400 and refused.get_json()["problems"][0]["path"] == ""
    assert count(gov, GovernedGroup) == 0


def test_a_client_without_the_scope_is_refused(gov):
    headers = key(gov, "hr", ["offboarding"])
    http = gov.test_client()
    assert http.post("/api/v1/groups", data=json.dumps(BODY), headers=headers).status_code == 403
    assert http.get("/api/v1/groups/1", headers=headers).status_code == 403
    assert http.post("/api/v1/groups", data=json.dumps(BODY)).status_code == 401
    assert count(gov, GovernedGroup) == 0
