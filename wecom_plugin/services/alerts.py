"""Alerts: "a person must look at this".

Used by every part of the plugin: dead jobs, at-most-once sends that ended ``unknown``, missed
schedule occurrences, later the sync brake and calendar data running out.

* Deduplicated: while an alert with the same ``key`` is open, raising it again only bumps its
  count. It stays open until a person acknowledges it (``wecom-plugin alerts ack``).
* Delivered on first raise through every configured channel, including one outside WeCom,
  because WeCom itself may be what failed: an ERROR log line always, the generic webhook
  (``ALERT_WEBHOOK_URL``) when set, and app messages to ``ALERT_WECOM_USERIDS`` once the WeCom
  transport is configured. Delivery runs as the ``alerts.deliver`` job, so a slow channel never
  blocks the caller and a failing one is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.context import escape_log_text
from wecom_plugin.models.base import insert_for, utcnow
from wecom_plugin.models.ops import Alert

log = logging.getLogger("wecom_plugin.alerts")

SEVERITIES = ("critical", "error", "warning")
ALERT = Alert.__table__


@dataclass(frozen=True)
class Raised:
    alert_id: int
    count: int

    @property
    def is_new(self) -> bool:
        return self.count == 1


def raise_alert(
    key: str,
    *,
    title_zh: str,
    title_en: str,
    severity: str = "error",
    detail: Mapping[str, Any] | None = None,
    session: Session | sa.Connection | None = None,
) -> Raised:
    """Open an alert, or bump the open one with the same key. Joins the caller's transaction.

    The first raise also logs at ERROR and enqueues delivery (same transaction), so an alert
    that is recorded is also delivered.
    """
    from wecom_plugin.runtime.queue import enqueue

    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    if session is None:
        from wecom_plugin.extensions import db

        session = db.session
    now = utcnow()
    insert = insert_for(session, ALERT).values(
        key=key[:255],
        state="open",
        severity=severity,
        title_zh=title_zh[:255],
        title_en=title_en[:255],
        detail=dict(detail or {}),
        count=1,
        first_raised_at=now,
        last_raised_at=now,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["key"],
        index_where=sa.text("state = 'open'"),
        set_={"count": ALERT.c.count + 1, "last_raised_at": now, "detail": insert.excluded.detail},
    ).returning(ALERT.c.id, ALERT.c.count)
    alert_id, count = session.execute(upsert).one()
    raised = Raised(alert_id, count)
    if raised.is_new:
        log.error(
            "ALERT %s [%s] %s / %s",
            escape_log_text(key),
            severity,
            escape_log_text(title_zh),
            escape_log_text(title_en),
        )
        enqueue("alerts.deliver", {"alert_id": alert_id}, dedupe_key=f"alert-deliver:{alert_id}", session=session)
    return raised


def acknowledge(session: Session, alert_id: int, actor: str) -> bool:
    """Close an open alert. False if it does not exist or is already acknowledged."""
    from wecom_plugin.services import audit

    result = session.execute(
        sa.update(ALERT)
        .where(ALERT.c.id == alert_id, ALERT.c.state == "open")
        .values(state="acked", acked_by=actor[:120], acked_at=utcnow())
    )
    if result.rowcount != 1:
        return False
    audit.record(actor, "alert.ack", target=f"alert:{alert_id}", session=session)
    return True


def open_alerts(session: Session) -> list[Alert]:
    return list(session.scalars(sa.select(Alert).where(Alert.state == "open").order_by(Alert.first_raised_at)))


def webhook_body(alert: Alert) -> dict[str, Any]:
    """The JSON the generic webhook receives (stable; documented in docs/deploy.md)."""
    return {
        "id": alert.id,
        "key": alert.key,
        "severity": alert.severity,
        "title_zh": alert.title_zh,
        "title_en": alert.title_en,
        "detail": alert.detail,
        "count": alert.count,
        "first_raised_at": alert.first_raised_at.isoformat().replace("+00:00", "Z"),
    }
