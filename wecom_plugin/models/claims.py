"""Columns every claimable row carries (jobs today; the callback inbox and membership changes later).

See :mod:`wecom_plugin.runtime.claim` for the one claim primitive that works on these columns.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import UTCDateTime


class ClaimState:
    READY = "ready"  # waiting for due_at
    RUNNING = "running"  # claimed; lease_expires_at says until when
    DONE = "done"
    DEAD = "dead"  # attempts exhausted or a permanent error; listed for a person to retry
    CANCELLED = "cancelled"

    FINAL = (DONE, DEAD, CANCELLED)


class ClaimableMixin:
    """State machine columns for the claim primitive.

    ``fence`` is the fencing token: it grows by one on every claim, and every later write by the
    holder says ``WHERE fence = :mine``, so a holder that lost its lease (paused, partitioned)
    changes nothing after another process took over.
    """

    state: Mapped[str] = mapped_column(sa.String(16), default=ClaimState.READY)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(sa.Integer, default=5)
    fence: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(sa.Text)
