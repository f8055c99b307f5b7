"""Process heartbeats: workers and clocks say they are alive, so nobody forgets to run them.

``/status`` and ``wecom-plugin status`` report each process's age; ``/readyz`` deliberately does
not depend on them (a dead worker must not take the web tier, and so WeCom's callbacks, down).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime

import sqlalchemy as sa

from wecom_plugin.models.base import insert_for
from wecom_plugin.models.dbtime import sql_now
from wecom_plugin.models.jobs import ProcessHeartbeat

HEARTBEAT = ProcessHeartbeat.__table__


def beat(engine: sa.Engine, process: str, kind: str, *, jobs_done: int = 0, state: str = "running") -> None:
    """Upsert this process's heartbeat row (its own short transaction)."""
    with engine.begin() as conn:
        insert = insert_for(conn, HEARTBEAT).values(
            id=process,
            kind=kind,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=sql_now(),
            last_seen_at=sql_now(),
            state=state,
            jobs_done=jobs_done,
        )
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["id"],
                set_={"last_seen_at": sql_now(), "state": state, "jobs_done": jobs_done},
            )
        )


def processes(conn: sa.Connection | sa.orm.Session, stale_after: float) -> list[dict]:
    """Every known process with its age in seconds (database clock) and whether it is fresh."""
    rows = conn.execute(
        sa.select(HEARTBEAT, sql_now().label("now")).order_by(HEARTBEAT.c.kind, HEARTBEAT.c.last_seen_at.desc())
    ).all()
    result = []
    for row in rows:
        now: datetime = row.now
        age = (now - row.last_seen_at).total_seconds()
        result.append(
            {
                "id": row.id,
                "kind": row.kind,
                "state": row.state,
                "pid": row.pid,
                "hostname": row.hostname,
                "last_seen_age_seconds": round(age, 1),
                "fresh": row.state == "running" and age <= stale_after,
                "jobs_done": row.jobs_done,
            }
        )
    return result
