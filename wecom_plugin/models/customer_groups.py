"""Customer groups (客户群) handed over when their owner leaves (see services/customer_groups.py).

WeCom facts behind the shape (contract §6): customer groups are not app chats; WeCom lists a
person's groups (``groupchat/list`` with an owner filter) and moves them to a new owner in calls of
up to 100 chats (``groupchat/transfer`` once the owner was deleted from the directory,
``groupchat/onjob_transfer`` before, at most twice per group in 90 days), answering per chat. So the
work is one row per (offboarding, chat), written before any transfer and updated with WeCom's
per-chat answer: repeats find the rows and do nothing twice, and every outcome stays visible.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, UTCDateTime, utcnow

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")

HANDOVER_METHODS = ("transfer", "onjob_transfer", "member")
HANDOVER_STATES = ("pending", "waiting", "done", "failed", "manual", "cancelled")
SCAN_STATES = ("pending", "listed", "failed", "off", "cancelled")


class CustomerGroupHandover(Base):
    """One customer group of a leaver and what became of it.

    ``method``: transfer (the owner was deleted from the directory: ``groupchat/transfer``),
    onjob_transfer (still in the directory: ``groupchat/onjob_transfer``), member (the leaver is an
    ordinary member; no API removes anyone from a customer group, so it is a manual action).
    ``state``: pending (to do), waiting (for the deletion from the directory, then ``transfer``),
    done (the successor, or someone else, owns it now), failed (WeCom refused it: ``errcode``;
    a manual action was opened), manual (handed to a person: ``manual_action_id``), cancelled (the
    offboarding was cancelled, e.g. a rehire, before it moved).
    """

    __tablename__ = "customer_group_handover"
    __table_args__ = (sa.UniqueConstraint("offboarding_id", "chat_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    offboarding_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    chat_id: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(255), default="")
    from_userid: Mapped[str] = mapped_column(sa.String(64))
    successor: Mapped[str | None] = mapped_column(sa.String(64))
    method: Mapped[str] = mapped_column(sa.String(16))
    state: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    errcode: Mapped[int | None] = mapped_column(sa.Integer)
    errmsg: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    manual_action_id: Mapped[int | None] = mapped_column(sa.Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class CustomerGroupScan(Base):
    """The listing of one offboarding's customer groups, and the claim of whoever works on them.

    ``state``: pending (not listed yet: the offboarding cannot be done), listed, failed (the listing
    was refused, e.g. 48002: the app is not in 客户联系; ``error``), off (CUSTOMER_GROUP_HANDOVER=off),
    cancelled. ``fence``/``lease_until``: one worker at a time per offboarding (compare-and-set).
    ``members_scanned_at``: the opt-in scan for groups the leaver is an ordinary member of.
    """

    __tablename__ = "customer_group_scan"

    offboarding_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    userid: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(sa.Text)
    listed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    members_scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fence: Mapped[str | None] = mapped_column(sa.String(32))  # the holder's random fence value, not a secret
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
