"""Machine API clients (the HR system, scripts), their keys and the shared rate-limit counters."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow


class ApiClient(Base):
    __tablename__ = "api_client"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    scopes: Mapped[str] = mapped_column(sa.String(500), default="")  # space separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A client's key. The secret is stored encrypted (WECOM_PLUGIN_ENCRYPTION_KEY), because HMAC
    verification needs the secret itself; a bearer token is checked against the same secret.
    A client has at most two live keys, so a key can be rotated without downtime."""

    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(sa.ForeignKey("api_client.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(sa.String(40), unique=True)  # public, sent with each request
    secret_encrypted: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RateCounter(Base):
    """Fixed-window request counters shared by every web worker (the database is the store)."""

    __tablename__ = "rate_counter"

    bucket: Mapped[str] = mapped_column(sa.String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)  # epoch seconds
    count: Mapped[int] = mapped_column(sa.Integer, default=0)
