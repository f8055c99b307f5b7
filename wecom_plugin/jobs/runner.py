"""All-in-one mode for the demo and local development: web, worker and clock in one process.

Production runs them as separate processes (Procfile). Here worker and clock are threads; the
claim primitive makes that exactly as safe as separate processes, only less isolated.
"""

from __future__ import annotations

import logging
import signal
import threading

from flask import Flask
from werkzeug.serving import make_server

from wecom_plugin.jobs.clock import Clock
from wecom_plugin.jobs.worker import Worker

log = logging.getLogger("wecom_plugin.runner")


def run_all_in_one(app: Flask, *, host: str, port: int, worker_threads: int = 1) -> None:
    workers = [Worker(app) for _ in range(worker_threads)]
    clock = Clock(app)
    threads = [threading.Thread(target=w.run, name=f"worker-{i}", daemon=True) for i, w in enumerate(workers)]
    threads.append(threading.Thread(target=clock.run, name="clock", daemon=True))
    server = make_server(host, port, app, threaded=True)
    stopping = threading.Event()

    def _stop(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log.info("signal %s: stopping web, then worker and clock", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for thread in threads:
        thread.start()
    log.info("wecom-plugin listening on http://%s:%s (web + %s worker(s) + clock)", host, server.port, worker_threads)
    try:
        server.serve_forever()
    finally:
        for w in workers:
            w.stop()
        clock.stop()
        for thread in threads:
            thread.join(timeout=10)
