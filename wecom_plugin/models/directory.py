"""The directory mirror: members, departments, tags, their history and the governance outbox.

Other tables refer to a member by ``person.id``, never by the WeCom userid, which an admin can
change and which WeCom compares case-insensitively. Rows change only when WeCom's answer differs
(``fingerprint``), so a sync that finds nothing new writes nothing here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, JSONDoc, UTCDateTime, utcnow

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class Person(Base):
    """A member of the org directory as last read from WeCom (see domain.directory.MemberRecord).

    ``status``: 1 active, 2 disabled, 4 not activated, 5 left. A member deleted from WeCom is kept
    with status 5 and ``departed_at``; after the retention period their personal data is
    minimised (``minimised_at``) and only ids and dates remain.
    """

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    userid: Mapped[str] = mapped_column(sa.String(64))  # as WeCom spells it
    userid_folded: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    departments: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    main_department: Mapped[int | None] = mapped_column(sa.BigInteger)
    position: Mapped[str] = mapped_column(sa.String(255), default="")
    is_leader_in_dept: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    direct_leaders: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    status: Mapped[int] = mapped_column(sa.SmallInteger, default=1, index=True)
    # 工号 from the directory field EMPLOYEE_ID_FIELD (None when it is off or the member has none)
    employee_id: Mapped[str | None] = mapped_column(sa.String(128), index=True)
    departed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fingerprint: Mapped[str] = mapped_column(sa.String(32), default="")
    minimised_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Department(Base):
    """A department of the org tree. ``id`` is WeCom's (root = 1). Deleted ones keep their row."""

    __tablename__ = "department"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    name_en: Mapped[str] = mapped_column(sa.String(255), default="")
    parent_id: Mapped[int] = mapped_column(sa.BigInteger, default=0, index=True)
    order: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    leaders: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    fingerprint: Mapped[str] = mapped_column(sa.String(32), default="")
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tag(Base):
    """A WeCom tag. ``party_ids``: departments tagged as a whole (WeCom does not expand them)."""

    __tablename__ = "tag"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    party_ids: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    fingerprint: Mapped[str] = mapped_column(sa.String(32), default="")
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TagMember(Base):
    """A member tagged directly (only members in the app's scope are listed by WeCom)."""

    __tablename__ = "tag_member"

    tag_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True)
    person_id: Mapped[int] = mapped_column(
        sa.Integer, sa.ForeignKey("person.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class DirectoryChange(Base):
    """One change of the mirror: what changed (field -> [before, after]), when, and from which source.

    ``source``: ``callback`` (a change_contact event), ``sync`` (full sync / reconciliation),
    ``hr`` (the HR system), ``cli`` (an operator), ``retention`` (PIPL minimisation). Minimisation
    strips the values from ``detail`` and keeps ids, kinds and dates.
    """

    __tablename__ = "directory_change"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    source: Mapped[str] = mapped_column(sa.String(16))
    kind: Mapped[str] = mapped_column(sa.String(32))
    person_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    department_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    tag_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    sync_id: Mapped[int | None] = mapped_column(sa.Integer)
    inbox_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)


class DirectorySync(Base):
    """One full sync (manual, or the scheduled reconciliation) and what it found.

    ``state``: running, completed, incomplete (some reads failed: nothing departed by absence),
    failed, braked (stopped by the mass-change brake; ``planned_departures`` waits for
    ``wecom-plugin directory confirm``), confirmed (a person confirmed the brake), applied (a later
    sync carried the confirmed departures out), dry_run.
    """

    __tablename__ = "directory_sync"
    __table_args__ = (
        # One sync writing at a time, across every process: a second one fails to start.
        sa.Index(
            "uq_directory_sync_running",
            "state",
            unique=True,
            sqlite_where=sa.text("state = 'running' AND NOT dry_run"),
            postgresql_where=sa.text("state = 'running' AND NOT dry_run"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))  # cli | schedule | confirm | api
    dry_run: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    state: Mapped[str] = mapped_column(sa.String(16), default="running", index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stats: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    planned_departures: Mapped[list[int]] = mapped_column(JSONDoc, default=list)
    error: Mapped[str | None] = mapped_column(sa.Text)
    confirmed_by: Mapped[str | None] = mapped_column(sa.String(255))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DirectoryOutbox(Base):
    """A durable record of a departure, disablement, reactivation or department move, for group
    governance to consume (one per change: ``change_id`` is unique). ``consumed_at`` is set by the
    consumer; nothing here is deleted until retention prunes consumed rows."""

    __tablename__ = "directory_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # departed | disabled | reactivated | moved
    person_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    change_id: Mapped[int] = mapped_column(sa.BigInteger, unique=True)
    source: Mapped[str] = mapped_column(sa.String(16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    consumed_by: Mapped[str | None] = mapped_column(sa.String(64))
