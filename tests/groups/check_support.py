"""Setup for the member check tests: the plugin on the sandbox tenant, a synced mirror, governed
chats created through our app (real HTTP) and registered directly with the ORM."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from wecom_plugin.domain.membership import Person, RealNamePolicy
from wecom_plugin.extensions import db
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.groups import ChatChange, ChatMember, GovernedGroup, ManualAction, MembershipCheck
from wecom_plugin.models.ops import Alert, AuditEvent
from wecom_plugin.services import governance_switches
from wecom_plugin.services.directory_sync import run_sync
from wecom_plugin.services.wecom import client_for
from wecom_plugin.wecom.api import appchat


@pytest.fixture
def tenant_app(make_app, db_url, emulator):
    app = make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        # App chats only: under the default "wait", a leaver who owns a customer group (the seed's first
        # member does) keeps the offboarding open until deleted. tests/offboarding/test_customer_groups.py
        # covers the handover with each setting.
        CUSTOMER_GROUP_HANDOVER="off",
    )
    sync(app)
    return app


def sync(app) -> None:
    report = run_sync(app)
    assert report.state == "completed", report.error


def people(emulator, n: int) -> list[str]:
    """``n`` active, real-named members of the tenant (userids as spelled), in a stable order."""
    policy = RealNamePolicy()
    out = []
    for u in sorted(emulator.users(), key=lambda u: u.userid.casefold()):
        if policy.check(Person(u.userid, u.name, u.status)) is None:
            out.append(u.userid)
    assert len(out) >= n
    return out[:n]


def set_mode(app, mode: str) -> None:
    with app.app_context():
        governance_switches.set_mode(db.session, "user:test", mode, "observe")
        db.session.commit()


def kill_switch(app, on: bool) -> None:
    with app.app_context():
        governance_switches.set_kill_switch(db.session, "user:test", on, "observe")
        db.session.commit()


def make_chat(app, members: list[str], owner: str, name: str = "项目群") -> str:
    client = client_for(app)
    try:
        return appchat.create(client, members, name=name, owner=owner)
    finally:
        client.close()


def register(
    app,
    *,
    chatid: str,
    owner: str,
    admins: list[str],
    rule: dict[str, Any],
    name: str = "项目群",
    checked: bool = True,
    department_id: int | None = None,
) -> int:
    with app.app_context():
        group = GovernedGroup(
            name=name,
            status="active",
            chatid=chatid,
            owner=owner,
            admins=admins,
            rule=rule,
            department_id=department_id,
            first_check_at=utcnow() - timedelta(days=1) if checked else None,
        )
        db.session.add(group)
        db.session.commit()
        return group.id


def governed_chat(
    app, members, *, required=None, owner=None, admins=None, name="项目群", checked=True
) -> tuple[int, str]:
    owner = owner or members[0]
    admins = admins if admins is not None else [owner]
    chatid = make_chat(app, members, owner, name)
    rule = {"required": {"users": list(required if required is not None else members)}}
    return register(app, chatid=chatid, owner=owner, admins=admins, rule=rule, name=name, checked=checked), chatid


def rows(app, model, *where) -> list:
    with app.app_context():
        found = db.session.scalars(sa.select(model).where(*where)).all()
        db.session.expunge_all()
        return list(found)


def changes(app, group_id: int | None = None, **filters) -> list[ChatChange]:
    where = [getattr(ChatChange, k) == v for k, v in filters.items()]
    if group_id is not None:
        where.append(ChatChange.group_id == group_id)
    return sorted(rows(app, ChatChange, *where), key=lambda c: c.id)


def members(app, group_id: int) -> set[str]:
    return {m.userid_folded for m in rows(app, ChatMember, ChatMember.group_id == group_id)}


def chat_members(emulator, chatid: str) -> set[str]:
    return {k.casefold() for k in emulator.data.chats[chatid].members}


def chat_owner(emulator, chatid: str) -> str:
    return emulator.data.chats[chatid].owner


def updates(emulator, chatid: str | None = None) -> list[dict]:
    found = emulator.requests(endpoint="appchat/update")
    return [r for r in found if chatid is None or (r.get("body") or {}).get("chatid") == chatid]


def group(app, group_id: int) -> GovernedGroup:
    [found] = rows(app, GovernedGroup, GovernedGroup.id == group_id)
    return found


def audits(app, action: str) -> list[AuditEvent]:
    return rows(app, AuditEvent, AuditEvent.action == action)


def alerts(app, key: str) -> list[Alert]:
    return rows(app, Alert, Alert.key == key)


def manual_actions(app) -> list[ManualAction]:
    return rows(app, ManualAction)


def checks(app) -> list[MembershipCheck]:
    return sorted(rows(app, MembershipCheck), key=lambda c: c.id)


def depart(emulator, app, userid: str) -> None:
    emulator.admin("directory/depart", userid=userid)
    sync(app)


def run_worker(app, rounds: int = 20) -> None:
    from wecom_plugin.jobs.worker import Worker

    worker = Worker(app)
    for _ in range(rounds):
        if worker.run_once() == 0:
            return
    raise AssertionError("the worker did not become idle")


def messages_to(emulator, userid: str) -> list[dict]:
    found = emulator.admin("messages", query={"userid": userid})["messages"]
    return [m for m in found if m.get("path") == "message"]
