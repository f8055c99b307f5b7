"""Callback answer latency under load, with the WeCom API slowed to 10 s in the worker's path (W5).

Run from the repository root::

    .venv/bin/python bench/callbacks.py                          # 200 req/s for 60 s, then the search
    .venv/bin/python bench/callbacks.py --rate 200 --seconds 20  # a shorter main run
    .venv/bin/python bench/callbacks.py --no-search              # the main run only

The deployment, all on this machine, each a real process:

* a scratch PostgreSQL database (``CREATE DATABASE bench_cb_...``, migrated to head, dropped at the
  end, also after a failure, Ctrl-C or SIGTERM), through the admin connection ``--postgres-url``
  (default ``$WECOM_BENCH_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``). If it
  does not answer, the run says so and falls back to a SQLite file (``--database sqlite`` asks for
  SQLite outright);
* the sandbox tenant (``python -m wecom_plugin.emulator``, real clock) with the latency fault on every
  endpoint: ``POST /_emulator/faults {"action": "latency", "seconds": 10}``;
* gunicorn with the project's ``config/gunicorn.conf.py`` (``WEB_CONCURRENCY`` as in the
  environment, default 2 sync workers; ``--web-concurrency`` overrides it);
* one ``wecom-plugin worker`` whose callback handler (tests/support/callback_load.py ``call_wecom``,
  loaded through ``WECOM_PLUGIN_JOB_MODULES``) re-reads the sender with ``user/get`` through
  ``client_for``: every event costs the worker a 10 s WeCom call; the request never waits for it.

The load generator (this process, asyncio, one new connection per request as gunicorn's sync workers
close every connection) is open-loop: request *i* is sent at ``t0 + i / rate`` whatever the answers
so far, each a distinct, validly signed and encrypted text message (bodies built before the run).
Latency is measured from the scheduled send time to the end of the response headers, so a server
that falls behind cannot hide it by slowing the generator down (no coordinated omission). A request
is an error if it is not answered 200 within ``--timeout`` seconds. The achieved send rate is
reported; a run whose generator fell more than 5 % behind its target does not count.

Then the search: short runs (``--search-seconds``) from ``--rate`` doubling while p99 <= 500 ms with no
errors (halving if the first fails), then one bisection step; bounded by ``--search-steps`` and
``--search-budget`` seconds. Load goes to 127.0.0.1 only.

Results: a Markdown table on stdout and bench/results/callbacks-<timestamp>.json (gitignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import requests  # noqa: E402 - after the sys.path fix, so a plain checkout works
import sqlalchemy as sa  # noqa: E402
from common import migrate  # noqa: E402 - bench/ is on sys.path when a script runs

from tests.support import callback_load as load  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
P99_GOAL_MS = 500.0
GENERATOR_SLACK = 0.95  # a run whose generator sent less than 95 % of the target rate does not count


# ================================================================================================
# Database
# ================================================================================================
class ScratchDatabase:
    """A fresh database migrated to head: PostgreSQL if it answers, else a SQLite file."""

    def __init__(self, kind: str, admin_url: str):
        self.kind = kind
        self.admin_url = sa.make_url(admin_url).set(drivername="postgresql+psycopg")
        self.name = f"bench_cb_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.folder: Path | None = None
        self.url = ""
        self.version = ""
        self._admin: sa.Engine | None = None

    def create(self) -> None:
        if self.kind == "postgresql":
            why = self._connect()
            if why is None:
                with self._admin.connect() as conn:
                    conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
                    self.version = conn.exec_driver_sql("SHOW server_version").scalar_one()
                self.url = self.admin_url.set(database=self.name).render_as_string(hide_password=False)
            else:
                print(
                    f"!! PostgreSQL at {self.admin_url.render_as_string(hide_password=True)} is not reachable "
                    f"({why}); FALLING BACK TO SQLITE. The numbers below are SQLite's, not PostgreSQL's.",
                    file=sys.stderr,
                )
                self.kind = "sqlite"
        if self.kind == "sqlite":
            import sqlite3

            self.folder = Path(tempfile.mkdtemp(prefix="bench_cb_"))
            self.url = f"sqlite:///{self.folder / 'bench.sqlite3'}"
            self.version = sqlite3.sqlite_version
        migrate(self.url)

    def _connect(self) -> str | None:
        self._admin = sa.create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": 5},
        )
        try:
            with self._admin.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        return None

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    def drop(self) -> None:
        if self.kind == "postgresql" and self._admin is not None and self.url:
            with self._admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if self._admin is not None:
            self._admin.dispose()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# ================================================================================================
# The sandbox tenant
# ================================================================================================
class Emulator:
    """``python -m wecom_plugin.emulator`` in its own process (real clock)."""

    def __init__(self, org: str, log_path: Path, flags: tuple[str, ...] = ()):
        self.log_path = log_path
        command = [sys.executable, "-m", "wecom_plugin.emulator", "--port", "0", "--org", org, "--clock", "real"]
        command += [arg for flag in flags for arg in ("--flag", flag)]
        self.proc = load.spawn([*command, "--no-verify"], {**os.environ, "PYTHONPATH": str(REPO_ROOT)}, log_path)
        self.env: dict[str, str] = {}
        deadline = time.monotonic() + 60
        text = ""
        while "Serving" not in text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the emulator did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.1)
            text = log_path.read_text(errors="replace")
        self.env = dict(re.findall(r"^(WECOM_[A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
        self.admin = self.env["WECOM_API_BASE_URL"].replace("/cgi-bin/", "/_emulator/")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, self.admin + path, timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    def user_ids(self, count: int) -> list[str]:
        users = [u for u in self.call("GET", "org")["users"] if u.get("status", 1) == 1]
        return [u["userid"] for u in users[:count]]

    def user_get_calls(self) -> list[dict[str, Any]]:
        return self.call("GET", "requests", params={"endpoint": "user/get", "limit": 100000})["requests"]

    def stop(self) -> None:
        try:
            requests.delete(self.admin + "faults", timeout=5)  # wakes the sleeping calls
        except requests.RequestException:
            pass
        load.stop(self.proc, timeout=10)


# ================================================================================================
# The open-loop load generator
# ================================================================================================
def _raw_request(port: int, signed: load.SignedCallback) -> bytes:
    head = (
        f"POST {signed.path('/wecom/callback')} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: text/xml\r\nContent-Length: {len(signed.body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + signed.body


async def _one(port: int, raw: bytes, scheduled: float, timeout: float, sem: asyncio.Semaphore) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    dispatched = loop.time()  # when the generator let this request go (its lag behind the schedule)
    writer = None
    try:
        async with asyncio.timeout(max(0.001, scheduled + timeout - dispatched)):
            async with sem:  # waiting for a free connection slot counts into the latency
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
        status: int | str = int(head.split(b" ", 2)[1])
    except TimeoutError:
        status = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
        status = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    latency = loop.time() - scheduled
    return {"status": status, "latency": latency, "dispatched": dispatched, "lag": dispatched - scheduled}


async def _open_loop(port: int, raws: list[bytes], rate: float, timeout: float, max_outstanding: int) -> list[dict]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(max_outstanding)
    t0 = loop.time() + 0.1
    tasks: list[asyncio.Task] = []
    i = 0
    while i < len(raws):
        now = loop.time()
        # Start every request whose time has come, then sleep until the next one is due.
        while i < len(raws) and t0 + i / rate <= now:
            tasks.append(asyncio.create_task(_one(port, raws[i], t0 + i / rate, timeout, sem)))
            i += 1
        if i < len(raws):
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))
    return list(await asyncio.gather(*tasks))


# --- CPU accounting (Linux /proc) ---------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))]


def run_load(
    port: int, sender: load.Sender, users: list[str], rate: float, seconds: float, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    web_pgid = args.web_pgid
    others = {name: group_cpu_seconds(pgid) for name, pgid in args.other_pgids.items()}
    count = max(1, int(rate * seconds))
    prefix = int(time.time() * 1000) % 10**9
    signed = [
        sender.text(f"{prefix}{i:07d}", sender=users[i % len(users)], content=f"压测 {label} {i}") for i in range(count)
    ]  # fmt: skip
    raws = [_raw_request(port, s) for s in signed]
    load_before = os.getloadavg()
    wall = time.time()
    web_cpu, own_cpu, (busy, total), started = (
        group_cpu_seconds(web_pgid),
        time.process_time(),
        machine_busy_seconds(),
        time.monotonic(),
    )
    results = asyncio.run(_open_loop(port, raws, rate, args.timeout, args.max_outstanding))
    elapsed = time.monotonic() - started
    web_cpu = group_cpu_seconds(web_pgid) - web_cpu
    others = {name: (group_cpu_seconds(args.other_pgids[name]) - cpu) / elapsed for name, cpu in others.items()}
    own_cpu = time.process_time() - own_cpu
    busy_after, total_after = machine_busy_seconds()
    cores = (total_after - total) / elapsed if elapsed else 0.0
    # Percentiles over every request: one that failed counts with the time it took to fail.
    latencies = sorted(r["latency"] * 1000 for r in results)
    errors: dict[str, int] = {}
    for r in results:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    dispatched = sorted(r["dispatched"] for r in results)
    span = dispatched[-1] - dispatched[0] if len(dispatched) > 1 else 0.0
    achieved = (len(dispatched) - 1) / span if span > 0 else float(count)
    row = {
        "label": label,
        "target_rate": rate,
        "seconds": seconds,
        "requests": count,
        "achieved_rate": round(achieved, 1),
        "max_send_lag_ms": round(max(r["lag"] for r in results) * 1000, 1),
        "p50_ms": round(_pct(latencies, 0.50), 1),
        "p99_ms": round(_pct(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "load_average_before": [round(x, 2) for x in load_before],
        "web_cpu_ms_per_request": round(web_cpu * 1000 / count, 2),
        "web_cpu_cores": round(web_cpu / elapsed, 2),
        "generator_cpu_cores": round(own_cpu / elapsed, 2),
        **{f"{name}_cpu_cores": round(cores_used, 2) for name, cores_used in others.items()},
        "machine_busy_cores": round((busy_after - busy) / elapsed, 2),
        "machine_cores": round(cores),
        "started_at": datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds"),
    }
    row["generator_kept_up"] = achieved >= GENERATOR_SLACK * rate
    row["goal_met"] = row["p99_ms"] <= P99_GOAL_MS and row["errors"] == 0
    print(
        f"  {label}: {rate:g} req/s x {seconds:g} s: achieved {achieved:,.0f} req/s, p50 {row['p50_ms']} ms, "
        f"p99 {row['p99_ms']} ms, max {row['max_ms']} ms, errors {row['errors']} {errors or ''}\n"
        f"    CPU: web {row['web_cpu_cores']} cores ({row['web_cpu_ms_per_request']} ms per request), "
        f"generator {row['generator_cpu_cores']}, "
        + "".join(f"{name} {cores_used:.2f}, " for name, cores_used in others.items())
        + f"whole machine busy {row['machine_busy_cores']} of "
        f"{row['machine_cores']}; load average before {load_before[0]:.2f}",
        flush=True,
    )
    return row


def settle(port: int, timeout: float = 60.0) -> float:
    """Wait until the web tier answers /healthz within 50 ms three times in a row (a run that
    overloaded it leaves accepted connections behind, which its sync workers still serve)."""
    started = time.monotonic()
    fast = 0
    while fast < 3 and time.monotonic() - started < timeout:
        t = time.monotonic()
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            fast = fast + 1 if time.monotonic() - t < 0.05 else 0
        except requests.RequestException:
            fast = 0
        time.sleep(0.2)
    return time.monotonic() - started


def search(port: int, sender: load.Sender, users: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Doubling (or halving) from --rate, then one bisection step; bounded in steps and time."""
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.search_budget
    passed: float | None = None
    failed: float | None = None
    rate = float(args.rate)

    def ok(row: dict[str, Any]) -> bool:
        return row["goal_met"] and row["generator_kept_up"]

    while len(rows) < args.search_steps and time.monotonic() + args.search_seconds + 5 < deadline:
        if rate > args.search_max_rate or rate < 1:
            break
        settle(port)
        row = run_load(port, sender, users, rate, args.search_seconds, args, f"search {len(rows) + 1}")
        rows.append(row)
        if ok(row):
            passed = rate if passed is None else max(passed, rate)
        else:
            failed = rate if failed is None else min(failed, rate)
            if not row["generator_kept_up"]:
                print("  (the generator could not keep up with this rate: the search stops here)")
                break
        if failed is None:
            rate *= 2
        elif passed is None:
            rate /= 2
        else:
            break
    if passed is not None and failed is not None and failed > passed * 1.2 and len(rows) < args.search_steps:
        mid = round((passed + failed) / 2)
        if time.monotonic() + args.search_seconds + 5 < deadline:
            settle(port)
            row = run_load(port, sender, users, mid, args.search_seconds, args, f"search {len(rows) + 1}")
            rows.append(row)
    return rows


# ================================================================================================
# Main
# ================================================================================================
def _worker_progress(database: ScratchDatabase) -> dict[str, int]:
    engine = database.engine()
    try:
        with engine.connect() as conn:
            inbox = dict(conn.exec_driver_sql("SELECT state, count(*) FROM callback_inbox GROUP BY state").all())
            jobs = dict(
                conn.exec_driver_sql(
                    "SELECT state, count(*) FROM job WHERE name = 'callbacks.dispatch' GROUP BY state"
                ).all()
            )
    finally:
        engine.dispose()
    return {"inbox_" + k: v for k, v in inbox.items()} | {"dispatch_jobs_" + k: v for k, v in jobs.items()}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | target req/s | achieved req/s | requests | p50 ms | p99 ms | max ms | errors "
        "| p99 ≤ 500 ms, 0 errors | web CPU ms/req | machine busy cores | load avg before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in rows:
        met = "yes" if r["goal_met"] else "no"
        if not r["generator_kept_up"]:
            met += " (generator behind)"
        lines.append(
            f"| {r['label']} ({r['seconds']:g} s) | {r['target_rate']:,.0f} | {r['achieved_rate']:,.0f} | "
            f"{r['requests']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} | {met} | "
            f"{r['web_cpu_ms_per_request']:.1f} | {r['machine_busy_cores']:.2f} / {r['machine_cores']} | "
            f"{r['load_average_before'][0]:.2f} |"
        )
    return "\n".join(lines)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second of the main run")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the main run")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True, help="search the max rate")
    parser.add_argument("--search-seconds", type=float, default=10.0, help="duration of each search run")
    parser.add_argument("--search-steps", type=int, default=6, help="at most this many search runs")
    parser.add_argument("--search-max-rate", type=float, default=6400.0, help="never try more than this")
    parser.add_argument("--search-budget", type=float, default=300.0, help="seconds for the whole search")
    parser.add_argument("--latency", type=float, default=10.0, help="seconds the sandbox WeCom API takes per call")
    parser.add_argument("--timeout", type=float, default=10.0, help="a request unanswered after this is an error")
    parser.add_argument("--max-outstanding", type=int, default=4000, help="open connections the generator allows")
    parser.add_argument("--web-concurrency", type=int, default=None, help="gunicorn workers (default: the config's)")
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("WECOM_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL), help="admin URL"
    )
    parser.add_argument("--org", default="generated:200:7", help="the sandbox tenant's org")
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.seconds * args.rate > 200_000:
        parser.error("need 0 < rate, 0 < seconds, rate x seconds <= 200,000")

    signal.signal(signal.SIGTERM, _interrupt)
    folder = Path(tempfile.mkdtemp(prefix="bench_cb_logs_"))
    database = ScratchDatabase(args.database, args.postgres_url)
    emulator: Emulator | None = None
    processes: list[tuple[subprocess.Popen, int]] = []
    report: dict[str, Any] = {"args": vars(args)}
    try:
        database.create()
        emulator = Emulator(args.org, folder / "emulator.log")
        emulator.call("POST", "faults", json={"action": "latency", "seconds": args.latency})
        users = emulator.user_ids(20)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WECOM_")},
            **emulator.env,
            "DATABASE_URL": database.url,
            "WECOM_PLUGIN_JOB_MODULES": "tests.support.callback_load",
            load.HANDLER_ENV: "wecom",
            "PYTHONPATH": str(REPO_ROOT),
            "LOG_LEVEL": "WARNING",
        }
        if args.web_concurrency:
            env["WEB_CONCURRENCY"] = str(args.web_concurrency)
        web_workers = int(env.get("WEB_CONCURRENCY", "2"))
        worker = load.start_worker(env, folder / "worker.log")
        processes.append((worker, signal.SIGKILL))  # it is inside a 10 s call; nothing to finish
        web, base = load.start_gunicorn(env, folder / "web.log")
        processes.append((web, signal.SIGINT))
        args.web_pgid = web.pid  # its own session: the group is the master and its workers
        args.other_pgids = {"worker": worker.pid, "emulator": emulator.proc.pid}
        port = int(base.rsplit(":", 1)[1])
        sender = load.Sender(env["WECOM_CALLBACK_TOKEN"], env["WECOM_CALLBACK_AES_KEY"], env["WECOM_CORP_ID"])

        report["environment"] = {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "database": f"{database.kind} {database.version}",
            "web_concurrency": web_workers,
            "wecom_latency_s": args.latency,
        }
        print(
            f"callbacks bench: {database.kind} {database.version}, gunicorn {web_workers} sync workers "
            f"(config/gunicorn.conf.py), 1 worker process, WeCom API latency {args.latency:g} s, "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        run_load(port, sender, users, 50, 2, args, "warm-up")  # imports, connections, first token: not reported
        rows = [run_load(port, sender, users, args.rate, args.seconds, args, "main")]
        progress = _worker_progress(database)
        calls = emulator.user_get_calls()
        durations = sorted(c.get("duration_ms") or 0 for c in calls)
        report["worker_during_main_run"] = {
            **progress,
            "user_get_calls": len(calls),
            "user_get_median_ms": durations[len(durations) // 2] if durations else None,
        }
        print(
            f"  the worker meanwhile: {progress}; WeCom user/get calls so far {len(calls)}, median "
            f"{report['worker_during_main_run']['user_get_median_ms']} ms each",
            flush=True,
        )
        if args.search:
            print(f"  settled after the main run in {settle(port):.1f} s", flush=True)
            rows += search(port, sender, users, args)
        report["runs"] = rows
        passing = [r["target_rate"] for r in rows if r["goal_met"] and r["generator_kept_up"]]
        report["highest_rate_meeting_goal"] = max(passing) if passing else None

        print()
        print(_table(rows))
        print()
        if passing:
            print(f"Highest rate tried with p99 ≤ 500 ms and no errors: {max(passing):,.0f} req/s")
        else:
            print("No rate tried kept p99 ≤ 500 ms with no errors.")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"callbacks-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        print(f"JSON: {out.relative_to(REPO_ROOT)}")
        web_log = (folder / "web.log").read_text(errors="replace")
        if "Traceback" in web_log or "[ERROR]" in web_log:
            print("!! the web log has errors:\n" + web_log[-3000:], file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        load.stop_all(processes, timeout=5)
        if emulator is not None:
            emulator.stop()
        database.drop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
