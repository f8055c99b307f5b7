"""A lean threaded HTTP/1.1 WSGI server for the sandbox tenant (loopback use only).

Werkzeug's development server parses every request with :mod:`http.server` (headers through the
``email`` package) and builds a large environ; with the emulator's handlers costing ~0.1 ms, that
server was most of the time of a request (bench/emulator.py: about 1,000 requests/s). This server
does the minimum HTTP/1.1 a loopback client needs, one thread per connection like Werkzeug's:

* persistent connections (HTTP/1.1 default; ``Connection: close`` and HTTP/1.0 honoured), an idle
  timeout, ``TCP_NODELAY`` and one ``send`` per response;
* request bodies by ``Content-Length`` or ``Transfer-Encoding: chunked``; ``Expect: 100-continue``;
* a WSGI environ with what Werkzeug's ``Request`` reads (percent-decoded ``PATH_INFO``, ``HTTP_*``
  headers, ``REMOTE_ADDR``…); the response is buffered and sent with a ``Content-Length``;
* ``HEAD`` without a body; 400 for a malformed request, 413 over :data:`MAX_BODY`, 500 if the app
  raises (logged).

It is not hardened for the internet (no TLS, no slow-client protection): bind it to loopback.
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import sys
import threading
from typing import Any
from urllib.parse import unquote_to_bytes

log = logging.getLogger(__name__)

MAX_LINE = 65536
MAX_HEADERS = 200
MAX_BODY = 80 * 1024 * 1024
IDLE_TIMEOUT = 120.0
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(socketserver.StreamRequestHandler):
    rbufsize = 64 * 1024
    timeout = IDLE_TIMEOUT
    server: LeanWSGIServer

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not a TCP socket
            pass
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except (TimeoutError, ConnectionError, OSError):
            return

    def _send_error(self, status: int, message: str) -> None:
        body = message.encode("utf-8")
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.wfile.write(head.encode("latin-1") + body)

    def _one_request(self) -> bool:
        rfile = self.rfile
        line = rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if line in (b"\r\n", b"\n"):  # tolerate a stray empty line between requests
            return True
        try:
            method, target, version, headers = self._head(line)
            body = self._body(headers)
        except _BadRequest as exc:
            self._send_error(exc.status, str(exc))
            return False
        connection = headers.get("connection", "").lower()
        keep = ("close" not in connection) if version == "HTTP/1.1" else ("keep-alive" in connection)
        path, _, query = target.partition("?")
        if path.startswith(("http://", "https://")):  # absolute-form target
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "RAW_URI": target,
            "SERVER_NAME": self.server.server_name,
            "SERVER_PORT": str(self.server.server_port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": self.client_address[1],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)) if body or "content-length" in headers else "",
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key not in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                environ["HTTP_" + key] = value
        status, response_headers, payload = self._call(environ)
        if not keep:
            response_headers = [(k, v) for k, v in response_headers if k.lower() != "connection"]
            response_headers.append(("Connection", "close"))
        head = [f"HTTP/1.1 {status}\r\n"]
        for k, v in response_headers:
            if k.lower() not in ("content-length", "transfer-encoding"):
                head.append(f"{k}: {v}\r\n")
        head.append(f"Content-Length: {len(payload)}\r\n\r\n")
        out = "".join(head).encode("latin-1")
        self.wfile.write(out if method == "HEAD" else out + payload)
        return keep

    def _head(self, line: bytes) -> tuple[str, str, str, dict[str, str]]:
        if len(line) > MAX_LINE:
            raise _BadRequest(400, "request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            raw = self.rfile.readline(MAX_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(raw) > MAX_LINE:
                raise _BadRequest(400, "header line too long")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name.strip() or name != name.strip():
                raise _BadRequest(400, "malformed header")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        else:
            raise _BadRequest(400, "too many headers")
        return method, target, version, headers

    def _body(self, headers: dict[str, str]) -> bytes:
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length_raw = headers.get("content-length")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            parts, total = [], 0
            while True:
                size_line = self.rfile.readline(MAX_LINE + 1)
                size_text = size_line.split(b";")[0].strip()
                # Hex digits only: int() would also take "-1" (read(-1) reads to EOF, past MAX_BODY) or "+1".
                if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
                    raise _BadRequest(400, "bad chunk size")
                size = int(size_text, 16)
                if size == 0:
                    while self.rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise _BadRequest(413, "request body too large")
                chunk = self.rfile.read(size)
                if len(chunk) != size:
                    raise ConnectionError("client closed the connection mid-chunk")
                parts.append(chunk)
                self.rfile.readline(MAX_LINE + 1)
        if not length_raw:
            return b""
        try:
            length = int(length_raw)
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0:
            raise _BadRequest(400, "bad Content-Length")
        if length > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        body = self.rfile.read(length)
        if len(body) != length:
            raise ConnectionError("client closed the connection mid-body")
        return body

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        state: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            state["status"], state["headers"] = status, list(headers)
            return lambda data: state.setdefault("written", []).append(data)

        try:
            result = self.server.app(environ, start_response)
            try:
                payload = b"".join(state.pop("written", [])) + b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("the emulator app failed on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], b"internal error"
        if "status" not in state:  # an app that never called start_response
            log.error("the emulator app gave no status on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], b"internal error"
        return state["status"], state["headers"], payload


class LeanWSGIServer(socketserver.ThreadingTCPServer):
    """``LeanWSGIServer((host, port), app)``: serve ``app`` with one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: Any) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        self.server_name = host
        self.server_port = self.server_address[1]

    def server_close(self) -> None:
        """Stop listening and end open keep-alive connections (their threads then exit)."""
        super().server_close()
        with self.connections_lock:
            open_connections = list(self.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
