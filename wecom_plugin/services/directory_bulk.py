"""Inserting many new members at once (a first sync: 100,000 people and 100,000 history rows).

SQLAlchemy's multi-row INSERT passes every value through its type processors and, on PostgreSQL,
sends statements with tens of thousands of placeholders that the driver re-parses each time: that
was most of a first sync (docs/benchmarks.md). Here the rows go to a temporary staging table in the
driver's fastest bulk form (``COPY`` on PostgreSQL, ``executemany`` on SQLite) and one
``INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`` moves them into ``person``, so a member
inserted meanwhile by a callback is skipped exactly as before. On PostgreSQL the history rows are
written by the same statement; on SQLite by a second ``INSERT … SELECT``.

Values are stored as the ORM stores them: JSON arrays as JSON text (compact here, which readers
parse the same), UTC times as ``timestamptz`` on PostgreSQL and as naive UTC text in SQLAlchemy's
``YYYY-MM-DD HH:MM:SS.ffffff`` form on SQLite.

Joins the caller's transaction; never commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import sqlalchemy as sa

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import MemberRecord
from wecom_plugin.models.base import dialect_name

if TYPE_CHECKING:
    from wecom_plugin.services.directory_mirror import Origin

# Constant SQL only: no value is ever formatted into these strings.
_PERSON_COLUMNS = (
    "userid, userid_folded, name, departments, main_department, position, is_leader_in_dept, direct_leaders, "
    "status, employee_id, fingerprint"
)
_STAGE_INSERT = f"INSERT INTO temp.person_stage ({_PERSON_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_STAGE_COPY = f"COPY person_stage ({_PERSON_COLUMNS}) FROM STDIN"


def _person_insert(now: str, returning: str = "") -> str:
    """Stage -> person; ``now`` is the dialect's placeholder for the current time (a constant)."""
    return (
        f"INSERT INTO person ({_PERSON_COLUMNS}, departed_at, created_at, updated_at) "  # noqa: S608 - constants
        f"SELECT {_PERSON_COLUMNS}, CASE WHEN status = {rules.LEFT} THEN {now} END, {now}, {now} "
        "FROM person_stage WHERE true "  # WHERE: SQLite needs it to parse ON CONFLICT after a SELECT
        "ON CONFLICT (userid_folded) DO NOTHING" + returning
    )


_PG_INSERT = (
    "WITH ins AS (" + _person_insert("%(now)s::timestamptz", " RETURNING id, userid, status") + ") "  # noqa: S608 - constants
    "INSERT INTO directory_change (occurred_at, kind, person_id, detail, source, sync_id, inbox_id) "
    "SELECT %(now)s::timestamptz, 'hired', id, jsonb_build_object('userid', userid, 'status', status), "
    "%(source)s, %(sync_id)s::integer, %(inbox_id)s::bigint FROM ins"
)
_SQLITE_INSERT = _person_insert("?")
# SQLite: the caller's transaction holds the write lock and rowids grow, so the rows above the
# highest id before the insert are exactly the ones it added: their history is written in SQL.
_SQLITE_HISTORY = (
    "INSERT INTO directory_change (occurred_at, kind, person_id, detail, source, sync_id, inbox_id) "
    "SELECT ?, 'hired', id, json_object('userid', userid, 'status', status), ?, ?, ? FROM person WHERE id > ?"
)


def _stage_row(rec: MemberRecord) -> tuple:
    return (
        rec.userid,
        rec.folded,
        rec.name,
        orjson.dumps(rec.departments).decode(),  # tuples serialise as JSON arrays
        rec.main_department,
        rec.position,
        orjson.dumps(rec.is_leader_in_dept).decode(),
        orjson.dumps(rec.direct_leaders).decode(),
        rec.status,
        rec.employee_id,
        rec.fingerprint(),
    )


def insert_new_members(conn: sa.Connection, records: Sequence[MemberRecord], origin: Origin, now: datetime) -> int:
    """Insert ``records`` (distinct folded userids) with a ``hired`` history row each; people whose
    folded userid exists by now are skipped. Returns the number inserted."""
    if not records:
        return 0
    rows = [_stage_row(rec) for rec in records]
    if dialect_name(conn) == "postgresql":
        return _postgresql(conn, rows, origin, now)
    return _sqlite(conn, rows, origin, now)


def _postgresql(conn: sa.Connection, rows: list[tuple], origin: Origin, now: datetime) -> int:
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS person_stage (userid text, userid_folded text, name text, "
        "departments jsonb, main_department bigint, position text, is_leader_in_dept jsonb, "
        "direct_leaders jsonb, status smallint, employee_id text, fingerprint text) ON COMMIT DELETE ROWS"
    )
    conn.exec_driver_sql("TRUNCATE person_stage")
    driver = conn.connection.driver_connection
    with driver.cursor() as cur, cur.copy(_STAGE_COPY) as copy:
        for row in rows:
            copy.write_row(row)
    result = conn.exec_driver_sql(_PG_INSERT, {"now": now, **origin.columns()})
    return result.rowcount


def _sqlite(conn: sa.Connection, rows: list[tuple], origin: Origin, now: datetime) -> int:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS person_stage (userid TEXT, userid_folded TEXT, name TEXT, "
        "departments TEXT, main_department INTEGER, position TEXT, is_leader_in_dept TEXT, "
        "direct_leaders TEXT, status INTEGER, employee_id TEXT, fingerprint TEXT)"
    )
    conn.exec_driver_sql("DELETE FROM temp.person_stage")
    conn.exec_driver_sql(_STAGE_INSERT, rows)
    before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM person").scalar_one()
    inserted = conn.exec_driver_sql(_SQLITE_INSERT, (stamp, stamp, stamp)).rowcount
    conn.exec_driver_sql("DELETE FROM temp.person_stage")
    if inserted:
        columns = origin.columns()
        conn.exec_driver_sql(
            _SQLITE_HISTORY, (stamp, columns["source"], columns["sync_id"], columns["inbox_id"], before)
        )
    return inserted
