"""The callback inbox: every authentic WeCom callback, stored before it is acknowledged."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow


class CallbackInbox(Base):
    """One callback delivery, unique per (receiver, dedupe key): WeCom's retries and duplicates of
    the same delivery land on the same row. Processed by the ``callbacks.dispatch`` job.

    ``plaintext`` is the decrypted XML exactly as WeCom sent it (directory events carry ids only).
    """

    __tablename__ = "callback_inbox"
    __table_args__ = (sa.UniqueConstraint("receiver", "dedupe_key"),)

    id: Mapped[int] = mapped_column(sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True)
    receiver: Mapped[str] = mapped_column(sa.String(16))  # app | contacts
    dedupe_key: Mapped[str] = mapped_column(sa.String(100))
    kind: Mapped[str] = mapped_column(sa.String(100))  # msgtype/event/changetype
    plaintext: Mapped[str] = mapped_column(sa.Text)
    state: Mapped[str] = mapped_column(sa.String(16), default="new")  # new | handled | unhandled
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deliveries: Mapped[int] = mapped_column(sa.Integer, default=1)
