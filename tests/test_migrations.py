"""One schema history: a single head, and upgrading an empty database gives exactly the models."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import downgrade, upgrade

from wecom_plugin.extensions import db
from wecom_plugin.services.status import migration_heads


def test_there_is_exactly_one_migration_head():
    assert len(migration_heads()) == 1


def test_upgrading_to_head_gives_exactly_the_models_schema(app):
    # `app` runs on a database the fixtures upgraded from empty to head with Alembic.
    with app.app_context(), db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, db.metadata) == []


def test_the_schema_downgrades_to_empty_and_upgrades_again(app):
    with app.app_context():
        downgrade(revision="base")
        with db.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
        upgrade()
        with db.engine.connect() as conn:
            assert {"job", "audit_event", "alert"} <= set(sa.inspect(conn).get_table_names())


def test_revision_files_are_named_for_what_changed():
    from pathlib import Path

    versions = Path(__file__).resolve().parents[1] / "migrations" / "versions"
    for path in versions.glob("*.py"):
        rev, _, slug = path.stem.partition("_")
        assert rev.isdigit() and len(slug) > 10, path.name
