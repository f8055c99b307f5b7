"""Engine configuration per backend.

SQLite (the default) gets WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every transaction.
pysqlite's own transaction handling is switched off so we emit BEGIN ourselves: a deferred
transaction that reads and then writes can fail at once with SQLITE_BUSY when another process
holds the write lock (busy_timeout does not help an upgrade), so every transaction takes the
write lock up front. SQLite has one writer at a time anyway; WAL keeps readers unblocked.
A read-only path may opt out with ``execution_options(sqlite_begin="DEFERRED")``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from wecom_plugin.settings import Settings


def engine_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` (SQLALCHEMY_ENGINE_OPTIONS)."""
    if settings.is_sqlite:
        return {"connect_args": {"timeout": settings.sqlite_busy_timeout, "check_same_thread": False}}
    return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}


def configure_engine(engine: sa.Engine, settings: Settings) -> None:
    """Attach per-connection setup; call once per engine."""
    if engine.dialect.name != "sqlite":
        return
    busy_ms = int(settings.sqlite_busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module docstring)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash or power
        # loss can lose the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")
