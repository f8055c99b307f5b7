"""Alerts (a person must look at this) and the append-only audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, JSONDoc, UTCDateTime, utcnow


class Alert(Base):
    """An open problem for a person. At most one open alert per ``key``: raising it again while
    it is open only bumps ``count`` and ``last_raised_at``."""

    __tablename__ = "alert"
    __table_args__ = (
        sa.Index(
            "uq_alert_open_key",
            "key",
            unique=True,
            sqlite_where=sa.text("state = 'open'"),
            postgresql_where=sa.text("state = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16), default="open")  # open | acked
    severity: Mapped[str] = mapped_column(sa.String(16))  # critical | error | warning
    title_zh: Mapped[str] = mapped_column(sa.String(255))
    title_en: Mapped[str] = mapped_column(sa.String(255))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    count: Mapped[int] = mapped_column(sa.Integer, default=1)
    first_raised_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_raised_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    acked_by: Mapped[str | None] = mapped_column(sa.String(120))
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """One automated decision or human action. Rows are never updated or deleted: database
    triggers (created by the migration) reject UPDATE and DELETE on this table."""

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(255))  # "system:worker", "user:zhangsan", "api:hr"
    action: Mapped[str] = mapped_column(sa.String(100), index=True)
    target: Mapped[str | None] = mapped_column(sa.String(255))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    outcome: Mapped[str] = mapped_column(sa.String(32))  # success | failure | denied | noop | dry_run
    request_id: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
