"""The gunicorn target, and the only module-level application object: ``gunicorn wsgi:app``."""

import sys

from wecom_plugin import create_app
from wecom_plugin.cli import configure_logging
from wecom_plugin.errors import ConfigurationError
from wecom_plugin.settings import merged_values

configure_logging(merged_values().get("LOG_LEVEL", "INFO").upper())
try:
    app = create_app()
except ConfigurationError as exc:
    print(f"wecom-plugin: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
