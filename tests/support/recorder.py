"""A tiny HTTP server that records the "external calls" test jobs make.

Jobs in worker subprocesses POST JSON to it over real HTTP; tests read what arrived. It stands
in for WeCom only in runtime tests, where what matters is how many side effects happened.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                body["_received_at"] = time.time()
                with recorder._lock:
                    recorder.calls.append(body)
                    count = sum(1 for c in recorder.calls if c.get("key") == body.get("key"))
                self._reply({"ok": True, "count": count})

            def do_GET(self) -> None:  # noqa: N802
                key = self.path.partition("key=")[2]
                with recorder._lock:
                    count = sum(1 for c in recorder.calls if c.get("key") == key)
                self._reply({"count": count})

            def _reply(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.calls)

    def counts(self) -> Counter:
        return Counter(c.get("key") for c in self.snapshot())
