"""Shared setup for bulletin tests: the plugin on the sandbox tenant, a governed chat, a bulletin whose
occurrence is due now, and the clock and worker driven in-process (real HTTP to the emulator)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tests.groups.check_support import governed_chat, people, run_worker  # noqa: F401  (re-exported)
from wecom_plugin.extensions import db
from wecom_plugin.jobs.clock import Clock
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.models.jobs import Job, Schedule
from wecom_plugin.services import bulletins

ROBOT_KEY = "bulletin-test-robot-key-0001"


def create(app, doc: dict[str, Any], *, actor: str = "user:test") -> int:
    with app.app_context():
        row = bulletins.save(db.session, doc, actor=actor, settings=app.extensions["wecom_settings"])
        db.session.commit()
        return row.id


def text_doc(name: str = "每日通报", *, chats=(), robots=(), users=(), rule=None, times=("09:00",), **extra) -> dict:
    targets: dict[str, Any] = {}
    if chats:
        targets["chats"] = list(chats)
    if robots:
        targets["robots"] = list(robots)
    if users:
        targets["users"] = list(users)
    return {
        "name": name,
        "message": {
            "msgtype": "text",
            "title": "{{ date_zh }}（{{ weekday }}）通报",
            "content": "{{ group_name }}：请查收。",
        },
        "targets": targets,
        "schedule": {"times": list(times), "days": rule or {"rule": "every_day"}},
        **extra,
    }


def make_due(app, bulletin_id: int, at: datetime | None = None, *, ago: float = 1.0) -> datetime:
    """Point the bulletin's schedule at ``at`` (default: the database's now minus ``ago`` seconds), so the
    clock's next tick materialises that occurrence. Returns the occurrence time."""
    with app.app_context():
        when = at or (db_now(db.session) - timedelta(seconds=ago))
        db.session.execute(
            sa.update(Schedule).where(Schedule.key == bulletins.schedule_key(bulletin_id)).values(next_run_at=when)
        )
        db.session.commit()
        return when


def tick(app) -> int:
    return Clock(app, owner="test-clock").tick()


def deliveries(app, bulletin_id: int | None = None) -> list[BulletinDelivery]:
    with app.app_context():
        query = sa.select(BulletinDelivery).order_by(BulletinDelivery.id)
        if bulletin_id is not None:
            query = query.where(BulletinDelivery.bulletin_id == bulletin_id)
        rows = list(db.session.scalars(query))
        db.session.expunge_all()
        return rows


def runs(app, bulletin_id: int) -> list[BulletinRun]:
    with app.app_context():
        rows = list(
            db.session.scalars(
                sa.select(BulletinRun).where(BulletinRun.bulletin_id == bulletin_id).order_by(BulletinRun.id)
            )
        )
        db.session.expunge_all()
        return rows


def bulletin(app, bulletin_id: int) -> Bulletin:
    with app.app_context():
        row = db.session.get(Bulletin, bulletin_id)
        db.session.expunge(row)
        return row


def chat_messages(emulator, chatid: str) -> list:
    data = emulator.data
    return [data.messages[m] for m in data.chat_messages.get(chatid, [])]


def robot_messages(emulator, key: str = ROBOT_KEY) -> list:
    return [m for m in emulator.data.messages.values() if m.path == "robot" and m.robot_key == key]


def quiet_around_now(app, group_id: int, minutes_after: int = 3) -> str:
    """Give the group a quiet window from a minute ago to ``minutes_after`` minutes from now (Shanghai)."""
    from zoneinfo import ZoneInfo

    with app.app_context():
        now = db_now(db.session).astimezone(ZoneInfo("Asia/Shanghai"))
        window = f"{(now - timedelta(minutes=1)):%H:%M}-{(now + timedelta(minutes=minutes_after)):%H:%M}"
        db.session.get(GovernedGroup, group_id).quiet_windows = [window]
        db.session.commit()
        return window


def release_ready_jobs(app) -> int:
    """Time passes: every waiting bulletin job (deferred, prepared, or after a backoff) becomes due now."""
    with app.app_context():
        changed = db.session.execute(
            sa.update(Job)
            .where(Job.name.in_(("bulletins.fire", "bulletins.send")), Job.state == "ready")
            .values(due_at=db_now(db.session) - timedelta(seconds=1))
        ).rowcount
        db.session.commit()
        return changed
