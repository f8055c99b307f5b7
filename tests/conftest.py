"""Shared fixtures.

Databases: every test that takes ``db_url`` gets a fresh database migrated to head, on SQLite
and, when ``WECOM_TEST_POSTGRES_URL`` is set (CI sets it), on PostgreSQL too. A migrated
template is built once per run and copied per test, so a fresh database costs milliseconds.
PostgreSQL cases are skipped, with that reason, when no URL is given.

The environment is cleared of every setting the plugin reads, so a developer's shell cannot
leak into a test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from wecom_plugin.settings import default_values

# The sandbox tenant's `emulator` fixture, available to every test.
pytest_plugins = ["tests.support.emulator"]

POSTGRES_URL = os.environ.get("WECOM_TEST_POSTGRES_URL", "")
REPO_ROOT = Path(__file__).resolve().parents[1]
SETTING_NAMES = set(default_values()) | {
    "SECRET_KEY", "WECOM_CORP_ID", "WECOM_AGENT_ID", "WECOM_SECRET", "WECOM_CONTACT_SECRET",
    "WECOM_CALLBACK_TOKEN", "WECOM_CALLBACK_AES_KEY", "WECOM_CALLBACK_TOKEN_2", "WECOM_CALLBACK_AES_KEY_2",
    "WECOM_CONTACT_CALLBACK_TOKEN", "WECOM_CONTACT_CALLBACK_AES_KEY", "WECOM_CONTACT_CALLBACK_TOKEN_2",
    "WECOM_CONTACT_CALLBACK_AES_KEY_2", "WECOM_PLUGIN_ENCRYPTION_KEY",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    yield
    from tests.support.procs import reap_all

    reap_all()


def sandbox_overrides(database_url: str, **extra: object) -> dict[str, object]:
    return {
        "WECOM_SANDBOX": "true",
        "DATABASE_URL": database_url,
        "TESTING": True,
        "WECOM_PLUGIN_JOB_MODULES": "tests.support.jobs",
        **extra,
    }


def _migrate(database_url: str) -> None:
    from flask_migrate import upgrade

    from wecom_plugin import create_app
    from wecom_plugin.extensions import db

    app = create_app(sandbox_overrides(database_url))
    with app.app_context():
        upgrade()
        db.engine.dispose()


# --- SQLite -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    _migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(_sqlite_template: Path, tmp_path: Path) -> str:
    target = tmp_path / "wecom-plugin.sqlite3"
    shutil.copyfile(_sqlite_template, target)
    return f"sqlite:///{target}"


# --- PostgreSQL ---------------------------------------------------------------------------------
def _pg_admin_engine() -> sa.Engine:
    url = sa.make_url(POSTGRES_URL).set(drivername="postgresql+psycopg")
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _pg_url(database: str) -> str:
    return (
        sa.make_url(POSTGRES_URL)
        .set(drivername="postgresql+psycopg", database=database)
        .render_as_string(hide_password=False)
    )


def _pg_drop(engine: sa.Engine, name: str) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need WECOM_TEST_POSTGRES_URL (./dev test sets it when PostgreSQL runs)")
    name = f"wp_template_{os.getpid()}"
    engine = _pg_admin_engine()
    _pg_drop(engine, name)
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    _migrate(_pg_url(name))
    yield name
    _pg_drop(engine, name)
    engine.dispose()


@pytest.fixture
def postgres_url(_pg_template: str) -> Iterator[str]:
    name = f"wp_{uuid.uuid4().hex[:12]}"
    engine = _pg_admin_engine()
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}"'))
    yield _pg_url(name)
    _pg_drop(engine, name)
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database: once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


# --- app ----------------------------------------------------------------------------------------
@pytest.fixture
def make_app(sqlite_url: str):
    """Build an app on a fresh database; ``make_app(DATABASE_URL=..., **overrides)``."""
    from wecom_plugin import create_app
    from wecom_plugin.extensions import db

    apps = []

    def _make(**overrides: object):
        database_url = str(overrides.pop("DATABASE_URL", sqlite_url))
        app = create_app(sandbox_overrides(database_url, **overrides))
        apps.append(app)
        return app

    yield _make
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def app(make_app, db_url: str):
    """An app on a fresh database (SQLite, and PostgreSQL when configured)."""
    return make_app(DATABASE_URL=db_url)


@pytest.fixture
def sqlite_app(make_app):
    """An app on a fresh SQLite database only (for tests where the backend does not matter)."""
    return make_app()


@pytest.fixture
def recorder() -> Iterator:
    """A real HTTP server on 127.0.0.1 that records what external calls reach it."""
    from tests.support.recorder import Recorder

    server = Recorder()
    server.start()
    yield server
    server.stop()
