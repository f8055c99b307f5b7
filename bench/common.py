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
