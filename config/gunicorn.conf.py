"""gunicorn settings: ``gunicorn wsgi:app -c config/gunicorn.conf.py``.

Reads PORT and WEB_CONCURRENCY. Sync workers are fine: the callback endpoint only stores and
acknowledges (it never calls WeCom inline), so no request holds a worker for long.
"""

import os
import sys

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
# WeCom gives up on a callback after 5 s; a request still running after that helps nobody.
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
# Don't advertise the server version.
proc_name = "wecom-plugin-web"


def on_starting(server):
    """Validate settings once in the master, so a bad value is one line and a non-zero exit."""
    sys.path.insert(0, os.getcwd())
    from wecom_plugin.errors import ConfigurationError
    from wecom_plugin.settings import load_settings

    try:
        load_settings()
    except ConfigurationError as exc:
        print(f"wecom-plugin: configuration error: {exc}", file=sys.stderr)
        os._exit(2)
