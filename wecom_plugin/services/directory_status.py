"""Reading the directory mirror for people: its health (``directory status``), one member
(``directory show``) and the brake confirmation (``directory confirm``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain import directory as rules
from wecom_plugin.models.base import utcnow
from wecom_plugin.services import audit
from wecom_plugin.services.directory_mirror import CHANGE, DEPARTMENT, OUTBOX, PERSON, TAG, TAG_MEMBER
from wecom_plugin.services.directory_sync import SYNC

DRIFT_KEYS = ("hired", "updated", "renamed", "departed", "departments_changed", "tags_changed")


class DirectoryError(Exception):
    """A request about the directory that cannot be honoured (message for the operator)."""


def _sync_view(row: Any) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "id": row.id,
        "state": row.state,
        "trigger": row.trigger,
        "dry_run": row.dry_run,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "stats": row.stats or {},
        "planned_departures": len(row.planned_departures or []),
        "error": row.error,
    }


def status(session: Session) -> dict[str, Any]:
    """Last sync, last complete sync, counts by status, the pending brake and drift.

    ``drift`` is what the last complete sync had to change: the changes the callbacks missed.
    """
    counts = dict(session.execute(sa.select(PERSON.c.status, sa.func.count()).group_by(PERSON.c.status)).all())
    by_status = {rules.STATUS_NAMES.get(s, str(s)): n for s, n in sorted(counts.items())}
    last = session.execute(
        sa.select(SYNC).where(SYNC.c.dry_run.is_(False)).order_by(SYNC.c.id.desc()).limit(1)
    ).one_or_none()
    last_complete = session.execute(
        sa.select(SYNC).where(SYNC.c.state == "completed").order_by(SYNC.c.id.desc()).limit(1)
    ).one_or_none()
    braked = session.execute(
        sa.select(SYNC).where(SYNC.c.state == "braked").order_by(SYNC.c.id.desc()).limit(1)
    ).one_or_none()
    if braked is not None and last is not None and last.id > braked.id and last.state in ("completed", "confirmed"):
        braked = None  # a later sync settled it
    stats = (last_complete.stats or {}) if last_complete is not None else {}
    return {
        "members": by_status,
        "departments": session.execute(
            sa.select(sa.func.count()).select_from(DEPARTMENT).where(DEPARTMENT.c.deleted_at.is_(None))
        ).scalar_one(),
        "tags": session.execute(
            sa.select(sa.func.count()).select_from(TAG).where(TAG.c.deleted_at.is_(None))
        ).scalar_one(),
        "last_sync": _sync_view(last),
        "last_complete_sync": _sync_view(last_complete),
        "pending_brake": _sync_view(braked),
        "drift": {k: int(stats.get(k, 0)) for k in DRIFT_KEYS},
        "outbox_pending": session.execute(
            sa.select(sa.func.count()).select_from(OUTBOX).where(OUTBOX.c.consumed_at.is_(None))
        ).scalar_one(),
    }


def show(session: Session, userid: str, *, history: int = 20) -> dict[str, Any]:
    """One member by userid (case-insensitive): fields, tags and recent history."""
    person = session.execute(sa.select(PERSON).where(PERSON.c.userid_folded == rules.fold(userid))).one_or_none()
    if person is None:
        raise DirectoryError(f"no member {userid!r} in the directory mirror (run `wecom-plugin directory sync`?)")
    departments = dict(
        session.execute(
            sa.select(DEPARTMENT.c.id, DEPARTMENT.c.name).where(DEPARTMENT.c.id.in_(person.departments or []))
        ).all()
    )
    tags = list(
        session.execute(
            sa.select(TAG.c.name)
            .join(TAG_MEMBER, TAG_MEMBER.c.tag_id == TAG.c.id)
            .where(TAG_MEMBER.c.person_id == person.id)
        ).scalars()
    )
    changes = session.execute(
        sa.select(CHANGE).where(CHANGE.c.person_id == person.id).order_by(CHANGE.c.id.desc()).limit(history)
    ).all()
    return {
        "id": person.id,
        "userid": person.userid,
        "name": person.name,
        "status": person.status,
        "status_name": rules.STATUS_NAMES.get(person.status, str(person.status)),
        "status_zh": rules.STATUS_ZH.get(person.status, str(person.status)),
        "departments": [
            {"id": d, "name": departments.get(d, "?"), "leader": bool(flag)}
            for d, flag in zip(
                person.departments or [],
                list(person.is_leader_in_dept or []) + [0] * len(person.departments or []),
                strict=False,
            )
        ],
        "main_department": person.main_department,
        "position": person.position,
        "direct_leaders": list(person.direct_leaders or []),
        "tags": sorted(tags),
        "departed_at": person.departed_at.isoformat() if person.departed_at else None,
        "minimised_at": person.minimised_at.isoformat() if person.minimised_at else None,
        "history": [
            {
                "at": c.occurred_at.isoformat(),
                "kind": c.kind,
                "source": c.source,
                "detail": c.detail,
            }
            for c in changes
        ],
    }


def confirm_brake(session: Session, actor: str, sync_id: int | None = None, reason: str | None = None) -> dict:
    """A person confirms a braked sync: its planned departures may proceed in the next sync.

    Audited (``directory.brake.confirm``). Returns the confirmed sync's view. The caller commits
    and then runs (or enqueues) a sync with ``confirmed_sync``.
    """
    query = sa.select(SYNC).where(SYNC.c.state == "braked")
    if sync_id is not None:
        query = query.where(SYNC.c.id == sync_id)
    row = session.execute(query.order_by(SYNC.c.id.desc()).limit(1)).one_or_none()
    if row is None:
        which = f"sync #{sync_id} is not" if sync_id else "no sync is"
        raise DirectoryError(f"{which} waiting for confirmation")
    session.execute(
        sa.update(SYNC)
        .where(SYNC.c.id == row.id, SYNC.c.state == "braked")
        .values(state="confirmed", confirmed_by=actor[:255], confirmed_at=utcnow())
    )
    from wecom_plugin.models.ops import Alert
    from wecom_plugin.services.alerts import acknowledge

    for alert_id in session.execute(
        sa.select(Alert.id).where(Alert.key == "directory.brake", Alert.state == "open")
    ).scalars():
        acknowledge(session, alert_id, actor)
    audit.record(
        actor,
        "directory.brake.confirm",
        target=f"directory_sync:{row.id}",
        reason=reason,
        detail={"planned_departures": len(row.planned_departures or []), "stats": row.stats or {}},
        session=session,
    )
    return _sync_view(row) | {"state": "confirmed"}
