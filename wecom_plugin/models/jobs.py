"""Background jobs, their per-target steps, and the clock's schedules and occurrences."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, JSONDoc, UTCDateTime, utcnow
from wecom_plugin.models.claims import ClaimableMixin


class Job(ClaimableMixin, Base):
    """One unit of background work. Claimed by workers through :mod:`wecom_plugin.runtime.claim`."""

    __tablename__ = "job"
    __table_args__ = (
        # The claim query: ready rows by due time, and running rows whose lease ran out.
        sa.Index("ix_job_state_due_at", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    # Enqueueing with a dedupe key that already exists returns the existing job (idempotent).
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    delivery: Mapped[str] = mapped_column(sa.String(16))  # at_least_once | at_most_once
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)


class JobStep(Base):
    """Progress of one target of a fanned-out job: a job that dies at target 20 resumes at 21.

    For at-most-once jobs, ``sending`` is committed before the side effect; a step found in
    ``sending`` by a later holder becomes ``unknown`` (alerted) and is never repeated automatically.
    """

    __tablename__ = "job_step"
    __table_args__ = (sa.UniqueConstraint("job_id", "target"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("job.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16))  # sending | done | unknown | failed
    fence: Mapped[int] = mapped_column(sa.BigInteger)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONDoc)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Schedule(Base):
    """A recurring source of occurrences: declared in code (``origin='code'``) or stored as data.

    Code definitions (``jobs.clock.periodic_definitions``) are upserted here by the clock, so both
    kinds run through one path. ``spec`` is interpreted by :mod:`wecom_plugin.domain.schedules`.
    """

    __tablename__ = "schedule"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    origin: Mapped[str] = mapped_column(sa.String(8))  # code | data
    job_name: Mapped[str] = mapped_column(sa.String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDoc)
    timezone: Mapped[str] = mapped_column(sa.String(64), default="Asia/Shanghai")
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    # Occurrences older than this when the clock sees them are missed, not run.
    misfire_grace_seconds: Mapped[int] = mapped_column(sa.Integer, default=600)
    # After downtime, run only the newest occurrence still within grace.
    coalesce: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    alert_on_miss: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Occurrence(Base):
    """One scheduled time of one schedule. Unique on (schedule_key, scheduled_at): any number of
    clocks, an old and a new deploy included, enqueue it once."""

    __tablename__ = "occurrence"
    __table_args__ = (sa.UniqueConstraint("schedule_key", "scheduled_at"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    schedule_key: Mapped[str] = mapped_column(sa.String(200))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(sa.String(16))  # enqueued | missed | coalesced
    job_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class ProcessHeartbeat(Base):
    """Liveness of one worker or clock process, written every few seconds by the process itself."""

    __tablename__ = "process_heartbeat"

    id: Mapped[str] = mapped_column(sa.String(120), primary_key=True)  # host:pid:random
    kind: Mapped[str] = mapped_column(sa.String(16))  # worker | clock
    hostname: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    state: Mapped[str] = mapped_column(sa.String(16), default="running")  # running | stopped
    jobs_done: Mapped[int] = mapped_column(sa.BigInteger, default=0)
