"""WeCom client overhead per call, side by side with raw ``requests`` against the same emulator.

Run from the repository root::

    .venv/bin/python bench/client.py                 # 2,000 calls per row
    .venv/bin/python bench/client.py --calls 500

The emulator runs as its own process (see bench/emulator.py). Every row makes the same calls, one
thread, keep-alive, in this order, interleaved in rounds so machine noise hits all rows alike:

* ``raw``: ``requests.Session`` with the token in the query string (the floor);
* ``client, memory token``: :class:`WeComClient` with an in-memory token store and no budget
  (errcode handling, retries policy, guard, logging);
* ``client, SQLite token + budget``: the production wiring on SQLite (the shared token read through
  its per-process memo, the database budget counted on every ``appchat/update``).

Calls: ``user/get`` (a read, no budget) and ``appchat/update`` (a rename: one unit of the
1,000/hour chat-change budget). Results: a Markdown table and bench/results/client-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from emulator import RESULTS_DIR, _get_json, prepare, start_emulator  # noqa: E402

from wecom_plugin.wecom.client import WeComClient  # noqa: E402
from wecom_plugin.wecom.token_store import MemoryTokenStore  # noqa: E402


def raw_caller(api: str, ctx: dict[str, Any]):
    session = requests.Session()

    def call(endpoint: str, i: int) -> None:
        if endpoint == "user/get":
            r = session.get(api + "user/get", params={"access_token": ctx["token"], "userid": ctx["userid"]})
        else:
            r = session.post(
                api + "appchat/update",
                params={"access_token": ctx["token"]},
                json={"chatid": ctx["chatid"], "name": f"压测群 {i}"},
            )
        body = r.json()
        if body.get("errcode"):
            raise RuntimeError(body)

    return call, session.close


def client_caller(client: WeComClient, ctx: dict[str, Any]):
    from wecom_plugin.wecom.api import appchat, user

    def call(endpoint: str, i: int) -> None:
        if endpoint == "user/get":
            user.get(client, ctx["userid"])
        else:
            appchat.update(client, ctx["chatid"], name=f"压测群 {i}")

    return call, client.close


def production_client(api: str, overview: dict[str, Any], secret: str, folder: Path) -> WeComClient:
    from flask_migrate import upgrade

    from wecom_plugin import create_app
    from wecom_plugin.services.wecom import client_for

    app = create_app(
        {
            "WECOM_SANDBOX": "true",
            "DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite3'}",
            "WECOM_API_BASE_URL": api,
            "WECOM_CORP_ID": overview["corp_id"],
            "WECOM_AGENT_ID": "1000002",
            "WECOM_SECRET": secret,
        }
    )
    with app.app_context():
        upgrade()
    return client_for(app)


def measure(call, endpoint: str, calls: int, offset: int) -> list[float]:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        call(endpoint, offset + i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per row (split into 4 rounds)")
    args = parser.parse_args()

    proc, api = start_emulator("generated:1000:1", None)
    try:
        ctx = prepare(api)
        overview = _get_json(api, "")
        secret = next(a["secret"] for a in overview["apps"] if a["agentid"] == 1000002)
        ctx["userid"] = _get_json(api, "org")["users"][0]["userid"]
        with tempfile.TemporaryDirectory() as tmp:
            callers = {
                "raw requests": raw_caller(api, ctx),
                "client, memory token": client_caller(
                    WeComClient(
                        corp_id=overview["corp_id"],
                        secret=secret,
                        base_url=api,
                        agent_id=1000002,
                        token_store=MemoryTokenStore(),
                    ),  # fmt: skip
                    ctx,
                ),
                "client, SQLite token + budget": client_caller(
                    production_client(api, overview, secret, Path(tmp)), ctx
                ),
            }
            samples: dict[tuple[str, str], list[float]] = {}
            rounds, per_round = 4, max(1, args.calls // 4)
            for endpoint in ("user/get", "appchat/update"):
                for call, _close in callers.values():
                    call(endpoint, 0)  # warm-up: token, connection
                for r in range(rounds):
                    for name, (call, _close) in callers.items():
                        samples.setdefault((endpoint, name), []).extend(
                            measure(call, endpoint, per_round, r * per_round)
                        )
            for _call, close in callers.values():
                close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    rows = []
    for (endpoint, name), times in samples.items():
        raw = statistics.median(samples[(endpoint, "raw requests")])
        p50 = statistics.median(times)
        rows.append(
            {
                "endpoint": endpoint,
                "caller": name,
                "calls": len(times),
                "p50_ms": round(p50, 3),
                "p95_ms": round(statistics.quantiles(times, n=20)[18], 3),
                "calls_per_s": round(1000 / statistics.mean(times), 1),
                "overhead_p50_ms": round(p50 - raw, 3),
            }
        )
    print("| endpoint | caller | p50 ms | p95 ms | calls/s | overhead vs raw (p50 ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| `{row['endpoint']}` | {row['caller']} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            f"{row['calls_per_s']:,.0f} | {row['overhead_p50_ms']:+.2f} |"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"client-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"rows": rows, "calls": args.calls}, indent=1, ensure_ascii=False))
    print(f"\nJSON: {out.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
