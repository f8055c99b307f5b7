"""Real processes that use the WeCom client with the database token store and budget.

``python -m tests.support.client_procs MODE BARRIER_DIR [ARGS]``: builds the app from the environment
(:func:`client_env`), writes ``BARRIER_DIR/ready.<pid>``, waits for ``BARRIER_DIR/go`` so every process
starts its calls at the same moment, then prints one JSON line:

* ``token``: one ``department/simplelist`` call → ``{"departments": N}``.
* ``budget CHATID N``: N ``appchat/update`` calls through the budget → ``{"granted", "denied", "retry_after"}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.procs import REPO_ROOT, STARTED, plugin_env, wait_for


def client_env(database_url: str, emulator, encryption_key: str, **extra: str) -> dict[str, str]:
    """The environment of a plugin process that talks to ``emulator`` as our app (agent 1000002)."""
    return plugin_env(
        database_url,
        WECOM_API_BASE_URL=emulator.url,
        WECOM_CORP_ID=emulator.corp_id,
        WECOM_AGENT_ID=str(emulator.OUR),
        WECOM_SECRET=emulator.secret(),
        WECOM_PLUGIN_ENCRYPTION_KEY=encryption_key,
        **extra,
    )


def start_many(count: int, env: dict[str, str], barrier: Path, *args: str) -> list[subprocess.Popen]:
    """Start ``count`` processes and wait until all are ready (not yet released)."""
    barrier.mkdir(parents=True, exist_ok=True)
    procs = []
    for _ in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.client_procs", args[0], str(barrier), *args[1:]],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        STARTED.append(proc)
        procs.append(proc)

    def all_ready() -> bool:
        for proc in procs:
            if proc.poll() is not None:
                _, err = proc.communicate()
                raise AssertionError(f"a client process exited early ({proc.returncode}):\n{err}")
        return len(list(barrier.glob("ready.*"))) == count

    wait_for(all_ready, timeout=120, what=f"{count} client processes to start")
    return procs


def release_and_collect(procs: list[subprocess.Popen], barrier: Path, timeout: float = 120) -> list[dict]:
    """Let the processes go and return each one's JSON result."""
    (barrier / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _wait_for_go(barrier: Path) -> None:
    (barrier / f"ready.{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("never released")
        time.sleep(0.002)


def main(argv: list[str]) -> None:
    from wecom_plugin import create_app
    from wecom_plugin.services.wecom import client_for

    mode, barrier = argv[0], Path(argv[1])
    app = create_app()
    client = client_for(app)
    if mode == "token":
        from wecom_plugin.wecom.api import department

        _wait_for_go(barrier)
        print(json.dumps({"departments": len(department.simplelist(client))}))
    elif mode == "budget":
        from wecom_plugin.wecom.api import appchat
        from wecom_plugin.wecom.budget import BudgetExhausted

        chatid, count = argv[2], int(argv[3])
        granted = denied = 0
        retry_after = None
        _wait_for_go(barrier)
        for i in range(count):
            try:
                appchat.update(client, chatid, name=f"p{os.getpid()}-{i}")
                granted += 1
            except BudgetExhausted as exc:
                denied += 1
                retry_after = exc.retry_after
        print(json.dumps({"granted": granted, "denied": denied, "retry_after": retry_after}))
    else:
        raise SystemExit(f"unknown mode {mode}")
    client.close()


if __name__ == "__main__":
    main(sys.argv[1:])
