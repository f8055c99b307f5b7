"""Real worker and clock processes firing bulletins at the sandbox tenant, and a pause hook for them.

Two roles in one module:

* **Helpers for the test process** (:func:`start_worker`, :func:`start_clock`, bulk setup, readers).
* **A fault hook loaded by the subprocesses** through ``WECOM_PLUGIN_JOB_MODULES``. When the
  environment variable :data:`PAUSE_ENV` is set, importing this module wraps one point of the
  ``bulletins.fire`` path so the process stops there once, after writing a marker file:

  - ``"handler"``: right after the claim, before the handler opened the run (nothing exists yet);
  - ``"step"``: right before the delivery's at-most-once step (the run and a ``pending`` delivery
    exist, no ``sending`` mark has been written, no WeCom call made);
  - ``"call"``: inside the step, after ``sending`` was committed and before the WeCom call (and
    before the lease check the client makes right before its request).

  The process then waits (its lease keeper renewing the lease) until the test creates the marker's
  ``.go`` file or ``seconds`` pass, and carries on. The hook only delays (it changes no state), so a
  test can kill -9 or SIGSTOP the process at a known point while it holds the job's lease. Without
  the variable, importing the module does nothing: the test process imports it for its helpers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PAUSE_ENV = "BULLETIN_TEST_PAUSE"
# The subprocesses load this module only (not tests.support.jobs): no test schedules or job types
# besides the product's own get in the way.
JOB_MODULES = "tests.bulletins.process_support"
# One Fernet key for the test process (which encrypts robot keys when saving) and the workers
# (which decrypt them), instead of the sandbox secrets file in the shared instance folder.
ENCRYPTION_KEY = "q6xV6bE2rJQmUAaTt2mH0CqVYfQw2-1sB0b6yJb9vGk="


# --- the hook (runs inside worker subprocesses) ---------------------------------------------------
def _install_pause_hook() -> None:
    raw = os.environ.get(PAUSE_ENV)
    if not raw:
        return
    spec = json.loads(raw)
    at, seconds, marker = spec["at"], float(spec["seconds"]), Path(spec["marker"])
    state = {"paused": False}

    def pause(detail: dict[str, Any]) -> None:
        if state["paused"]:
            return
        state["paused"] = True
        tmp = marker.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), **detail}))
        tmp.replace(marker)  # atomic: the test never reads half a marker
        go, deadline = go_file(marker), time.monotonic() + seconds
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    if at == "handler":
        from wecom_plugin.services import bulletin_delivery

        original_fire = bulletin_delivery.fire

        def fire(ctx):
            pause({"job_id": ctx.job_id, "fence": ctx.fence, "at": at})
            return original_fire(ctx)

        # jobs/bulletins.py imports bulletin_delivery.fire when the job runs, so it finds this one.
        bulletin_delivery.fire = fire
    elif at == "step":
        from wecom_plugin.jobs.context import JobContext

        original_run_step = JobContext.run_step

        def run_step(self, target, action):
            if self.name == "bulletins.fire":
                pause({"job_id": self.job_id, "fence": self.fence, "target": target, "at": at})
            return original_run_step(self, target, action)

        JobContext.run_step = run_step
    elif at == "call":
        from wecom_plugin.services import bulletin_delivery

        original_send = bulletin_delivery._Plan.send

        def send(self, ctx, settings):
            pause({"job_id": ctx.job_id, "fence": ctx.fence, "at": at})
            return original_send(self, ctx, settings)

        bulletin_delivery._Plan.send = send
    else:
        raise ValueError(f"{PAUSE_ENV}: unknown pause point {at!r}")


def go_file(marker: Path) -> Path:
    """The file that lets a paused process carry on."""
    return marker.with_suffix(".go")


_install_pause_hook()


# --- starting processes (test process) ------------------------------------------------------------
def plugin_env(emulator, **extra: str) -> dict[str, str]:
    """Settings for a worker or clock subprocess: the sandbox tenant, the shared key, this module."""
    return {
        **emulator.plugin_settings(),
        "WECOM_PLUGIN_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "WECOM_PLUGIN_JOB_MODULES": JOB_MODULES,
        "CUSTOMER_GROUP_HANDOVER": "off",
        **extra,
    }


def app_overrides(emulator, db_url: str, **extra: Any) -> dict[str, Any]:
    """The same settings for the app the test process builds (make_app)."""
    return {
        "DATABASE_URL": db_url,
        **emulator.plugin_settings(),
        "WECOM_PLUGIN_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "CUSTOMER_GROUP_HANDOVER": "off",
        **extra,
    }


def start_worker(
    db_url: str, emulator, *args: str, pause: dict[str, Any] | None = None, **env: str
) -> subprocess.Popen:
    from tests.support import procs

    extra = dict(env)
    extra.setdefault("WORKER_THREADS", "1")
    extra.setdefault("WORKER_POLL_INTERVAL", "0.1")
    if pause is not None:
        extra[PAUSE_ENV] = json.dumps(pause)
    return procs.start(db_url, "worker", *args, **plugin_env(emulator, **extra))


def start_clock(db_url: str, emulator, *args: str, **env: str) -> subprocess.Popen:
    from tests.support import procs

    return procs.start(db_url, "clock", *args, **plugin_env(emulator, **env))


def stop(proc: subprocess.Popen, timeout: float = 60, *, terminate: bool = True) -> str:
    """SIGTERM (workers finish their running job first; ``terminate=False``: a process that exits by
    itself), wait, and return stderr; exit code 0 and no traceback expected."""
    from tests.support import procs

    if terminate and proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
    code, err = procs.finish(proc, timeout=timeout)
    assert code == 0, f"exit code {code}; stderr:\n{err[-4000:]}"
    assert "Traceback" not in err, err[-4000:]
    return err


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def release(marker: Path) -> None:
    """Let the process paused at ``marker`` carry on (once it runs: SIGCONT a stopped one)."""
    go_file(marker).touch()


def wait_for_marker(marker: Path, timeout: float = 30) -> dict[str, Any]:
    from tests.support import procs

    procs.wait_for(marker.exists, timeout, what=f"the pause hook's marker {marker.name}")
    return json.loads(marker.read_text())


# --- the tenant -----------------------------------------------------------------------------------
def add_robots(emulator, chatid: str, keys: Iterable[str]) -> None:
    """One group robot per key in ``chatid`` (through the emulator's admin API, over HTTP)."""
    for key in keys:
        emulator.admin("robots", chatid=chatid, key=key, name=key[-12:])


def robot_sends(emulator) -> Counter:
    """Robot messages the tenant recorded (applied sends), by robot key."""
    return Counter(m.robot_key for m in list(emulator.data.messages.values()) if m.path == "robot")


def webhook_requests(emulator) -> list[dict[str, Any]]:
    return emulator.requests(endpoint="webhook/send")


# --- the database ---------------------------------------------------------------------------------
def reader(db_url: str):
    """An engine of our own for polling from the test process (no pool: nothing held between polls)."""
    import sqlalchemy as sa

    return sa.create_engine(db_url, poolclass=sa.pool.NullPool)


def scalar(engine, statement) -> Any:
    with engine.connect() as conn:
        return conn.execute(statement).scalar()


def delivery_states(engine, bulletin_id: int | None = None) -> list[str]:
    import sqlalchemy as sa

    from wecom_plugin.models.bulletins import BulletinDelivery

    query = sa.select(BulletinDelivery.state).order_by(BulletinDelivery.id)
    if bulletin_id is not None:
        query = query.where(BulletinDelivery.bulletin_id == bulletin_id)
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def wait_lease_expired(engine, job_id: int, timeout: float = 30) -> None:
    """Until the job's lease has run out by the database clock (a takeover may claim it now)."""
    import sqlalchemy as sa

    from wecom_plugin.models import Job
    from wecom_plugin.models.dbtime import sql_now

    query = sa.select(Job.lease_expires_at < sql_now()).where(Job.id == job_id)
    wait_until(lambda: bool(scalar(engine, query)), timeout, f"the lease of job {job_id} to expire")


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> None:
    from tests.support import procs

    procs.wait_for(condition, timeout, interval=interval, what=what)


def diagnose(engine, processes: Iterable[subprocess.Popen]) -> str:
    """What a timed-out test left behind: rows by state, the jobs' last errors, and the processes'
    stderr (they are stopped)."""
    import sqlalchemy as sa

    lines = []
    with engine.connect() as conn:
        for table, columns in (("bulletin_delivery", "state"), ("bulletin_run", "state"), ("occurrence", "state"),
                               ("job", "name, state")):  # fmt: skip
            found = conn.execute(sa.text(f"SELECT {columns}, count(*) FROM {table} GROUP BY {columns}")).all()
            lines.append(f"{table}: {[tuple(r) for r in found]}")
        errors = conn.execute(sa.text("SELECT DISTINCT last_error FROM job WHERE last_error IS NOT NULL LIMIT 5"))
        lines.extend(f"job error: {e}" for (e,) in errors)
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        _, err = proc.communicate()
        lines.append(f"--- pid {proc.pid} stderr (end):\n{(err or '')[-1500:]}")
    return "\n".join(lines)


def robot_bulletin_doc(name: str, robot: str, key: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "message": {"msgtype": "text", "content": "{{ bulletin_name }} {{ date }} {{ time }} {{ weekday_en }}"},
        "targets": {"robots": [{"name": robot, "key": key}]},
        "schedule": {"times": ["09:00"], "days": {"rule": "every_day"}},
        **extra,
    }
