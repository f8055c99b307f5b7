"""Sandbox-tenant benchmark: requests per second and latency of ``user/list`` and ``appchat/update``.

Run from the repository root::

    .venv/bin/python bench/emulator.py                       # defaults: 4000 requests per row, 1 and 4 threads
    .venv/bin/python bench/emulator.py --requests 1000 --threads 1,4,8

The emulator runs as its own process (``python -m wecom_plugin.emulator``, so client and server do not
share a GIL) on loopback, on a manual clock with the per-API and appchat-update limits lifted (the
point is the emulator's own cost, not WeCom's quotas). Clients are threads in this process using
``http.client`` directly (little client overhead); the token is fetched once, before timing.

For each endpoint, thread count and connection mode:

* ``keep-alive``: one persistent HTTP/1.1 connection per client thread (like a ``requests.Session``);
* ``new``: a new TCP connection per request (like bare ``requests.post``).

Each row sends ``--requests`` requests split over the threads after a short warm-up, and reports
throughput (requests / wall time of the timed phase) and the p50/p95/max latency of single requests.
Every answer is checked (HTTP 200 and errcode 0). ``user/list`` reads the department with the most
direct members; ``appchat/update`` renames one of our chats (a real change every time).

Results: a Markdown table on stdout and ``bench/results/emulator-<timestamp>.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
FLAGS = ("basic_limits=false", "appchat_updates_per_hour=1000000000", "request_log_max=20000")


def start_emulator(org: str, server: str | None) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    if server:
        env["WECOM_EMULATOR_SERVER"] = server
    cmd = [sys.executable, "-m", "wecom_plugin.emulator", "--port", "0", "--org", org, "--clock", "manual"]
    for flag in FLAGS:
        cmd += ["--flag", flag]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    api = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().startswith("API:"):
            api = line.split()[-1]
        if line.startswith("Serving"):
            break
    if api is None:
        proc.kill()
        raise SystemExit("the emulator did not start: " + (proc.stderr.read() if proc.stderr else ""))
    return proc, api


class Client:
    """One client thread's connection(s) to the emulator."""

    def __init__(self, api: str, keep_alive: bool) -> None:
        parts = urlsplit(api)
        self.host, self.port, self.prefix = parts.hostname, parts.port, parts.path
        self.keep_alive = keep_alive
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, endpoint: str, query: dict[str, Any], body: dict[str, Any] | None) -> dict[str, Any]:
        if self.conn is None or not self.keep_alive:
            if self.conn is not None:
                self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if not self.keep_alive:
            headers["Connection"] = "close"
        self.conn.request(method, f"{self.prefix}{endpoint}?{urlencode(query)}", body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _get_json(api: str, path: str) -> dict[str, Any]:
    c = Client(api.replace("/cgi-bin/", "/_emulator/"), keep_alive=False)
    try:
        return c.call("GET", path, {}, None)
    finally:
        c.close()


def prepare(api: str) -> dict[str, Any]:
    overview = _get_json(api, "")
    app = next(a for a in overview["apps"] if a["agentid"] == 1000002)
    c = Client(api, keep_alive=False)
    token = c.call("GET", "gettoken", {"corpid": overview["corp_id"], "corpsecret": app["secret"]}, None)
    c.close()
    org = _get_json(api, "org")
    sizes: dict[int, int] = {}
    for u in org["users"]:
        for d in u["department"]:
            sizes[d] = sizes.get(d, 0) + 1
    department = max(sizes, key=lambda d: sizes[d])
    chats = _get_json(api, "chats")["chats"]
    chat = next(ch for ch in chats if ch["creator"] == 1000002)
    return {
        "token": token["access_token"],
        "department": department,
        "department_size": sizes[department],
        "chatid": chat["chatid"],
        "chat_members": len(chat["userlist"]),
        "users": len(org["users"]),
    }


def make_request(endpoint: str, ctx: dict[str, Any], i: int) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    if endpoint == "user/list":
        return "GET", {"access_token": ctx["token"], "department_id": ctx["department"]}, None
    if endpoint == "appchat/update":
        return "POST", {"access_token": ctx["token"]}, {"chatid": ctx["chatid"], "name": f"压测群 {i}"}
    raise SystemExit(f"unknown endpoint {endpoint}")


def run_row(api: str, ctx: dict[str, Any], endpoint: str, threads: int, total: int, keep_alive: bool) -> dict[str, Any]:
    per_thread = [total // threads + (1 if k < total % threads else 0) for k in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        client = Client(api, keep_alive)
        try:
            for w in range(5):  # warm-up (connection, caches)
                method, query, body = make_request(endpoint, ctx, -k * 10 - w)
                client.call(method, endpoint, query, body)
            barrier.wait()
            out = latencies[k]
            for i in range(per_thread[k]):
                method, query, body = make_request(endpoint, ctx, k * 1_000_000 + i)
                started = time.perf_counter()
                answer = client.call(method, endpoint, query, body)
                out.append(time.perf_counter() - started)
                if answer.get("errcode") != 0:
                    errors.append(f"errcode {answer.get('errcode')}: {answer.get('errmsg')}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            client.close()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    flat = sorted(x for lat in latencies for x in lat)
    n = len(flat)
    return {
        "endpoint": endpoint,
        "connections": "keep-alive" if keep_alive else "new",
        "threads": threads,
        "requests": n,
        "seconds": round(elapsed, 3),
        "req_per_s": round(n / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(flat) * 1000, 2) if n else None,
        "p95_ms": round(flat[max(0, int(n * 0.95) - 1)] * 1000, 2) if n else None,
        "max_ms": round(flat[-1] * 1000, 2) if n else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = "| endpoint | connections | threads | requests | req/s | p50 ms | p95 ms | max ms | errors |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['endpoint']}` | {r['connections']} | {r['threads']} | {r['requests']} | {r['req_per_s']:.0f} "
            f"| {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--org", default="generated:1000:1", help="the tenant (default generated:1000:1)")
    parser.add_argument("--requests", type=int, default=4000, help="requests per row (default 4000)")
    parser.add_argument("--threads", default="1,4", help="client thread counts, comma-separated (default 1,4)")
    parser.add_argument("--endpoints", default="user/list,appchat/update")
    parser.add_argument("--connections", default="keep-alive,new", help="keep-alive, new, or both (default both)")
    parser.add_argument("--server", default=None, help="server implementation (WECOM_EMULATOR_SERVER), for A/B runs")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args()

    proc, api = start_emulator(args.org, args.server)
    try:
        ctx = prepare(api)
        rows = []
        for endpoint in args.endpoints.split(","):
            for mode in args.connections.split(","):
                for threads in (int(x) for x in args.threads.split(",")):
                    row = run_row(api, ctx, endpoint, threads, args.requests, keep_alive=mode == "keep-alive")
                    rows.append(row)
                    print(f"  {endpoint} {mode} x{threads}: {row['req_per_s']:.0f} req/s", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    info = {
        "org": args.org,
        "users": ctx["users"],
        "user_list_department_members": ctx["department_size"],
        "appchat_members": ctx["chat_members"],
        "server": args.server or os.environ.get("WECOM_EMULATOR_SERVER") or "lean",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    print(
        f"\nSandbox tenant {args.org} ({ctx['users']} members); user/list returns {ctx['department_size']} members; "
        f"server: {info['server']}; Python {info['python']}, {info['cpus']} CPUs\n"
    )
    print(table(rows))
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"emulator-{stamp}.json"
        path.write_text(json.dumps({"info": info, "rows": rows}, ensure_ascii=False, indent=2), encoding="utf-8")
        print(f"\nwritten to {path.relative_to(REPO_ROOT)}")
    if any(r["errors"] for r in rows):
        raise SystemExit("some requests failed: " + "; ".join(r["first_error"] for r in rows if r["first_error"]))


if __name__ == "__main__":
    main()
