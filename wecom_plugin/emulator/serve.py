"""Run the sandbox tenant over real HTTP in a background thread.

``serve(tenant, host, port)`` binds a threaded Werkzeug server (``port=0`` picks a free port) and
returns ``(server, thread)``; ``server.url`` is the API base ending in ``/cgi-bin/``. Stop it with
:func:`stop`, which also wakes threads sleeping in injected faults so shutdown is immediate.
"""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .server import create_emulator_app
from .state import Tenant


class _QuietHandler(WSGIRequestHandler):
    """No per-request access log (benchmarks send many thousands)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def serve(
    tenant: Tenant, host: str = "127.0.0.1", port: int = 0, poll_interval: float = 0.05
) -> tuple[BaseWSGIServer, threading.Thread]:
    """Serve ``tenant`` on ``host:port`` from a daemon thread.

    Returns:
        ``(server, thread)``; ``server.url`` is ``http://host:port/cgi-bin/`` and ``server.base_url``
        is ``http://host:port`` (the admin API is at ``base_url + "/_emulator/"``).
    """
    server = make_server(host, port, create_emulator_app(tenant), threaded=True, request_handler=_QuietHandler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    server.base_url = f"http://{shown}:{bound_port}"  # type: ignore[attr-defined]
    server.url = server.base_url + "/cgi-bin/"  # type: ignore[attr-defined]
    server.tenant = tenant  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": poll_interval}, name="wecom-emulator", daemon=True
    )
    thread.start()
    return server, thread


def stop(server: BaseWSGIServer, thread: threading.Thread, timeout: float = 5.0) -> None:
    """Shut the server down and wait for its thread."""
    tenant = getattr(server, "tenant", None)
    if tenant is not None:
        tenant.release_sleepers()
    server.shutdown()
    server.server_close()
    thread.join(timeout)
