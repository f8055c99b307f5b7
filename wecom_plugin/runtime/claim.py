"""The one claim primitive.

Every claimable table (jobs today; the callback inbox, membership changes and bulletin sends
build on jobs or reuse this module) carries :class:`~wecom_plugin.models.claims.ClaimableMixin`
columns. A row is claimable when it is ``ready`` and due, or ``running`` with an expired lease.

* PostgreSQL: ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``:
  concurrent claimers skip each other's rows instead of waiting.
* SQLite: the same UPDATE inside ``BEGIN IMMEDIATE`` (see :mod:`wecom_plugin.database`); the
  write lock makes the select-and-update atomic. (``with_for_update`` is silently ignored on
  SQLite, which is how APScheduler's SQLite store double-runs jobs; the write lock is the guard.)

A claim returns the new ``fence`` of each row. Every later write by the holder is conditional on
``fence = :mine`` and ``state = 'running'``; after a takeover those writes match zero rows.
All times come from the database clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from wecom_plugin.models.claims import ClaimState
from wecom_plugin.models.dbtime import sql_now


@dataclass(frozen=True)
class Claimed:
    """A row this process now holds."""

    id: int
    fence: int
    attempts: int
    row: sa.Row


def claim_batch(
    conn: sa.Connection,
    table: sa.Table,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    where: sa.ColumnElement[bool] | None = None,
    returning: Sequence[sa.Column] = (),
    reclaim_expired: bool = True,
) -> list[Claimed]:
    """Claim up to ``limit`` due rows of ``table`` for ``owner``, oldest ``due_at`` first.

    Runs in the caller's transaction; the caller commits. Each claim adds one to ``attempts``.
    ``reclaim_expired=False`` skips the look for expired leases (one statement fewer; a busy
    worker needs it only now and then).
    """
    c = table.c
    # Two statements, not one with OR: "ready and due" walks the (state, due_at) index in order,
    # so a claim costs the same with 100 or 100,000 jobs waiting (an OR forces a sort of every
    # ready row). Expired leases are rare and few.
    expired = sa.and_(c.state == ClaimState.RUNNING, c.lease_expires_at < sql_now())
    due = sa.and_(c.state == ClaimState.READY, c.due_at <= sql_now())
    rows: list[sa.Row] = []
    for condition in (expired, due) if reclaim_expired else (due,):
        if len(rows) >= limit:
            break
        if where is not None:
            condition = sa.and_(condition, where)
        rows += _claim_where(conn, table, condition, owner, limit - len(rows), lease_seconds, returning)
    claimed = [Claimed(id=r[0], fence=r[1], attempts=r[2], row=r) for r in rows]
    claimed.sort(key=lambda item: item.id)
    return claimed


def _claim_where(
    conn: sa.Connection,
    table: sa.Table,
    condition: sa.ColumnElement[bool],
    owner: str,
    limit: int,
    lease_seconds: float,
    returning: Sequence[sa.Column],
) -> list[sa.Row]:
    c = table.c
    candidates = sa.select(c.id).where(condition).order_by(c.due_at, c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    stmt = (
        sa.update(table)
        .where(c.id.in_(candidates.scalar_subquery()))
        .values(
            state=ClaimState.RUNNING,
            lease_owner=owner,
            fence=c.fence + 1,
            attempts=c.attempts + 1,
            lease_expires_at=sql_now(lease_seconds),
        )
        .returning(c.id, c.fence, c.attempts, *returning)
    )
    return list(conn.execute(stmt).all())


def holds(table: sa.Table, row_id: int, fence: int) -> sa.ColumnElement[bool]:
    """The WHERE clause of every write a holder makes: its row, its fence, still running."""
    c = table.c
    return sa.and_(c.id == row_id, c.fence == fence, c.state == ClaimState.RUNNING)


def renew(conn: sa.Connection, table: sa.Table, row_id: int, fence: int, lease_seconds: float) -> bool:
    """Extend a lease that is still valid. False means the lease is lost: stop working on the row.

    A lease that already expired is not revived, even if nobody took the row yet: the holder may
    have been paused, and another claimer may be about to take it.
    """
    stmt = (
        sa.update(table)
        .where(holds(table, row_id, fence), table.c.lease_expires_at > sql_now())
        .values(lease_expires_at=sql_now(lease_seconds))
    )
    return conn.execute(stmt).rowcount == 1


def renew_all(conn: sa.Connection, table: sa.Table, held: Sequence[tuple[int, int]], lease_seconds: float) -> set[int]:
    """:func:`renew` for many ``(id, fence)`` rows in one statement; returns the ids still held."""
    if not held:
        return set()
    c = table.c
    if conn.dialect.name == "postgresql":
        # Lock the rows in id order first: another transaction updating several of them (a batch
        # finishing its jobs, in id order) then cannot deadlock with this one.
        conn.execute(sa.select(c.id).where(sa.tuple_(c.id, c.fence).in_(list(held))).order_by(c.id).with_for_update())
    stmt = (
        sa.update(table)
        .where(
            sa.tuple_(c.id, c.fence).in_(list(held)),
            c.state == ClaimState.RUNNING,
            c.lease_expires_at > sql_now(),
        )
        .values(lease_expires_at=sql_now(lease_seconds))
        .returning(c.id)
    )
    return set(conn.execute(stmt).scalars())


def finish(conn: sa.Connection, table: sa.Table, row_id: int, fence: int, **values: Any) -> bool:
    """Fenced final write (done, dead, rescheduled). False means another holder owns the row now."""
    values.setdefault("lease_owner", None)
    values.setdefault("lease_expires_at", None)
    return conn.execute(sa.update(table).where(holds(table, row_id, fence)).values(**values)).rowcount == 1
