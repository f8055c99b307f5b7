"""The app factory and import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.procs import REPO_ROOT

IMPORT_EVERYTHING = """
import gc, json, logging, pkgutil, importlib, os, sys
import sqlalchemy as sa
import wecom_plugin
found = pkgutil.walk_packages(wecom_plugin.__path__, "wecom_plugin.")
modules = [m.name for m in found if not m.name.endswith("__main__")]
for name in modules:
    importlib.import_module(name)
import flask
print(json.dumps({
    "modules": len(modules),
    "root_handlers": len(logging.getLogger().handlers),
    "engines": sum(1 for o in gc.get_objects() if isinstance(o, sa.Engine)),
    "apps": sum(1 for o in gc.get_objects() if isinstance(o, flask.Flask)),
    "instance_dir": os.path.exists(os.path.join(os.getcwd(), "instance")),
}))
"""


def test_importing_every_module_has_no_side_effects(tmp_path):
    # Run from an empty folder with no configuration: nothing may be created or configured.
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["modules"] > 20
    assert report == {**report, "root_handlers": 0, "engines": 0, "apps": 0, "instance_dir": False}
    assert result.stderr == ""


def test_create_app_binds_extensions_per_app(make_app, tmp_path):
    from wecom_plugin.extensions import db

    first = make_app()
    second = make_app(DATABASE_URL=f"sqlite:///{tmp_path / 'other.sqlite3'}")
    with first.app_context():
        first_url = str(db.engine.url)
    with second.app_context():
        second_url = str(db.engine.url)
    assert first_url != second_url


def test_sqlite_connections_use_wal_and_a_busy_timeout(sqlite_app):
    import sqlalchemy as sa

    from wecom_plugin.extensions import db

    with sqlite_app.app_context(), db.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar_one() == 30000
