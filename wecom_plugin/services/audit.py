"""The append-only audit log: every automated decision and every human action.

Each row has actor, action, target, reason, outcome, UTC time and request id. Rows are only
ever inserted (the database rejects UPDATE and DELETE on the table). :func:`record` joins the
caller's transaction, so an action and its audit row commit or roll back together.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.context import current_request_id
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.ops import AuditEvent

OUTCOMES = ("success", "failure", "denied", "noop", "dry_run", "unknown")
EXPORT_COLUMNS = ("id", "occurred_at", "actor", "action", "target", "reason", "outcome", "request_id", "detail")


def record(
    actor: str,
    action: str,
    *,
    target: str | None = None,
    reason: str | None = None,
    outcome: str = "success",
    detail: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    session: Session | None = None,
) -> AuditEvent:
    """Add one audit row to the caller's transaction (not committed here)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    if session is None:
        from wecom_plugin.extensions import db

        session = db.session
    event = AuditEvent(
        occurred_at=utcnow(),
        actor=actor[:255],
        action=action[:100],
        target=None if target is None else str(target)[:255],
        reason=reason,
        outcome=outcome,
        request_id=request_id or current_request_id(),
        detail=dict(detail or {}),
    )
    session.add(event)
    return event


def query(session: Session, start: datetime | None = None, end: datetime | None = None) -> sa.Select:
    stmt = sa.select(AuditEvent).order_by(AuditEvent.occurred_at, AuditEvent.id)
    if start is not None:
        stmt = stmt.where(AuditEvent.occurred_at >= start)
    if end is not None:
        stmt = stmt.where(AuditEvent.occurred_at < end)
    return stmt


def export(session: Session, fmt: str, start: datetime | None = None, end: datetime | None = None) -> Iterator[str]:
    """Stream the log between ``start`` (inclusive) and ``end`` (exclusive) as CSV or JSON lines.

    CSV cells that a spreadsheet would execute (starting with ``= + - @``) are prefixed with
    ``'``, so an exported name cannot become a formula.
    """
    if fmt not in ("csv", "json"):
        raise ValueError("format must be csv or json")
    rows = session.execute(query(session, start, end).execution_options(yield_per=500)).scalars()
    if fmt == "json":
        for event in rows:
            yield json.dumps(_as_dict(event), ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    for event in rows:
        item = _as_dict(event)
        item["detail"] = json.dumps(item["detail"], ensure_ascii=False)
        writer.writerow([_csv_safe(item[c]) for c in EXPORT_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.getvalue():
        yield buffer.getvalue()


def _as_dict(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "reason": event.reason,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "detail": event.detail,
    }


def _csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value
