"""Fixed-window rate limiting shared by every web process: the database is the store.

Each request adds one to its bucket's counter for the current one-minute window (database clock)
with a single atomic ``INSERT ... ON CONFLICT (bucket, window_start) DO UPDATE SET count =
count + 1 RETURNING count`` (PostgreSQL; SQLite 3.35+). The hit commits in its own short
transaction on its own connection, so it counts even when the request then fails and rolls
back. A fixed window lets a caller send up to twice the limit across a window boundary; that is
accepted for its simplicity. Old windows are pruned by :mod:`wecom_plugin.services.retention`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from wecom_plugin.models.api_clients import RateCounter
from wecom_plugin.models.base import insert_for
from wecom_plugin.models.dbtime import db_now

WINDOW_SECONDS = 60
RATE = RateCounter.__table__


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    count: int  # requests in this window, this one included
    remaining: int  # requests still allowed in this window
    retry_after: int  # whole seconds until the window ends (at least 1)


def hit(engine: sa.Engine, bucket: str, *, limit: int, now: datetime | None = None) -> RateDecision:
    """Count one request against ``bucket`` and say whether it is within ``limit`` per minute.

    Commits on its own connection; do not call it while this thread holds an open SQLite write
    transaction on another connection (it would wait for that lock). ``now`` defaults to the
    database clock; pass a value read from it to save a round trip.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    with engine.begin() as conn:
        if now is None:
            now = db_now(conn)
        epoch = now.timestamp()
        window_start = int(epoch // WINDOW_SECONDS) * WINDOW_SECONDS
        insert = insert_for(conn, RATE).values(bucket=bucket[:200], window_start=window_start, count=1)
        upsert = insert.on_conflict_do_update(
            index_elements=[RATE.c.bucket, RATE.c.window_start],
            set_={"count": RATE.c.count + 1},
        ).returning(RATE.c.count)
        count = int(conn.execute(upsert).scalar_one())
    retry_after = max(1, math.ceil(window_start + WINDOW_SECONDS - epoch))
    return RateDecision(
        allowed=count <= limit,
        limit=limit,
        count=count,
        remaining=max(0, limit - count),
        retry_after=retry_after,
    )
