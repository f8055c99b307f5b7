"""WeCom access tokens shared by every process (one row per corp and secret)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime


class WeComToken(Base):
    """The current access token of one (corp id, secret) pair.

    ``key`` is a hash of the pair, never the secret. The token is stored encrypted with
    WECOM_PLUGIN_ENCRYPTION_KEY; it and its expiry are written together, under a row lock, by the
    one process that refreshed it.
    """

    __tablename__ = "wecom_token"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    token_encrypted: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fetch_count: Mapped[int] = mapped_column(sa.Integer, default=0)
