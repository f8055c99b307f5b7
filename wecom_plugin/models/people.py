"""People of the org directory, keyed by an internal id."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow


def fold_userid(userid: str) -> str:
    """WeCom userids are case-insensitive: this is the form they are compared and looked up in."""
    return userid.casefold()


class Person(Base):
    """A member of the org directory. Other tables refer to ``id``, never to the WeCom userid,
    which an admin can change and which WeCom compares case-insensitively."""

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    userid: Mapped[str] = mapped_column(sa.String(64))  # as WeCom spells it
    userid_folded: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
