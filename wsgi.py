"""The gunicorn target, and the only module-level application object: ``gunicorn wsgi:app``."""

import sys

from wecom_plugin import create_app
from wecom_plugin.errors import ConfigurationError

try:
    app = create_app()
except ConfigurationError as exc:
    print(f"wecom-plugin: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
