"""Run the sandbox tenant over real HTTP in a background thread.

``serve(tenant, host, port)`` binds a threaded HTTP/1.1 server (:mod:`.httpserver`, or Werkzeug's
with ``server="werkzeug"``; ``port=0`` picks a free port) and
returns ``(server, thread)``; ``server.url`` is the API base ending in ``/cgi-bin/``. Stop it with
:func:`stop`, which also wakes threads sleeping in injected faults so shutdown is immediate.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from .httpserver import LeanWSGIServer
from .server import create_emulator_app
from .state import Tenant


class _QuietHandler(WSGIRequestHandler):
    """No per-request access log (benchmarks send many thousands)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


SERVERS = ("lean", "werkzeug")


def serve(
    tenant: Tenant, host: str = "127.0.0.1", port: int = 0, poll_interval: float = 0.05, server: str | None = None
) -> tuple[Any, threading.Thread]:
    """Serve ``tenant`` on ``host:port`` from a daemon thread.

    Args:
        server: ``"lean"`` (:mod:`.httpserver`, the default: persistent connections, ~5x the
            throughput) or ``"werkzeug"`` (Werkzeug's threaded development server); default from
            ``$WECOM_EMULATOR_SERVER``, else lean.

    Returns:
        ``(server, thread)``; ``server.url`` is ``http://host:port/cgi-bin/`` and ``server.base_url``
        is ``http://host:port`` (the admin API is at ``base_url + "/_emulator/"``).
    """
    kind = server or os.environ.get("WECOM_EMULATOR_SERVER") or "lean"
    if kind not in SERVERS:
        raise ValueError(f"server must be one of {SERVERS}, got {kind!r}")
    app = create_emulator_app(tenant)
    httpd: Any
    if kind == "lean":
        httpd = LeanWSGIServer((host, port), app)
    else:
        httpd = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        httpd.daemon_threads = True
    bound_host, bound_port = httpd.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    httpd.base_url = f"http://{shown}:{bound_port}"
    httpd.url = httpd.base_url + "/cgi-bin/"
    httpd.tenant = tenant
    httpd.kind = kind
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": poll_interval}, name="wecom-emulator", daemon=True
    )
    thread.start()
    return httpd, thread


def stop(server: Any, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Shut the server down and wait for its thread; also stops the tenant's callback senders."""
    tenant = getattr(server, "tenant", None)
    if tenant is not None:
        tenant.release_sleepers()
    server.shutdown()
    server.server_close()
    thread.join(timeout)
    hub = getattr(tenant, "callbacks", None)
    if hub is not None:
        hub.close()
