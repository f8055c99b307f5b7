"""The brake: a rule edit that would empty a chat stops the run (nothing changes, one alert); a
person's confirmation (audited) lets the next run apply it, but not a plan that grew a lot."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.services.chat_changes import apply_chat
from wecom_plugin.services.membership_check import CheckError, confirm_check, run_check

from . import check_support
from .check_support import (
    alerts,
    audits,
    changes,
    chat_members,
    checks,
    people,
    set_mode,
    updates,
)
from .check_support import governed_chat as make_governed

tenant_app = check_support.tenant_app  # the fixture


def _edit_rule(app, gid: int, users: list[str]) -> None:
    with app.app_context():
        db.session.execute(
            sa.update(GovernedGroup).where(GovernedGroup.id == gid).values(rule={"required": {"users": users}})
        )
        db.session.commit()


def test_a_rule_edit_that_would_empty_a_chat_stops_until_a_person_confirms(tenant_app, emulator):
    everyone = people(emulator, 14)
    gid, chatid = make_governed(tenant_app, everyone[:12])
    set_mode(tenant_app, "enforce")
    assert run_check(tenant_app, trigger="test").state == "completed"
    _edit_rule(tenant_app, gid, everyone[:1])  # 11 of 12 would go: the limit is max(5, 10%) = 5
    braked = run_check(tenant_app, trigger="test")
    assert braked.state == "braked" and braked.braked
    assert braked.groups[0]["braked"] is True and len(braked.groups[0]["removals"]) == 11
    assert not changes(tenant_app, gid, state="pending")
    [alert] = alerts(tenant_app, "groups.brake")
    assert alert.state == "open" and alert.title_zh.startswith("群成员检查已暂停")
    assert updates(emulator) == [] and len(chat_members(emulator, chatid)) == 12
    # Another run is still braked (and the alert is not raised twice).
    assert run_check(tenant_app, trigger="test").state == "braked"
    assert alerts(tenant_app, "groups.brake")[0].count == 2

    with tenant_app.app_context():
        with pytest.raises(CheckError, match="not braked"):
            confirm_check(db.session, 1, "user:王磊", "不该刹车的检查")
        db.session.rollback()
        confirm_check(db.session, braked.check_id, "user:王磊", "规则改了，确认移出")
        db.session.commit()
    [confirmed] = audits(tenant_app, "groups.brake.confirm")
    assert confirmed.actor == "user:王磊" and confirmed.reason == "规则改了，确认移出"
    assert alerts(tenant_app, "groups.brake")[0].state == "acked"

    applied = run_check(tenant_app, trigger="confirm", confirmed_check=braked.check_id)
    assert applied.state == "completed" and applied.confirmed_check == braked.check_id
    assert len(changes(tenant_app, gid, state="pending")) == 11
    assert {c.id: c.state for c in checks(tenant_app)}[braked.check_id] == "applied"
    assert apply_chat(tenant_app, gid)["calls"] == 1
    assert chat_members(emulator, chatid) == {everyone[0].casefold()}


def test_a_confirmed_plan_that_grew_a_lot_is_refused_again(tenant_app, emulator):
    everyone = people(emulator, 30)
    gid, chatid = make_governed(tenant_app, everyone[:30])
    set_mode(tenant_app, "enforce")
    _edit_rule(tenant_app, gid, everyone[:22])  # 8 removals > 5
    braked = run_check(tenant_app, trigger="test")
    assert braked.state == "braked"
    with tenant_app.app_context():
        confirm_check(db.session, braked.check_id, "user:王磊")
        db.session.commit()
    _edit_rule(tenant_app, gid, everyone[:10])  # 12 more beyond the confirmed 8
    again = run_check(tenant_app, trigger="confirm", confirmed_check=braked.check_id)
    assert again.state == "braked" and not changes(tenant_app, gid, state="pending")


def test_the_run_total_brakes_too(make_app, db_url, emulator):
    from .check_support import sync

    app = make_app(
        DATABASE_URL=db_url,
        WECOM_API_BASE_URL=emulator.url,
        WECOM_CORP_ID=emulator.corp_id,
        WECOM_AGENT_ID=str(emulator.OUR),
        WECOM_SECRET=emulator.secret(),
        MEMBER_CHECK_BRAKE_TOTAL="3",
    )
    sync(app)
    p = people(emulator, 12)
    make_governed(app, p[:6], required=p[:4], name="一群")  # 2 removals each: within the chat limit
    make_governed(app, p[6:], required=p[6:10], name="二群")
    set_mode(app, "enforce")
    report = run_check(app, trigger="test")
    assert report.state == "braked" and not any(g.get("braked") for g in report.groups)
    assert not changes(app, state="pending")
