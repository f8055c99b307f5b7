"""The WeCom send budget shared by every process: a :class:`~wecom_plugin.wecom.budget.Budget` on the
``rate_counter`` table.

Each (limit, key) has one counter row per fixed window of the **database clock** (minutes, hours, natural
days in the corp's time zone), named by :func:`~wecom_plugin.wecom.budget.bucket`. Spending is one atomic
conditional upsert per counter::

    INSERT INTO rate_counter (bucket, window_start, count) VALUES (:bucket, :start, :n)
    ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_counter.count + :n
        WHERE rate_counter.count + :n <= :allowed
    RETURNING count

No row back means the window is spent: nothing is added, and the caller is told when the window ends.
Counters of one limit and window are taken in one multi-row statement (``VALUES`` of many rows on SQLite,
two arrays through ``unnest`` on PostgreSQL; ``+ excluded.count``), so a message to a 2,000-member chat
costs a handful of statements, not 4,000.
On PostgreSQL the upsert locks the counter row, so concurrent spenders queue on it and each sees the
count the previous one committed; on SQLite the transaction holds the write lock (``BEGIN IMMEDIATE``).
Several counters are taken in one transaction, in bucket order (no deadlocks), all or nothing. Each call
is its own short transaction on the engine, never ``db.session``. Old windows are pruned with the other
rate counters by :mod:`wecom_plugin.services.retention`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa

from wecom_plugin.models.api_clients import RateCounter
from wecom_plugin.models.base import insert_for
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.wecom.budget import (
    CORP,
    Ask,
    Grant,
    Limit,
    LimitTable,
    block_bucket,
    bucket,
    denied_grant,
    previous_window_start,
    window_bounds,
)

RATE = RateCounter.__table__
BATCH_ROWS = 500  # counters per statement (SQLite binds at most 32,766 parameters)


@functools.lru_cache(maxsize=256)
def _create_at_zero(n: int) -> sa.TextClause:
    """``INSERT .. ON CONFLICT DO NOTHING`` of ``n`` counters at zero, bound by name (``b0``.., ``start``).

    Written as text, built once per shape: SQLAlchemy gives a multi-row ``VALUES`` no cache key and
    compiled it anew on every call (0.8-1 ms for 30 rows, a third of a bulletin's CPU). SQLite (3.35+);
    PostgreSQL uses the array form below."""
    # Only placeholders are interpolated (names built from integers); every value is bound.
    values = ", ".join(f"(:b{i}, :start, 0)" for i in range(n))
    return sa.text(
        f"INSERT INTO rate_counter (bucket, window_start, count) VALUES {values} "  # noqa: S608
        "ON CONFLICT (bucket, window_start) DO NOTHING"
    )


_PREVIOUS_WINDOW = (
    " + COALESCE((SELECT SUM(previous.count) FROM rate_counter AS previous"
    " WHERE previous.bucket = rate_counter.bucket AND previous.window_start = :previous_start), 0)"
)


def _upsert(rows: str, spans_two_windows: bool) -> sa.TextClause:
    """The spend (see the module docstring) of the counters ``rows`` gives (a ``VALUES`` list or a ``SELECT``),
    returning the buckets that had room."""
    previous = _PREVIOUS_WINDOW if spans_two_windows else ""
    return sa.text(
        f"INSERT INTO rate_counter (bucket, window_start, count) {rows} "  # noqa: S608 - placeholders only
        "ON CONFLICT (bucket, window_start) DO UPDATE SET count = rate_counter.count + excluded.count "
        f"WHERE rate_counter.count{previous} + excluded.count <= :allowed RETURNING rate_counter.bucket"
    )


@functools.lru_cache(maxsize=256)
def _conditional_upsert(n: int, spans_two_windows: bool) -> sa.TextClause:
    """The spend of ``n`` counters of one window, bound by name: ``b<i>`` and ``n<i>`` per counter, ``start``,
    ``allowed`` and (two windows) ``previous_start``. Text for the reason :func:`_create_at_zero` gives."""
    # Only placeholders are interpolated (names built from integers); every value is bound.
    return _upsert("VALUES " + ", ".join(f"(:b{i}, :start, :n{i})" for i in range(n)), spans_two_windows)


# PostgreSQL: the same statements with the counters as two arrays (``unnest``), so the SQL text is one short
# constant whatever the number of counters. psycopg parses every statement's text to convert its
# placeholders and caches that only for short texts: a VALUES list of 150 counters was parsed anew on every
# spend (about 2 ms, most of a batched bulletin send's cost on PostgreSQL).
_PG_ROWS = (
    "SELECT t.b, :start, {count} FROM unnest(CAST(:buckets AS varchar[]), CAST(:counts AS integer[])) AS t(b, n) "
    'ORDER BY t.b COLLATE "C"'  # the fixed lock order: merged sorts by code point, as the C collation does
)
_PG_CREATE_AT_ZERO = sa.text(
    "INSERT INTO rate_counter (bucket, window_start, count) "
    + _PG_ROWS.format(count="0")
    + " ON CONFLICT (bucket, window_start) DO NOTHING"
)
_PG_BLOCKED = sa.text(
    "SELECT bucket, MAX(window_start) FROM rate_counter "
    "WHERE bucket = ANY(CAST(:names AS varchar[])) AND window_start > :epoch GROUP BY bucket"
)


@functools.lru_cache(maxsize=4)
def _pg_conditional_upsert(spans_two_windows: bool) -> sa.TextClause:
    """:func:`_conditional_upsert` on PostgreSQL: the counters as the arrays ``buckets`` and ``counts``."""
    return _upsert(_PG_ROWS.format(count="t.n"), spans_two_windows)


class DbBudget(LimitTable):
    """The database :class:`~wecom_plugin.wecom.budget.Budget` (SQLite and PostgreSQL).

    Args:
        engine: the application's engine (``db.engine``).
        corp_size: ``settings.corp_size`` (the hourly app-chat cap).
        headroom: the share of each WeCom limit granted (default 0.9).
        timezone: the corp's zone for day windows (``settings.timezone``, Asia/Shanghai).
        limits, extra: replace or extend the named limits (tests, a licence-based daily cap).

    ``now`` (an aware datetime) may be given to the methods to stand in for the database clock (tests).
    """

    def __init__(self, engine: sa.Engine, **options) -> None:
        super().__init__(**options)
        self._engine = engine

    def acquire(self, limit_name: str, key: str = CORP, n: int = 1, *, now: datetime | None = None) -> Grant:
        return self.acquire_many([Ask(limit_name, key, n)], now=now)

    def acquire_many(self, asks: Iterable[Ask | tuple[str, str, int]], *, now: datetime | None = None) -> Grant:
        plan = self.merged(asks)
        if not plan:
            return Grant(True)
        with self._engine.connect() as conn:
            trans = conn.begin()  # SQLite: BEGIN IMMEDIATE
            try:
                grant = self._acquire(conn, plan, now)
                if grant.ok:
                    trans.commit()
                else:
                    trans.rollback()  # all or nothing: undo the counters this call did take
            except BaseException:
                if trans.is_active:
                    trans.rollback()
                raise
        return grant

    def acquire_in(
        self, conn: sa.Connection, asks: Iterable[Ask | tuple[str, str, int]], *, now: datetime | None = None
    ) -> Grant:
        """:meth:`acquire_many` inside the caller's transaction, so a spend commits with the caller's own
        writes (one transaction instead of two). On a refusal some counters may have been taken: the
        caller must roll its transaction back (all or nothing is then the caller's)."""
        plan = self.merged(asks)
        return self._acquire(conn, plan, now) if plan else Grant(True)

    def _acquire(self, conn: sa.Connection, plan: list[tuple[Limit, str, int]], now: datetime | None) -> Grant:
        current = now or db_now(conn)
        epoch = current.timestamp()
        blocked = self._blocked(conn, plan, epoch)
        for limit, start, end, rows in self._batches(plan, epoch):
            if not self._take(conn, limit, start, rows) and (blocked is None or end > blocked[0]):
                blocked = (end, limit.name)
        return Grant(True) if blocked is None else denied_grant(blocked[0], blocked[1], epoch)

    def _batches(self, plan: list[tuple[Limit, str, int]], epoch: float):
        """The plan as (limit, window start, window end, [(bucket, n)]) batches, in bucket order."""
        batches: dict[tuple[str, int], tuple[Limit, int, list[tuple[str, int]]]] = {}
        bounds: dict[str, tuple[int, int]] = {}  # per window kind: a plan may hold thousands of counters
        for limit, key, n in plan:
            start, end = bounds.get(limit.window) or bounds.setdefault(
                limit.window, window_bounds(limit.window, epoch, self.timezone)
            )
            batches.setdefault((limit.name, start), (limit, end, []))[2].append((bucket(limit.name, key), n))
        for (_name, start), (limit, end, rows) in sorted(batches.items()):
            for i in range(0, len(rows), BATCH_ROWS):
                yield limit, start, end, rows[i : i + BATCH_ROWS]

    def _take(self, conn: sa.Connection, limit: Limit, start: int, rows: list[tuple[str, int]]) -> bool:
        """One multi-row conditional upsert; True if every counter had room (those without room are unchanged).

        A limit that spans two windows (silent minute and hour limits, see ``Limit.spans_two_windows``)
        also counts each counter's previous window: its rows are created at zero first, so the
        condition, which reads the previous window in a subquery, applies to every spend."""
        params: dict[str, object] = {"start": start, "allowed": limit.allowed(self.headroom)}
        if limit.spans_two_windows:
            params["previous_start"] = previous_window_start(limit.window, start)
        if conn.dialect.name == "postgresql":
            params["buckets"], params["counts"] = [b for b, _n in rows], [n for _b, n in rows]
            if limit.spans_two_windows:
                conn.execute(_PG_CREATE_AT_ZERO, params)
            return len(conn.execute(_pg_conditional_upsert(limit.spans_two_windows), params).all()) == len(rows)
        for i, (b, n) in enumerate(rows):
            params[f"b{i}"], params[f"n{i}"] = b, n
        if limit.spans_two_windows:
            conn.execute(_create_at_zero(len(rows)), params)
        upsert = _conditional_upsert(len(rows), limit.spans_two_windows)
        return len(conn.execute(upsert, params).all()) == len(rows)

    def _blocked(self, conn: sa.Connection, plan: list[tuple[Limit, str, int]], epoch: float) -> tuple[int, str] | None:
        """The latest block (after a 45009) still in force on any limit of the plan."""
        names = {block_bucket(limit.name, key): limit.name for limit, key, _n in plan}
        # A block is a row whose window_start is the block's end: retention prunes it once it is over.
        if conn.dialect.name == "postgresql":
            rows = conn.execute(_PG_BLOCKED, {"names": list(names), "epoch": int(epoch)}).all()
        else:
            rows = conn.execute(
                sa.select(RATE.c.bucket, sa.func.max(RATE.c.window_start))
                .where(RATE.c.bucket.in_(names), RATE.c.window_start > epoch)
                .group_by(RATE.c.bucket)
            ).all()
        live = [(int(until), names[name]) for name, until in rows]
        return max(live) if live else None

    def exhaust(
        self, limit_name: str, key: str = CORP, *, block_seconds: float | None = None, now: datetime | None = None
    ) -> None:
        """WeCom answered 45009: count the current window of ``limit_name``/``key`` as used up, and,
        with ``block_seconds``, refuse the limit to every process until WeCom's block ends (a minute
        limit blocks 60 s, an hour limit an hour from the hit, not until the next window)."""
        limit = self.limit(limit_name)
        allowed = limit.allowed(self.headroom)
        with self._engine.begin() as conn:
            current = now or db_now(conn)
            if block_seconds:
                until = int(current.timestamp() + block_seconds) + 1
                conn.execute(
                    insert_for(conn, RATE)
                    .values(bucket=block_bucket(limit.name, key), window_start=until, count=1)
                    .on_conflict_do_nothing(index_elements=[RATE.c.bucket, RATE.c.window_start])
                )
            start, _end = window_bounds(limit.window, current.timestamp(), self.timezone)
            conn.execute(
                insert_for(conn, RATE)
                .values(bucket=bucket(limit.name, key), window_start=start, count=allowed)
                .on_conflict_do_update(
                    index_elements=[RATE.c.bucket, RATE.c.window_start],
                    set_={"count": sa.case((RATE.c.count < allowed, allowed), else_=RATE.c.count)},
                )
            )

    def usage(self, limit_name: str, key: str = CORP, *, now: datetime | None = None) -> tuple[int, int]:
        """``(spent, allowed)`` in the current window of ``limit_name``/``key`` (for status pages and tests)."""
        limit = self.limit(limit_name)
        with self._engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
            current = now or db_now(conn)
            start, _end = window_bounds(limit.window, current.timestamp(), self.timezone)
            spent = conn.execute(
                sa.select(RATE.c.count).where(RATE.c.bucket == bucket(limit.name, key), RATE.c.window_start == start)
            ).scalar_one_or_none()
        return int(spent or 0), limit.allowed(self.headroom)
