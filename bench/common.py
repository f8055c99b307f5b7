"""Helpers the bench scripts share (run as ``python bench/<script>.py``, so this is importable as ``common``)."""

from __future__ import annotations


def migrate(database_url: str) -> None:
    """Bring ``database_url`` to the schema head, as ``wecom-plugin db upgrade`` does."""
    from flask_migrate import upgrade

    from wecom_plugin import create_app
    from wecom_plugin.extensions import db

    app = create_app({"WECOM_SANDBOX": "true", "DATABASE_URL": database_url})
    with app.app_context():
        upgrade()
        db.session.remove()
        db.engine.dispose()


def run_environment(started: float, emulator_rss_mb: float | None, results: list[dict]) -> dict:
    """What a bench run's JSON records of the machine: date, Python, CPUs, load, elapsed time, and
    each database's version (``results[i]["steps"]["database_version"]``). ``started`` is a
    ``time.monotonic()`` reading from the start of the run."""
    import os
    import platform
    import sqlite3
    import time
    from datetime import UTC, datetime

    env = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "load_average_at_end": list(os.getloadavg()),
        "elapsed_s": round(time.monotonic() - started, 1),
        "emulator_peak_rss_mb": emulator_rss_mb,
    }
    for res in results:
        env[f"{res['database']}_version"] = res["steps"]["database_version"]
    return env
