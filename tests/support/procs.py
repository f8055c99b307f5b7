"""Start real worker and clock processes against a test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def plugin_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_")}
    env.update(
        WECOM_SANDBOX="true",
        DATABASE_URL=database_url,
        WECOM_PLUGIN_JOB_MODULES="tests.support.jobs",
        PYTHONPATH=str(REPO_ROOT),
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


# Every process a test starts, so a failing test cannot leave one running (conftest kills them).
STARTED: list[subprocess.Popen] = []


def start(database_url: str, *args: str, **env: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wecom_plugin", *args],
        cwd=REPO_ROOT,
        env=plugin_env(database_url, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(proc)
    return proc


def reap_all() -> None:
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.communicate()


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"process did not exit in {timeout}s; stderr:\n{err}") from None
    return proc.returncode, err
