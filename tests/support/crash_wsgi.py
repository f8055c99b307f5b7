"""A test-only gunicorn target that SIGKILLs its own web worker at a chosen point of one request.

``gunicorn tests.support.crash_wsgi:app -c config/gunicorn.conf.py``: the production app built by
``create_app()`` exactly as ``wsgi.py`` does, wrapped so that a request carrying the header
``X-Test-Crash: <point>`` kills the worker process serving it (SIGKILL: no cleanup, no rollback, no
answer) at that point:

* ``before_commit``: when that request's transaction is about to ``COMMIT`` (the inbox row and its
  dispatch job have been written inside the transaction, nothing is committed);
* ``before_response``: after the view returned (the inbox transaction committed), before any byte
  of the response is written to the socket;
* ``after_response``: after the whole response was written to the socket (gunicorn calls the
  body's ``close()`` then).

Requests without the header are served unchanged. Production code is not touched: the hooks are
a SQLAlchemy engine event and a WSGI middleware, both added here.
"""

from __future__ import annotations

import os
import signal
from contextvars import ContextVar

import sqlalchemy as sa

from tests.support.callback_load import CRASH_HEADER as HEADER
from tests.support.callback_load import CRASH_POINTS as POINTS
from wecom_plugin import create_app
from wecom_plugin.cli import configure_logging
from wecom_plugin.extensions import db
from wecom_plugin.settings import merged_values

_ENVIRON_KEY = "HTTP_" + HEADER.upper().replace("-", "_")
_point: ContextVar[str | None] = ContextVar("crash_point", default=None)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterClose:
    """The response body, unchanged; closing it (after the last byte was sent) kills the worker."""

    def __init__(self, body):
        self._body = body

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
        _die()


def build():
    flask_app = create_app()
    with flask_app.app_context():

        @sa.event.listens_for(db.engine, "commit")
        def _before_commit(_conn) -> None:
            if _point.get() == "before_commit":
                _die()

    inner = flask_app.wsgi_app

    def middleware(environ, start_response):
        point = environ.get(_ENVIRON_KEY)
        if point not in POINTS:
            return inner(environ, start_response)
        token = _point.set(point)
        try:
            body = inner(environ, start_response)
        finally:
            _point.reset(token)
        if point == "before_response":
            _die()
        return _KillAfterClose(body) if point == "after_response" else body

    flask_app.wsgi_app = middleware
    return flask_app


configure_logging(merged_values().get("LOG_LEVEL", "INFO").upper())
app = build()
