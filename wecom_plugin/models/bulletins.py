"""Bulletins (通报): their definitions, one run per occurrence, one delivery per target.

A bulletin's schedule lives in the runtime's ``schedule`` table (key ``bulletin:<id>``, origin
``data``), written in the same transaction as the bulletin, so the clock reads bulletins as just
another schedule source. The delivery log is what people read; the at-most-once bookkeeping is the
runtime's ``job_step`` (a delivery's step target is ``d<delivery id>``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, JSONDoc, UTCDateTime, utcnow


class Bulletin(Base):
    """One bulletin definition.

    ``message`` is a ``domain.bulletin_message.MessageSpec`` document, ``schedule`` a
    ``domain.bulletin_schedule`` spec (without its ``kind``), ``targets`` the ``services.bulletins``
    target document: governed group ids, robots (name and Fernet-encrypted webhook key, never the key
    itself), users, departments, tags. ``quiet_policy``: defer | urgent | skip. ``state``: active |
    paused. ``version`` counts edits; writers compare-and-set on it.
    """

    __tablename__ = "bulletin"
    # Ids are never reused (SQLite would reuse the highest after a delete): queued work, history and
    # alerts name a bulletin by id, and must never reach a newer bulletin.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    message: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    targets: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    schedule: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    timezone: Mapped[str] = mapped_column(sa.String(64), default="Asia/Shanghai")
    confidential: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    quiet_policy: Mapped[str] = mapped_column(sa.String(8), default="defer")
    misfire_grace_seconds: Mapped[int] = mapped_column(sa.Integer, default=600)
    state: Mapped[str] = mapped_column(sa.String(8), default="active", index=True)
    owner: Mapped[str] = mapped_column(sa.String(128), default="")
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BulletinRun(Base):
    """One occurrence of a bulletin that reached a worker. Unique on (bulletin, scheduled time).

    ``state``: running, done, partial (some target failed, was missed, cancelled or is unknown),
    missed (no target was started within grace), held (the workday calendar has no data for the day and
    CALENDAR_FALLBACK=hold), skipped (not a day of the rule after all, or the bulletin was paused).
    """

    __tablename__ = "bulletin_run"
    __table_args__ = (sa.UniqueConstraint("bulletin_id", "scheduled_at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    bulletin_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(sa.String(16), default="running")
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    version: Mapped[int] = mapped_column(sa.Integer, default=1)  # the bulletin version that ran
    # What this occurrence sends (message, confidentiality, zone), fixed when it opened: an edit takes
    # effect from the next occurrence, not in the middle of a deferred or budget-paced one.
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BulletinDelivery(Base):
    """One target of one run: the delivery log.

    ``delivery_id`` is ours (WeCom returns a ``msgid`` only for message/send). ``state``: pending,
    deferred (in a quiet window; ``due_at`` is the window's end), sent, failed (WeCom refused it;
    ``errcode``), unknown (the outcome cannot be known: never repeated automatically), missed (not
    started within grace of ``due_at``), skipped (quiet window with policy skip, or superseded by a
    later occurrence deferred to the same time), cancelled (the bulletin was paused, deleted or no
    longer lists the target before it was sent). ``deadline_at`` is
    ``due_at`` plus the misfire grace, pushed back while our own send budget makes it wait.
    ``resend_of`` links an operator's explicit resend to the delivery it repeats.
    """

    __tablename__ = "bulletin_delivery"
    __table_args__ = (sa.UniqueConstraint("run_id", "target", "attempt"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    run_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    bulletin_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    target: Mapped[str] = mapped_column(sa.String(64))  # chat:<group id> | robot:<name> | message:<n>
    attempt: Mapped[int] = mapped_column(sa.Integer, default=1)
    state: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    errcode: Mapped[int | None] = mapped_column(sa.Integer)
    msgid: Mapped[str | None] = mapped_column(sa.String(128))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    resend_of: Mapped[int | None] = mapped_column(sa.BigInteger)
    job_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
