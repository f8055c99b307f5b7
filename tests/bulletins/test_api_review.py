"""Bulletins API regressions found by a second review (scope bypasses, 500s on odd input)."""

from __future__ import annotations

from tests.bulletins.test_api import Http, app, body, count, key, setup  # noqa: F401  (fixtures)
from wecom_plugin.extensions import db
from wecom_plugin.models.bulletins import Bulletin
from wecom_plugin.models.directory import Tag


def test_review2_a_tag_holding_a_big_department_needs_the_broadcast_scope(setup):
    app, _group_id, members = setup
    with app.app_context():
        # A tag that tags the root department as a whole (WeCom's "tag a department"): sending to it
        # reaches every member of the department, exactly as {"departments": [1]} does.
        db.session.add(Tag(id=9001, name="全员标签", party_ids=[1]))
        db.session.commit()
    plain = Http(app, key(app, "oa", ["bulletins"]))
    as_department = plain("POST", "/bulletins", body(members[0], targets={"departments": [1]}))
    assert as_department.status_code == 403  # the department itself is refused ...
    as_tag = plain("POST", "/bulletins", body(members[0], name="经标签全员", targets={"tags": [9001]}))
    assert as_tag.status_code == 403, as_tag.get_json()  # ... but the same people through a tag are not
    assert count(app, Bulletin) == 0


def test_review2_resume_of_a_broadcast_bulletin_needs_the_broadcast_scope(setup):
    app, _group_id, members = setup
    broadcaster = Http(app, key(app, "notice", ["bulletins", "bulletins:broadcast"]))
    made = broadcaster("POST", "/bulletins", body(members[0], targets={"users": ["@all"]}, state="paused"))
    assert made.status_code == 201, made.get_json()
    bulletin_id = made.get_json()["id"]
    plain = Http(app, key(app, "oa", ["bulletins"]))
    # The plain client may not switch it on through PUT (the save checks the scope) ...
    assert plain("PUT", f"/bulletins/{bulletin_id}", {"state": "active"}).status_code == 403
    # ... but /resume, which starts the same @all broadcast, does not check it.
    resumed = plain("POST", f"/bulletins/{bulletin_id}/resume")
    assert resumed.status_code == 403, resumed.get_json()
    with app.app_context():
        assert db.session.get(Bulletin, bulletin_id).state == "paused"


def test_review2_a_very_long_timezone_is_a_400_not_a_500(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    answer = http("POST", "/bulletins", body(members[0], timezone="A" * 300))  # OSError: File name too long
    assert answer.status_code == 400


def test_review2_a_lone_surrogate_is_a_400_not_a_500(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    raw = (
        '{"name": "值班\\ud800通报", "message": {"msgtype": "text", "content": "x"}, '
        f'"targets": {{"users": ["{members[0]}"]}}, '
        '"schedule": {"times": ["09:00"], "days": {"rule": "every_day"}}}'
    )
    answer = http("POST", "/bulletins", raw=raw.encode())
    assert answer.status_code == 400


def test_review2_a_superscript_digit_query_argument_is_a_400(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    bulletin_id = http("POST", "/bulletins", body(members[0])).get_json()["id"]
    # "²".isdigit() is True, int("²") raises ValueError
    assert http("GET", f"/bulletins/{bulletin_id}/history?limit=%C2%B2").status_code == 400
    assert http("GET", f"/bulletins/{bulletin_id}/preview?next=%C2%B2").status_code == 400


def test_review2_a_superscript_digit_in_a_cron_rule_is_a_400(setup):
    app, _group_id, members = setup
    http = Http(app, key(app, "oa", ["bulletins"]))
    doc = body(members[0], schedule={"days": {"rule": "cron", "expr": "0 ² * * *"}})  # cron._number: int("²")
    assert http("POST", "/bulletins", doc).status_code == 400
