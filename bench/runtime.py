"""Runtime benchmark: no-op job throughput and claim latency, 1/2/4 worker processes, SQLite and PostgreSQL.

Run from the repository root::

    .venv/bin/python bench/runtime.py                      # defaults: 5000 jobs, 3 repeats, 1,2,4 workers
    .venv/bin/python bench/runtime.py --jobs 2000 --repeat 1 --backends sqlite

Every configuration (backend, worker count) runs ``--repeat`` times, interleaved (repeat 1 of every
configuration, then repeat 2, ...), so a noisy neighbour hurts all configurations alike and the
ratios between them stay comparable. The median of the repeats is reported.

One run:

1. A fresh database, migrated to head (a copy of a template migrated once per backend: a file copy
   on SQLite, ``CREATE DATABASE ... TEMPLATE`` on PostgreSQL).
2. ``--jobs`` ``noop`` jobs are enqueued with :func:`wecom_plugin.runtime.queue.enqueue` in one
   transaction. Not timed.
3. ``k`` worker processes start (this file, in driver mode). Each builds the app with
   ``create_app`` and the project's default engine setup, opens its database connection, then
   reports ready and waits. Start-up is not timed.
4. When all are ready they are released together and run the real ``Worker.run(exit_when_idle=True)``.
   The driver only wraps the engine to time the claim transaction (``BEGIN``, ``claim_batch``,
   ``COMMIT``) and the per-job finish transactions; the worker code itself is unchanged.
5. Throughput = jobs / (last ``finished_at`` in the database - earliest claim start in any
   worker). Both are the host clock: SQLite's ``now`` is the host clock, and PostgreSQL runs on
   this host. Process exit is not timed.

Scratch databases (``bench_*``) and files are removed at the end, also after a failure.
Results go to stdout (Markdown) and ``bench/results/runtime-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa  # noqa: E402 - after the sys.path fix, so a plain checkout works
from common import migrate  # noqa: E402 - bench/ is on sys.path when a script runs

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
# The goals, for 4 workers: a bulletin is ~1,000 sends that must be dispatched within 2 s.
GOALS = {("postgresql", 4): 1000.0, ("sqlite", 4): 300.0}
DRIVER_FLAG = "--driver"


# ================================================================================================
# Worker driver (runs in each worker process)
# ================================================================================================
class _TimedEngine:
    """Delegates to the real engine; times ``begin()`` blocks made by the worker's main thread.

    The first ``begin()`` after :meth:`arm` is the claim transaction of ``Worker.run_once``; the
    others on the main thread are the per-job finish transactions. The lease keeper thread's
    transactions are not timed.
    """

    def __init__(self, engine: sa.Engine):
        self._engine = engine
        self._main = threading.get_ident()
        self._armed = False
        self.claims: list[tuple[float, float]] = []  # (wall start, seconds)
        self.finishes: list[float] = []  # seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def arm(self) -> None:
        """The next ``begin()`` on the main thread is a claim."""
        self._armed = True

    @contextmanager
    def begin(self):
        if threading.get_ident() != self._main:
            with self._engine.begin() as conn:
                yield conn
            return
        is_claim, self._armed = self._armed, False
        wall, start = time.time(), time.perf_counter()
        with self._engine.begin() as conn:
            yield conn
        elapsed = time.perf_counter() - start
        if is_claim:
            self.claims.append((wall, elapsed))
        else:
            self.finishes.append(elapsed)


def _driver(database_url: str, batch_size: int | None) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from wecom_plugin import create_app
    from wecom_plugin.jobs.worker import Worker

    class TimedWorker(Worker):
        def run_once(self) -> int:
            self.engine.arm()
            claimed = super().run_once()
            self.claim_sizes.append(claimed)
            if claimed:
                self.last_end = time.time()
            return claimed

    app = create_app({"WECOM_SANDBOX": "true", "DATABASE_URL": database_url})
    worker = TimedWorker(app, batch_size=batch_size)
    worker.claim_sizes = []
    worker.last_end = None
    real_engine = worker.engine
    worker.engine = _TimedEngine(real_engine)
    with real_engine.connect() as conn:  # open the pooled connection before the clock starts
        conn.exec_driver_sql("SELECT 1")

    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return
    cpu = time.process_time()
    worker.run(exit_when_idle=True)
    cpu = time.process_time() - cpu
    timed: _TimedEngine = worker.engine  # type: ignore[assignment]
    report = {
        "pid": os.getpid(),
        "batch_size": worker.batch_size,
        "jobs_done": worker.jobs_done,
        "cpu_s": round(cpu, 4),  # this process's CPU time (all threads) while it ran jobs
        "first_claim_start": timed.claims[0][0] if timed.claims else None,
        "last_end": worker.last_end,
        # Seconds per claim transaction and the number of jobs it returned.
        "claims": [[round(seconds, 6), n] for (_, seconds), n in zip(timed.claims, worker.claim_sizes, strict=False)],
        "finish_seconds": [round(s, 6) for s in timed.finishes],
    }
    real_engine.dispose()
    print("RESULT " + json.dumps(report), flush=True)


# ================================================================================================
# Backends (parent process)
# ================================================================================================
class SQLiteBackend:
    name = "sqlite"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
        self.template = self.dir / "template.sqlite3"

    def prepare(self) -> None:
        migrate(f"sqlite:///{self.template}")

    def version(self) -> str:
        return sqlite3.sqlite_version

    def create(self) -> str:
        target = self.dir / f"bench_{uuid.uuid4().hex[:8]}.sqlite3"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        path = Path(sa.make_url(url).database or "")
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresBackend:
    name = "postgresql"

    def __init__(self, admin_url: str):
        self.admin_url = sa.make_url(admin_url).set(drivername="postgresql+psycopg")
        self.admin = sa.create_engine(
            self.admin_url,
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
            connect_args={"connect_timeout": 5},
        )
        self.template = f"bench_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.created: set[str] = set()

    def reachable(self) -> str | None:
        """None if the admin connection works, else why not."""
        try:
            with self.admin.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return None

    def _url(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _exec(self, sql: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(sql)

    def prepare(self) -> None:
        self._exec(f'CREATE DATABASE "{self.template}"')
        self.created.add(self.template)
        migrate(self._url(self.template))

    def version(self) -> str:
        with self.admin.connect() as conn:
            return conn.exec_driver_sql("SHOW server_version").scalar_one()

    def settings(self) -> dict[str, str]:
        names = ("fsync", "synchronous_commit", "shared_buffers", "max_connections", "wal_level")
        with self.admin.connect() as conn:
            return {n: conn.exec_driver_sql(f"SHOW {n}").scalar_one() for n in names}

    def create(self) -> str:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.add(name)
        return self._url(name)

    def drop(self, url: str) -> None:
        name = sa.make_url(url).database
        self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.discard(name)

    def cleanup(self) -> None:
        for name in sorted(self.created):
            try:
                self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"warning: could not drop scratch database {name}: {exc}", file=sys.stderr)
        self.created.clear()
        self.admin.dispose()


# ================================================================================================
# One run
# ================================================================================================
def _enqueue(database_url: str, jobs: int) -> None:
    from wecom_plugin import create_app
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import enqueue

    app = create_app({"WECOM_SANDBOX": "true", "DATABASE_URL": database_url})
    with app.app_context():
        for _ in range(jobs):
            enqueue("noop", session=db.session)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


def _child_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_") and k != "DATABASE_URL"}
    env.update(
        WECOM_SANDBOX="true",
        DATABASE_URL=database_url,
        PYTHONPATH=str(REPO_ROOT),
        LOG_LEVEL="WARNING",
    )
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _read_line(proc: subprocess.Popen, deadline: float, prefix: str) -> str:
    """The first stdout line starting with ``prefix``; raises TimeoutError after ``deadline``."""
    result: list[str] = []

    def reader() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(prefix):
                result.append(line[len(prefix) :].strip())
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0))
    if not result:
        raise TimeoutError(f"worker {proc.pid} gave no {prefix.strip()} line (exit code {proc.poll()})")
    return result[0]


def run_once(backend: Any, workers: int, jobs: int, batch_size: int | None, timeout: float) -> dict[str, Any]:
    from wecom_plugin.models.jobs import Job

    load_before = os.getloadavg()[0]
    url = backend.create()
    procs: list[subprocess.Popen] = []
    stderr_files: list[Any] = []
    try:
        _enqueue(url, jobs)
        deadline = time.monotonic() + timeout
        spawn = time.monotonic()
        for _ in range(workers):
            err = tempfile.TemporaryFile(mode="w+")
            stderr_files.append(err)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), DRIVER_FLAG, url, str(batch_size or 0)],
                    cwd=REPO_ROOT,
                    env=_child_env(url),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            )
        for proc in procs:
            _read_line(proc, min(deadline, time.monotonic() + 60), "READY")
        startup = time.monotonic() - spawn
        go, cpu_before = time.monotonic(), _machine_busy_seconds()
        for proc in procs:
            proc.stdin.write("GO\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        reports = [json.loads(_read_line(proc, deadline, "RESULT ")) for proc in procs]
        wall = time.monotonic() - go
        cpu_after = _machine_busy_seconds()
        machine_busy = cpu_after - cpu_before if cpu_after is not None and cpu_before is not None else None
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        failed = [p for p in procs if p.returncode != 0]
        if failed:
            raise RuntimeError(f"worker {failed[0].pid} exited with {failed[0].returncode}")

        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        job = Job.__table__
        try:
            with engine.connect() as conn:
                states = dict(conn.execute(sa.select(job.c.state, sa.func.count()).group_by(job.c.state)).all())
                last_finished, first_finished = conn.execute(
                    sa.select(sa.func.max(job.c.finished_at), sa.func.min(job.c.finished_at))
                ).one()
                reclaimed = conn.execute(sa.select(sa.func.count()).where(job.c.attempts > 1)).scalar_one()
        finally:
            engine.dispose()
        if states.get("done", 0) != jobs:
            raise RuntimeError(f"not every job is done: {states}")
        if sum(r["jobs_done"] for r in reports) != jobs:
            raise RuntimeError(f"workers report {sum(r['jobs_done'] for r in reports)} jobs done, expected {jobs}")

        first_claim = min(r["first_claim_start"] for r in reports if r["first_claim_start"] is not None)
        window = last_finished.timestamp() - first_claim
        worker_last_end = max(r["last_end"] for r in reports if r["last_end"] is not None)
        claim_ms = [s * 1000 for r in reports for s, n in r["claims"] if n > 0]
        finish_ms = [s * 1000 for r in reports for s in r["finish_seconds"]]
        return {
            "ok": True,
            "jobs_per_s": jobs / window,
            "window_s": window,
            "window_worker_clock_s": worker_last_end - first_claim,
            "wall_from_go_s": wall,
            "startup_s": startup,
            "first_to_last_finished_s": (last_finished - first_finished).total_seconds(),
            "claim_ms": _summary(claim_ms),
            "empty_claims": sum(1 for r in reports for _, n in r["claims"] if n == 0),
            "finish_tx_ms": _summary(finish_ms),
            "jobs_per_worker": [r["jobs_done"] for r in reports],
            "worker_cpu_ms_per_job": 1000 * sum(r["cpu_s"] for r in reports) / jobs,
            # CPU cores in use while the workers ran: everything on the machine, and the workers alone.
            # The difference is the database server, this process and anything else running (noise).
            "machine_busy_cores": machine_busy / wall if machine_busy is not None else None,
            "worker_cores": sum(r["cpu_s"] for r in reports) / wall,
            "load_average_before": load_before,
            "batch_size": reports[0]["batch_size"],
            "reclaimed_jobs": reclaimed,
            "states": states,
        }
    except Exception as exc:
        _stop(procs)
        tail = ""
        for err in stderr_files:
            err.seek(0)
            text = err.read().strip()
            if text:
                tail = text.splitlines()[-1]
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "worker_stderr_tail": tail}
    finally:
        _stop(procs)
        for err in stderr_files:
            err.close()
        try:
            backend.drop(url)
        except Exception as exc:
            print(f"warning: could not remove scratch database {url}: {exc}", file=sys.stderr)


def _machine_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ================================================================================================
# Statistics and reporting
# ================================================================================================
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": _percentile(values, 0.50),
        "p95": _percentile(values, 0.95),
        "max": max(values) if values else None,
        "sum": sum(values),
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def aggregate(runs: list[dict[str, Any]], backends: list[str], workers: list[int]) -> list[dict[str, Any]]:
    """One row per (backend, workers): medians over the repeats that succeeded."""
    rows = []
    for backend in backends:
        baseline = None
        for k in workers:
            mine = [r for r in runs if r["backend"] == backend and r["workers"] == k]
            if not mine:
                continue
            ok = [r for r in mine if r["ok"]]
            rates = [r["jobs_per_s"] for r in ok]
            rate = _median(rates)
            if k == 1:
                baseline = rate
            goal = GOALS.get((backend, k))
            rows.append(
                {
                    "backend": backend,
                    "workers": k,
                    "runs_ok": len(ok),
                    "runs_failed": len(mine) - len(ok),
                    "jobs_per_s": rate,
                    "jobs_per_s_min": min(rates) if rates else None,
                    "jobs_per_s_max": max(rates) if rates else None,
                    "vs_1_worker": rate / baseline if rate and baseline else None,
                    "claim_p50_ms": _median([r["claim_ms"]["p50"] for r in ok]),
                    "claim_p95_ms": _median([r["claim_ms"]["p95"] for r in ok]),
                    "finish_tx_p50_ms": _median([r["finish_tx_ms"]["p50"] for r in ok]),
                    "worker_cpu_ms_per_job": _median([r["worker_cpu_ms_per_job"] for r in ok]),
                    "machine_busy_cores": _median([r["machine_busy_cores"] for r in ok if r["machine_busy_cores"]]),
                    "worker_cores": _median([r["worker_cores"] for r in ok]),
                    "goal_jobs_per_s": goal,
                    "met": None if goal is None or rate is None else rate >= goal,
                }
            )
    return rows


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | workers | jobs/s (median) | jobs/s (min–max) | × 1 worker | claim p50 ms | claim p95 ms "
        "| finish tx p50 ms | goal | met? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        goal = row["goal_jobs_per_s"]
        met = "—" if row["met"] is None else ("yes" if row["met"] else "**no**")
        spread = f"{_fmt(row['jobs_per_s_min'])}–{_fmt(row['jobs_per_s_max'])}"
        if row["runs_failed"]:
            spread += f" ({row['runs_failed']} failed)"
        lines.append(
            f"| {row['backend']} | {row['workers']} | {_fmt(row['jobs_per_s'])} | {spread} "
            f"| {_fmt(row['vs_1_worker'], 2)} | {_fmt(row['claim_p50_ms'], 2)} | {_fmt(row['claim_p95_ms'], 2)} "
            f"| {_fmt(row['finish_tx_p50_ms'], 2)} | {'≥ ' + _fmt(goal) if goal else '—'} | {met} |"
        )
    return "\n".join(lines)


def environment(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    import psycopg

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": _cpu_model(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "psycopg": psycopg.__version__,
        "sqlite": sqlite3.sqlite_version,
        "worker_batch_size": batch_size,
        "jobs": args.jobs,
        "repeat": args.repeat,
        "workers": args.workers,
        "backends": args.backends,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ================================================================================================
# Main
# ================================================================================================
def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="noop jobs per run (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (default 1,2,4)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="sqlite, postgresql or both")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("WECOM_BENCH_POSTGRES_URL") or DEFAULT_ADMIN_URL,
        help="admin connection used to create bench_* scratch databases "
        "(default $WECOM_BENCH_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="jobs per claim (default WORKER_BATCH_SIZE)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds one run may take (default 180)")
    parser.add_argument(
        "--budget", type=float, default=1200.0, help="seconds for the whole benchmark; later runs are skipped"
    )
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/runtime-*.json")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sqlite", "postgresql"}
    if unknown or not args.backends:
        parser.error(f"--backends: unknown {sorted(unknown)}; use sqlite and/or postgresql")
    if args.jobs < 1 or args.repeat < 1 or not args.workers or min(args.workers) < 1:
        parser.error("--jobs, --repeat and --workers must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM cleans up like Ctrl-C: scratch databases are dropped in the finally blocks.
    signal.signal(signal.SIGTERM, _interrupt)

    from wecom_plugin.settings import load_settings

    batch_size = args.batch_size or load_settings({"WECOM_SANDBOX": "true"}, environ={}).worker_batch_size
    env = environment(args, batch_size)
    started = time.monotonic()
    backends: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    try:
        for name in args.backends:
            if name == "sqlite":
                backend: Any = SQLiteBackend()
                backends[name] = backend
            else:
                backend = PostgresBackend(args.postgres_url)
                why = backend.reachable()
                if why:
                    safe_url = backend.admin_url.render_as_string(hide_password=True)
                    skipped[name] = f"PostgreSQL at {safe_url} is unreachable ({why})"
                    print(f"skipping postgresql: {skipped[name]}", file=sys.stderr)
                    backend.admin.dispose()
                    continue
                backends[name] = backend
                env["postgresql"] = backend.version()
                env["postgresql_settings"] = backend.settings()
            print(f"preparing {name} template (migrating)...", file=sys.stderr)
            backend.prepare()

        total = args.repeat * len(backends) * len(args.workers)
        done = 0
        for repeat in range(1, args.repeat + 1):
            for name, backend in backends.items():
                for k in args.workers:
                    done += 1
                    if time.monotonic() - started > args.budget:
                        print(f"[{done}/{total}] budget of {args.budget:.0f}s spent: skipping", file=sys.stderr)
                        continue
                    result = run_once(backend, k, args.jobs, args.batch_size, args.timeout)
                    result.update(backend=name, workers=k, repeat=repeat)
                    runs.append(result)
                    if result["ok"]:
                        print(
                            f"[{done}/{total}] {name:10} workers={k} repeat={repeat}: "
                            f"{result['jobs_per_s']:,.0f} jobs/s, claim p50 {result['claim_ms']['p50']:.2f} ms "
                            f"p95 {result['claim_ms']['p95']:.2f} ms; CPU busy {_fmt(result['machine_busy_cores'], 1)} "
                            f"of {os.cpu_count()} cores, workers {result['worker_cores']:.1f} "
                            f"(load before {result['load_average_before']:.1f})",
                            file=sys.stderr,
                        )
                    else:
                        print(f"[{done}/{total}] {name} workers={k} repeat={repeat}: FAILED {result}", file=sys.stderr)
    finally:
        for backend in backends.values():
            backend.cleanup()

    env["load_average_at_end"] = list(os.getloadavg())
    env["elapsed_s"] = round(time.monotonic() - started, 1)
    rows = aggregate(runs, list(backends), args.workers)
    table = markdown_table(rows)
    headline = (
        f"Runtime benchmark, {env['date_utc']}: {args.jobs} noop jobs per run, median of {args.repeat} runs, "
        f"WORKER_BATCH_SIZE={batch_size}, {env['cpu_count']} CPUs, Python {env['python']}, SQLite {env['sqlite']}"
    )
    if "postgresql" in env:
        headline += f", PostgreSQL {env['postgresql']}"
    print(f"\n{headline}\n")
    print(table)
    for name, why in skipped.items():
        print(f"\n{name}: skipped: {why}")
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"runtime-{stamp}.json"
        path.write_text(
            json.dumps({"environment": env, "skipped": skipped, "summary": rows, "runs": runs}, indent=2, default=str)
        )
        print(f"\nJSON: {path.relative_to(REPO_ROOT)}")
    return 0 if runs and all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == DRIVER_FLAG:
        _driver(sys.argv[2], int(sys.argv[3]) or None)
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            print("interrupted; scratch databases and files were removed", file=sys.stderr)
            sys.exit(130)
