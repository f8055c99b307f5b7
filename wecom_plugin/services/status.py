"""Readiness and runtime status, shared by ``/readyz``, ``/status`` and ``wecom-plugin status``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from wecom_plugin.extensions import db
from wecom_plugin.runtime import heartbeat, queue


def migration_heads() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from wecom_plugin.settings import REPO_ROOT

    config = Config()
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    return set(ScriptDirectory.from_config(config).get_heads())


def current_revisions(conn: sa.Connection) -> set[str]:
    if not sa.inspect(conn).has_table("alembic_version"):
        return set()
    return set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def readiness() -> tuple[bool, dict[str, Any]]:
    checks: dict[str, Any] = {}
    try:
        with db.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            conn.execute(sa.text("SELECT 1"))
            checks["database"] = "ok"
            current, heads = current_revisions(conn), migration_heads()
            checks["schema"] = (
                "ok" if current == heads else f"at {sorted(current) or 'nothing'}, head is {sorted(heads)}"
            )
    except sa.exc.SQLAlchemyError as exc:
        checks["database"] = f"unreachable: {exc.__class__.__name__}"
    ready = checks.get("database") == "ok" and checks.get("schema") == "ok"
    return ready, checks


def runtime_status(settings) -> dict[str, Any]:
    with db.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        procs = heartbeat.processes(conn, settings.heartbeat_stale_seconds)
        jobs = queue.counts_by_state(conn)
        open_alerts = conn.execute(sa.text("SELECT count(*) FROM alert WHERE state = 'open'")).scalar_one()
        directory = directory_summary(conn)
    workers = [p for p in procs if p["kind"] == "worker" and p["fresh"]]
    clocks = [p for p in procs if p["kind"] == "clock" and p["fresh"]]
    return {
        "workers": {"fresh": len(workers), "processes": [p for p in procs if p["kind"] == "worker"]},
        "clocks": {"fresh": len(clocks), "processes": [p for p in procs if p["kind"] == "clock"]},
        "jobs": jobs,
        "open_alerts": open_alerts,
        "directory": directory,
        "healthy": bool(workers) and bool(clocks),
    }


def directory_summary(conn: sa.Connection) -> dict[str, Any]:
    """Members by status, the last sync and whether a brake waits for a person (for /status)."""
    from wecom_plugin.services.directory_status import status

    info = status(conn)
    last = info["last_sync"]
    return {
        "members": info["members"],
        "last_sync": None if last is None else {k: last[k] for k in ("id", "state", "trigger", "finished_at")},
        "pending_brake": info["pending_brake"] is not None,
        "outbox_pending": info["outbox_pending"],
    }
