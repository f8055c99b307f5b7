"""wecom-plugin: make a WeCom tenant's group rules (微信群管理办法) hold.

:func:`create_app` is the only way to build the application. Importing the package (or any of
its modules) creates no app, opens no connection and configures no logging.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

__all__ = ["create_app"]


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app: settings (validated), extensions, blueprints, CLI.

    Args:
        overrides: setting values that win over the environment and ``config/default.py``;
            tests and the demo use them.

    Raises:
        wecom_plugin.settings.SettingsError: a setting is missing or malformed.
    """
    from werkzeug.middleware.proxy_fix import ProxyFix

    from wecom_plugin import database, web
    from wecom_plugin.extensions import db, migrate
    from wecom_plugin.runtime import registry
    from wecom_plugin.settings import REPO_ROOT, SettingsError, load_settings

    app = Flask(__name__, instance_path=str(REPO_ROOT / "instance"), instance_relative_config=True)
    settings = load_settings(overrides, instance_path=app.instance_path)
    if settings.is_sqlite:
        os.makedirs(app.instance_path, exist_ok=True)

    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=database.engine_options(settings),
        # WeCom callbacks and API calls are small; bigger bodies are refused before parsing.
        MAX_CONTENT_LENGTH=64 * 1024,
        TESTING=bool((overrides or {}).get("TESTING", False)),
        WECOM_SETTINGS=settings,
    )
    app.extensions["wecom_settings"] = settings

    db.init_app(app)
    with app.app_context():
        database.configure_engine(db.engine, settings)
    migrate.init_app(app, db, directory=str(REPO_ROOT / "migrations"), compare_type=True)

    try:
        registry.load_job_modules(settings.job_modules)
    except ImportError as exc:
        raise SettingsError("WECOM_PLUGIN_JOB_MODULES", f"cannot import {exc.name or exc}") from None

    if settings.proxy_fix_x_for or settings.proxy_fix_x_proto:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_fix_x_for, x_proto=settings.proxy_fix_x_proto)

    web.init_app(app)
    # The same commands on app.cli, so `flask --app wecom_plugin` and app.test_cli_runner() see them.
    from wecom_plugin.cli import cli

    for name, command in cli.commands.items():
        app.cli.add_command(command, name)
    for warning in settings.warnings:
        app.logger.warning("%s", warning)
    return app
