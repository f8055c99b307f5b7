"""Governed groups: the registry (备案), its versions and exemptions, what each chat holds, the
membership changes planned and made, check runs, offboardings, manual actions and the governance
switches.

WeCom facts behind the shape (contract §3, §10): an app changes members only in chats it created
(2 to 2,000 members), there is no API that lists chats, and a corp may change chats 1,000 times an
hour. So a chat is governed only through its registry entry (``chatid`` set when the plugin created
or adopted it), the members last seen are kept here (``chat_member``: offboarding finds a person's
chats without reading every chat), and every change is a durable work item (``chat_change``)
applied per chat, one ``appchat/update`` carrying all of a chat's pending changes.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from wecom_plugin.models.base import Base, JSONDoc, UTCDateTime, utcnow

BigId = sa.BigInteger().with_variant(sa.Integer, "sqlite")

GROUP_STATUSES = ("requested", "approved", "rejected", "active", "archived")
CHANGE_STATES = ("pending", "applied", "failed", "cancelled", "skipped", "manual", "observed", "dry_run")


class GovernedGroup(Base):
    """One registered group (备案): what it is for, who runs it, who belongs in it.

    ``status``: requested -> approved | rejected; approved -> active (the chat exists, ``chatid``
    set); active -> archived (governance stops; WeCom cannot dissolve an app chat). ``admins`` is a
    role of ours (WeCom's app chats know only an owner). ``rule`` is a membership rule document
    (domain.membership.MembershipRule.to_doc). ``version`` counts the changes recorded in
    ``group_version``; writers compare-and-set on it.
    """

    __tablename__ = "governed_group"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    purpose: Mapped[str] = mapped_column(sa.Text, default="")
    content_scope: Mapped[str] = mapped_column(sa.Text, default="")
    department_id: Mapped[int | None] = mapped_column(sa.BigInteger)  # the requesting department
    requested_by: Mapped[str] = mapped_column(sa.String(64), default="")
    approver: Mapped[str | None] = mapped_column(sa.String(64))
    decided_by: Mapped[str | None] = mapped_column(sa.String(64))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    owner: Mapped[str] = mapped_column(sa.String(64), default="")
    admins: Mapped[list[str]] = mapped_column(JSONDoc, default=list)
    rule: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    confidentiality: Mapped[str] = mapped_column(sa.String(16), default="normal")  # normal | confidential
    quiet_windows: Mapped[list[str]] = mapped_column(JSONDoc, default=list)  # "HH:MM-HH:MM", Asia/Shanghai
    review_date: Mapped[date | None] = mapped_column(sa.Date)
    status: Mapped[str] = mapped_column(sa.String(16), default="requested", index=True)
    chatid: Mapped[str | None] = mapped_column(sa.String(32), unique=True)
    first_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # None: the next check is a dry run
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GroupVersion(Base):
    """Every change of a registry entry: who, when, what (``before``/``after``: the changed fields)."""

    __tablename__ = "group_version"
    __table_args__ = (sa.UniqueConstraint("group_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    version: Mapped[int] = mapped_column(sa.Integer)
    action: Mapped[str] = mapped_column(sa.String(32))  # requested, approved, rejected, updated, archived...
    actor: Mapped[str] = mapped_column(sa.String(128))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    before: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    after: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GroupExemption(Base):
    """A person allowed in a group the rule would take them out of, with a reason and an expiry."""

    __tablename__ = "group_exemption"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    userid: Mapped[str] = mapped_column(sa.String(64))
    userid_folded: Mapped[str] = mapped_column(sa.String(64))
    reason: Mapped[str] = mapped_column(sa.Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ChatMember(Base):
    """Who a governed chat held when it was last read (``appchat/get``) or changed by us.

    A hint, not the truth: offboarding uses it to find a person's chats without reading all of
    them, and re-reads each chat before changing it.
    """

    __tablename__ = "chat_member"
    __table_args__ = (sa.PrimaryKeyConstraint("group_id", "userid_folded"),)

    group_id: Mapped[int] = mapped_column(sa.Integer)
    userid_folded: Mapped[str] = mapped_column(sa.String(64), index=True)
    userid: Mapped[str] = mapped_column(sa.String(64))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ChatChange(Base):
    """One membership change of one chat: planned by a check or an offboarding, applied per chat.

    ``state``: pending (waiting for the chat's next ``appchat/update``), applied, failed (WeCom
    refused it; ``errcode``), cancelled (rehired, a cancelled offboarding, or no longer needed when
    re-checked), skipped (already so when the chat was re-read), manual (cannot be done by API:
    a person was told), observed / dry_run (what a check in those modes would have done).
    One pending change per person per chat (a partial unique index): a second trigger for the same
    removal finds the first and does nothing.
    """

    __tablename__ = "chat_change"
    __table_args__ = (
        sa.Index(
            "uq_chat_change_pending",
            "group_id",
            "userid_folded",
            unique=True,
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.Integer, index=True)
    userid: Mapped[str] = mapped_column(sa.String(64))
    userid_folded: Mapped[str] = mapped_column(sa.String(64), index=True)
    action: Mapped[str] = mapped_column(sa.String(16))  # add | remove | owner
    reason: Mapped[str] = mapped_column(sa.String(32))  # domain.membership.REASONS key, or "offboarding"
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    source: Mapped[str] = mapped_column(sa.String(16))  # check | offboarding | cli
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=1)  # 0 offboarding first, then 1 checks
    run_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    offboarding_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    state: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    errcode: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class MembershipCheck(Base):
    """One run of the daily member check (每日检查), over every active group or one.

    ``mode``: observe | dry_run | enforce (the global mode when it started; a group's first check
    is a dry run whatever the mode). ``state``: running, completed, braked (too many removals: waits
    for ``wecom-plugin groups confirm``), confirmed, failed. ``report``: the per-chat findings.
    """

    __tablename__ = "membership_check"
    __table_args__ = (
        # One running check at a time, on every database (a second start gets CheckBusy).
        sa.Index(
            "uq_membership_check_running",
            "state",
            unique=True,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    trigger: Mapped[str] = mapped_column(sa.String(32))
    mode: Mapped[str] = mapped_column(sa.String(16))
    group_id: Mapped[int | None] = mapped_column(sa.Integer)
    state: Mapped[str] = mapped_column(sa.String(16), default="running", index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stats: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    error: Mapped[str | None] = mapped_column(sa.Text)
    confirmed_by: Mapped[str | None] = mapped_column(sa.String(128))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ChatApplyLease(Base):
    """The claim of one chat by the process applying its changes (``chat_changes.apply_chat``).

    Taken by insert (or compare-and-set on an expired one) before the chat is re-read; ``fence``
    fences the holder: every later write checks it. A second applier, or a check planning the
    chat, finds the live claim and leaves the chat alone; an expired claim (a crashed process)
    is taken over and the chat re-read first.
    """

    __tablename__ = "chat_apply_lease"

    group_id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    fence: Mapped[str] = mapped_column(sa.String(32))  # the holder's random fence value, not a secret
    holder: Mapped[str] = mapped_column(sa.String(128), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Offboarding(Base):
    """One person to take out of every governed chat (a directory departure, the HR API or the CLI).

    ``state``: scheduled (``effective_at`` in the future), pending, running, done, partial (some
    chats need a person), cancelled (rehired or cancelled before it ran), failed.
    ``idempotency_key`` is unique per API client.
    """

    __tablename__ = "offboarding"
    __table_args__ = (sa.UniqueConstraint("client_id", "idempotency_key"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    userid: Mapped[str] = mapped_column(sa.String(64))
    userid_folded: Mapped[str] = mapped_column(sa.String(64), index=True)
    person_id: Mapped[int | None] = mapped_column(sa.Integer)
    source: Mapped[str] = mapped_column(sa.String(16))  # directory | hr | cli
    outbox_id: Mapped[int | None] = mapped_column(sa.BigInteger, unique=True)
    client_id: Mapped[int | None] = mapped_column(sa.Integer)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(255))
    state: Mapped[str] = mapped_column(sa.String(16), default="pending", index=True)
    effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    requested_by: Mapped[str] = mapped_column(sa.String(128), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ManualAction(Base):
    """Something the API cannot do, handed to a person who was told: a chat the app did not create
    (86008), members of customer groups, a transfer WeCom refused."""

    __tablename__ = "manual_action"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    group_id: Mapped[int | None] = mapped_column(sa.Integer, index=True)
    chat_ref: Mapped[str | None] = mapped_column(sa.String(64))  # a chatid or customer-group chat_id
    userid: Mapped[str | None] = mapped_column(sa.String(64))
    assignee: Mapped[str | None] = mapped_column(sa.String(64))
    offboarding_id: Mapped[int | None] = mapped_column(sa.Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDoc, default=dict)
    state: Mapped[str] = mapped_column(sa.String(16), default="open", index=True)  # open | done | dismissed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(sa.String(128))


class GovernanceSetting(Base):
    """Switches an operator changes at run time, audited: ``mode`` (observe | dry_run | enforce),
    ``kill_switch`` (true stops every membership change at once)."""

    __tablename__ = "governance_setting"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONDoc)
    updated_by: Mapped[str] = mapped_column(sa.String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
