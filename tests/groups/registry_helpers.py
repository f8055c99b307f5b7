"""Shared setup for the registry tests: an app on the sandbox tenant with a synced mirror."""

from __future__ import annotations

import shutil
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.services import group_registry as registry
from wecom_plugin.services.directory_sync import run_sync

OFFICE = ("fanwenjia", "zouweibin")  # 综合办公室 in the generated tenant
DEV = 8  # 开发组: weikaian (leader), shitonglu, leiting


def setup_app(make_app, db_url: str, emulator, **extra: Any):
    """The plugin on ``db_url`` talking to the sandbox tenant, with the mirror synced; enforce mode
    unless ``GOVERNANCE_MODE`` is given (chats are created only in enforce mode)."""
    extra.setdefault("GOVERNANCE_MODE", "enforce")
    app = make_app(
        DATABASE_URL=db_url,
        **emulator.plugin_settings(),
        GENERAL_OFFICE_USERIDS=",".join(OFFICE),
        **extra,
    )
    report = run_sync(app)
    assert report.state == "completed", report.error
    return app


def fresh_sqlite_url(template, tmp_path, name: str = "second.sqlite3") -> str:
    target = tmp_path / name
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def today(app):
    with app.app_context():
        value = db_now(db.session).astimezone(app.extensions["wecom_settings"].tz).date()
        db.session.rollback()
        return value


def request(app, **overrides: Any) -> int:
    values: dict[str, Any] = {
        "name": "开发组工作群",
        "purpose": "开发组日常协作",
        "content_scope": "开发任务、代码评审",
        "department_id": DEV,
        "requested_by": "leiting",
        "owner": "weikaian",
        "admins": ["leiting"],
        "rule_doc": {"required": {"departments": [DEV]}},
        "quiet_windows": ["22:00-07:00"],
        "review_date": (today(app) + timedelta(days=90)).isoformat(),
        "actor": "user:leiting",
    }
    values.update(overrides)
    with app.app_context():
        group = registry.request_group(db.session, **values)
        db.session.commit()
        return group.id


def group(app, group_id: int) -> GovernedGroup:
    with app.app_context():
        row = db.session.get(GovernedGroup, group_id)
        db.session.expunge_all()
        return row


def rows(app, model, *where) -> list:
    with app.app_context():
        found = list(db.session.scalars(sa.select(model).where(*where)))
        db.session.expunge_all()
        return found


def count(app, model) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(model))
