"""Offboarding latency and coalescing: a leaver out of 50 chats, and 100 leavers across 300 chats.

Run from the repository root::

    .venv/bin/python bench/offboarding.py                          # SQLite, both deletion modes
    .venv/bin/python bench/offboarding.py --database-url sqlite \\
        --database-url postgresql://postgres@127.0.0.1:5432/test    # both databases
    .venv/bin/python bench/offboarding.py --runs 3 --mass-leavers 20 --mass-chats 40 --modes keep   # quick

The deployment, all on this machine, each a real process:

* the sandbox tenant (``python -m wecom_plugin.emulator``, real clock) with a ``latency`` fault of
  ``--latency-ms`` (default 50) on every endpoint and WeCom's per-API limits lifted; its
  ``on_member_delete`` flag set per pass (``remove``: WeCom takes a deleted member out of chats
  itself; ``keep``: it does not), its contact-sync callbacks posted to the plugin;
* gunicorn with ``config/gunicorn.conf.py`` (the HR API and the callback receiver);
* one ``wecom-plugin worker`` process with ``--threads`` (default: ``WORKER_THREADS``, 8) threads.

No clock process: the paths measured need none (the minute sweep is the backstop, not the path).

The tenant: ``build_org(--org-members, --departments)`` from ``bench/sync.py``. Per database and mode, a
fresh scratch database (as in bench/sync.py) is migrated, mirrored (``run_sync``), given the governed
chats (written into the emulator's org as chats our app created, and into ``governed_group`` and
``chat_member``) and switched to enforce mode. Then:

1. **single**: ``--chats`` (50) chats each holding ``2 x --runs`` leavers and 10 others. ``--runs`` times,
   one leaver is offboarded by HR (``POST /api/v1/offboardings``), and ``--runs`` times one is disabled in
   the directory (the emulator posts the ``change_contact`` callback; the plugin re-reads and plans).
   Latency: from just before the trigger to the emulator's timestamp of the last ``appchat/update``
   removing the leaver (the emulator and this process share the host clock). Also counted: the
   ``appchat/update`` calls of the run (goal: exactly ``--chats``).
2. **mass**, once per ``--mass-triggers`` (default ``directory,hr``), each with its own leavers and chats:
   ``--mass-chats`` (300) chats of 20 stayers; each of ``--mass-leavers`` (100) leavers is put in a random
   5 % of them (a tenth of the chats get none). All leave at once: the directory disables them (16
   threads calling the emulator's admin API; each makes a callback), or HR posts them (16 threads).
   Counted: ``appchat/update`` calls against the distinct chats holding a leaver, the time to send the
   triggers and the time to the last removal. The goal "calls = distinct chats" holds when the
   departures reach the plugin within the coalescing cap (1 s): it is judged for the directory burst;
   for HR it is reported (100 POSTs take longer than 1 s to arrive, so a chat may take two updates).

Between runs the plugin's hourly ``appchat.update`` counters are cleared (``rate_counter``), and the
emulator's own cap (``appchat_updates_per_hour``) is lifted: 2 x 20 runs of 50 chats are 2,000 updates,
twice WeCom's hourly cap per corp, which the budget service would otherwise (rightly) defer to the next
hour. Nothing else is reset between runs.

Results: a Markdown table on stdout and ``bench/results/offboarding-<timestamp>.json`` (gitignored).
Scratch databases, files and processes are removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import callbacks  # noqa: E402 - bench/ is on sys.path when a script runs
import requests
from common import run_environment  # noqa: E402
from sync import OUR_AGENTID, Budget, PostgresDatabase, SQLiteDatabase, build_org  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import callback_load as load  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
P95_GOAL_S = 5.0
STAYERS_SINGLE = 10
STAYERS_MASS = 20
HR_HEADERS = {"Content-Type": "application/json"}


# ================================================================================================
# The tenant and its chats
# ================================================================================================
def plan(org: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The chats of both scenarios (for the org file and the registry) and who leaves when."""
    from wecom_plugin.domain.membership import Person, RealNamePolicy

    policy = RealNamePolicy()
    people = [
        u["userid"]
        for u in org["users"]
        if u["status"] == 1 and policy.check(Person(u["userid"], u["name"], u["status"])) is None
    ]
    rng = random.Random(args.seed)
    rng.shuffle(people)
    triggers = args.mass_triggers
    need = 2 * args.runs + STAYERS_SINGLE + args.mass_leavers * len(triggers) + STAYERS_MASS * 3
    if len(people) < need:
        raise SystemExit(f"the tenant has {len(people)} usable members; this plan needs {need}")
    single_leavers, rest = people[: 2 * args.runs], people[2 * args.runs :]
    single_stayers, rest = rest[:STAYERS_SINGLE], rest[STAYERS_SINGLE:]
    chats: list[dict[str, Any]] = []
    for i in range(args.chats):
        chats.append({"chatid": f"wrbenchoff{i:04d}", "name": f"离职测试群{i:03d}", "owner": single_stayers[0],
                      "members": [*single_stayers, *single_leavers]})  # fmt: skip
    out: dict[str, Any] = {
        "chats": chats,
        "hr": single_leavers[: args.runs],
        "disable": single_leavers[args.runs :],
        "single_chats": [c["chatid"] for c in chats[: args.chats]],
        "mass": {},
    }
    stayers = rest[args.mass_leavers * len(triggers) :]
    share = max(1, round(args.mass_chats * 0.05))
    for t_index, trigger in enumerate(triggers):
        leavers = rest[t_index * args.mass_leavers : (t_index + 1) * args.mass_leavers]
        members = {f"wrbench{trigger[:3]}{i:04d}": rng.sample(stayers, STAYERS_MASS) for i in range(args.mass_chats)}
        eligible = sorted(members)[: args.mass_chats - args.mass_chats // 10]  # a tenth: no leaver
        affected: set[str] = set()
        for leaver in leavers:
            for chatid in rng.sample(eligible, min(share, len(eligible))):
                members[chatid].append(leaver)
                affected.add(chatid)
        for i, (chatid, userids) in enumerate(sorted(members.items())):
            chats.append({"chatid": chatid, "name": f"批量离职群{trigger[:3]}{i:03d}", "owner": userids[0],
                          "members": userids})  # fmt: skip
        seats = sum(1 for c in affected for m in members[c] if m in set(leavers))
        out["mass"][trigger] = {"leavers": leavers, "affected": sorted(affected), "seats": seats}
    return out


# ================================================================================================
# The emulator (real clock) and the plugin's processes
# ================================================================================================
class Emulator(callbacks.Emulator):
    """bench/callbacks.py's tenant (real clock), with WeCom's per-API limits lifted and a long request log."""

    def __init__(self, org_path: Path, log_path: Path) -> None:
        super().__init__(str(org_path), log_path, flags=("basic_limits=false", "request_log_max=500000"))

    def last_seq(self) -> int:
        return int(self.call("GET", "requests", params={"limit": 1})["last_seq"])

    def requests_since(self, seq: int) -> list[dict[str, Any]]:
        return self.call("GET", "requests", params={"since": seq, "limit": 500000})["requests"]

    def chat_members(self, chatid: str) -> set[str]:
        return {m.casefold() for m in self.call("GET", f"chats/{chatid}", params={"include_dropped": "0"})["userlist"]}


def plugin_env(emulator: Emulator, database_url: str, tmp: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WECOM_")},
        **emulator.env,
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(REPO_ROOT),
        "LOG_LEVEL": "WARNING",
        # web, worker and this process must agree on both (API keys are encrypted with the second)
        "SECRET_KEY": secrets.token_urlsafe(32),
        "WECOM_PLUGIN_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }


def prepare(env: dict[str, str], chats: list[dict[str, Any]]) -> str:
    """Mirror the directory, register the chats, enforce mode; returns an HR API key header."""
    from wecom_plugin import create_app
    from wecom_plugin.extensions import db
    from wecom_plugin.models.base import utcnow
    from wecom_plugin.models.groups import GovernedGroup
    from wecom_plugin.services import api_keys, governance_switches
    from wecom_plugin.services.directory_sync import run_sync
    from wecom_plugin.services.membership_check import refresh_chat_members

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        app = create_app()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    report = run_sync(app, trigger="bench")
    if report.state != "completed":
        raise RuntimeError(f"directory sync {report.state}: {report.error}")
    with app.app_context():
        rows = [
            GovernedGroup(
                name=c["name"],
                status="active",
                chatid=c["chatid"],
                owner=c["owner"],
                admins=[c["owner"]],
                rule={"permitted": {"users": c["members"]}},
                first_check_at=utcnow(),
            )  # fmt: skip
            for c in chats
        ]
        db.session.add_all(rows)
        db.session.flush()
        ids = {r.chatid: r.id for r in rows}
        governance_switches.set_mode(db.session, "system:bench", "enforce", "observe")
        client = api_keys.create_client(db.session, "hr-bench", ["offboarding:write", "offboarding:read"])
        db.session.flush()
        key_id, secret = api_keys.create_key(
            db.session, client, encryption_key=app.extensions["wecom_settings"].encryption_key
        )
        db.session.commit()
        engine = db.engine
    for c in chats:
        refresh_chat_members(engine, ids[c["chatid"]], c["members"])
    engine.dispose()
    return f"Bearer {key_id}.{secret}"


def clear_update_budget(database_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM rate_counter WHERE bucket LIKE :b"), {"b": "%appchat.update%"})
    engine.dispose()


# ================================================================================================
# Measuring
# ================================================================================================
def removal_times(entries: list[dict[str, Any]], leavers: set[str]) -> tuple[dict[str, list[float]], int]:
    """Per leaver, the timestamps of updates removing them; and the number of appchat/update calls."""
    out: dict[str, list[float]] = {}
    calls = 0
    for e in entries:
        if e["endpoint"] != "appchat/update":
            continue
        calls += 1
        for userid in (e.get("body") or {}).get("del_user_list") or []:
            if userid.casefold() in leavers:
                out.setdefault(userid.casefold(), []).append(float(e["ts"]))
    return out, calls


def wait_removed(emulator: Emulator, seq: int, leavers: set[str], expected: int, timeout: float) -> list[dict]:
    """Poll the request log until ``expected`` removals of the leavers were made (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = emulator.requests_since(seq)
        times, _ = removal_times(entries, leavers)
        if sum(len(v) for v in times.values()) >= expected or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def single_runs(emulator: Emulator, web: str, auth: str, plan_: dict, args: argparse.Namespace, db_url: str) -> dict:
    out: dict[str, Any] = {}
    http = requests.Session()
    for trigger in ("hr", "disable"):
        latencies, calls, complete = [], [], 0
        for userid in plan_[trigger]:
            clear_update_budget(db_url)
            seq = emulator.last_seq()
            started = time.time()
            if trigger == "hr":
                response = http.post(web + "/api/v1/offboardings", json={"userid": userid},
                                     headers={**HR_HEADERS, "Authorization": auth, "Idempotency-Key": f"b-{userid}"},
                                     timeout=30)  # fmt: skip
                response.raise_for_status()
            else:
                emulator.call("POST", "directory/disable", json={"userid": userid})
            entries = wait_removed(emulator, seq, {userid.casefold()}, args.chats, args.run_timeout)
            times, n_calls = removal_times(entries, {userid.casefold()})
            stamps = times.get(userid.casefold(), [])
            calls.append(n_calls)
            if len(stamps) >= args.chats:
                complete += 1
                latencies.append(max(stamps) - started)
            time.sleep(args.pause)  # let the run's settle jobs go before the next trigger
        still = sum(
            1 for c in plan_["single_chats"] for u in plan_[trigger] if u.casefold() in emulator.chat_members(c)
        )
        out[trigger] = {
            "runs": len(plan_[trigger]),
            "complete": complete,
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(_pct(latencies, 95), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "updates_per_run": sorted(set(calls)),
            "left_in_chats": still,
        }
        print(f"    {trigger}: {out[trigger]}", file=sys.stderr)
    return out


def mass_run(emulator: Emulator, web: str, auth: str, plan_: dict, args: argparse.Namespace, db_url: str) -> dict:
    out: dict[str, Any] = {}
    http = requests.Session()
    for trigger, spec in plan_["mass"].items():
        clear_update_budget(db_url)
        folded = {u.casefold() for u in spec["leavers"]}
        seq = emulator.last_seq()
        started = time.time()

        def fire(userid: str, trigger: str = trigger) -> float:
            if trigger == "hr":
                r = http.post(web + "/api/v1/offboardings", json={"userid": userid},
                              headers={**HR_HEADERS, "Authorization": auth, "Idempotency-Key": f"m-{userid}"},
                              timeout=60)  # fmt: skip
                r.raise_for_status()
            else:
                emulator.call("POST", "directory/disable", json={"userid": userid})
            return time.time()

        with ThreadPoolExecutor(16) as pool:
            sent = list(pool.map(fire, spec["leavers"]))
        entries = wait_removed(emulator, seq, folded, spec["seats"], args.run_timeout * 4)
        times, calls = removal_times(entries, folded)
        updated = {c for e in entries if e["endpoint"] == "appchat/update" for c in e.get("chatids") or []}
        last = max((t for v in times.values() for t in v), default=None)
        out[trigger] = {
            "leavers": len(spec["leavers"]),
            "chats": args.mass_chats,
            "distinct_chats_affected": len(spec["affected"]),
            "seats_removed_expected": spec["seats"],
            "seats_removed": sum(len(v) for v in times.values()),
            "appchat_update_calls": calls,
            "chats_updated": len(updated),
            "triggers_sent_s": round(max(sent) - started, 3),
            "last_removal_s": round(last - started, 3) if last else None,
        }
        print(f"    mass {trigger}: {out[trigger]}", file=sys.stderr)
    return out


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(pct / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


# ================================================================================================
# One database, one mode
# ================================================================================================
def run_pass(spec: str, mode: str, args: argparse.Namespace, emulator: Emulator, plan_: dict, tmp: Path) -> dict:
    db: Any = SQLiteDatabase(tmp) if spec == "sqlite" else PostgresDatabase(spec)
    if spec != "sqlite":
        db.database = db.database.replace("bench_sync_", "bench_off_")
        db.url = db.admin_url.set(database=db.database).render_as_string(hide_password=False)
    processes: list[tuple[subprocess.Popen, int]] = []
    try:
        print(f"[{db.name} / on_member_delete={mode}] preparing...", file=sys.stderr)
        db.create()
        emulator.call("POST", "reset", json={})
        # WeCom's 1,000 chat updates per corp hour are lifted here as in the plugin's budget (see above).
        flags = {"on_member_delete": mode, "callback_timestamp": "wall", "appchat_updates_per_hour": 1_000_000}
        emulator.call("POST", "flags", json=flags)
        if args.latency_ms:
            emulator.call(
                "POST", "faults", json={"action": "latency", "endpoint": "*", "seconds": args.latency_ms / 1000}
            )
        env = plugin_env(emulator, db.url, tmp)
        auth = prepare(env, plan_["chats"])
        worker_args = ["--threads", str(args.threads)] if args.threads else []
        worker = load.start_worker(env, tmp / f"worker-{db.name}-{mode}.log", *worker_args)
        processes.append((worker, signal.SIGTERM))
        web, base = load.start_gunicorn(env, tmp / f"web-{db.name}-{mode}.log")
        processes.append((web, signal.SIGTERM))
        receiver = {"receiver": "contact_sync", "url": base + "/wecom/callback/contacts"}
        receiver.update(token=env["WECOM_CONTACT_CALLBACK_TOKEN"], aes_key=env["WECOM_CONTACT_CALLBACK_AES_KEY"])
        emulator.call("POST", "callbacks/receivers", json=receiver)
        result = {"database": db.name, "database_version": db.version(), "on_member_delete": mode}
        result["single"] = single_runs(emulator, base, auth, plan_, args, db.url)
        result["mass"] = mass_run(emulator, base, auth, plan_, args, db.url)
        return result
    finally:
        load.stop_all(processes, timeout=30)
        emulator.call("DELETE", "faults")
        db.drop()


def evaluate(result: dict[str, Any], chats: int) -> dict[str, bool | None]:
    single, mass = result["single"], result["mass"]
    goals: dict[str, bool | None] = {}
    for trigger in ("hr", "disable"):
        s = single[trigger]
        goals[f"{trigger}: p95 <= {P95_GOAL_S:g} s"] = s["p95_s"] is not None and s["p95_s"] <= P95_GOAL_S
        goals[f"{trigger}: {chats} updates a run"] = s["updates_per_run"] == [chats] and s["complete"] == s["runs"]
        goals[f"{trigger}: nobody left in a chat"] = s["left_in_chats"] == 0
    for trigger, m in mass.items():
        goals[f"mass {trigger}: every seat removed"] = m["seats_removed"] == m["seats_removed_expected"]
        # judged where the departures arrive within the window (see docs/benchmarks.md)
        ok = m["appchat_update_calls"] == m["distinct_chats_affected"]
        goals[f"mass {trigger}: calls = distinct chats"] = ok if trigger == "directory" else (ok or None)
    return goals


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| database | deleted members | trigger | runs | p50 s | p95 s | max s | updates / run |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for trigger, label in (("hr", "HR API"), ("disable", "directory: disabled")):
            s = r["single"][trigger]
            lines.append(f"| {r['database']} | {r['on_member_delete']} | {label} | {s['complete']}/{s['runs']} | "
                         f"{s['p50_s']} | {s['p95_s']} | {s['max_s']} | {s['updates_per_run']} |")  # fmt: skip
    lines += ["", "| database | deleted members | trigger | leavers | chats affected | appchat/update | seats removed "
              "| triggers sent in s | last removal s |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        for trigger, m in r["mass"].items():
            seats = f"{m['seats_removed']}/{m['seats_removed_expected']}"
            lines.append(f"| {r['database']} | {r['on_member_delete']} | {trigger} | {m['leavers']} | "
                         f"{m['distinct_chats_affected']} | {m['appchat_update_calls']} | {seats} | "
                         f"{m['triggers_sent_s']} | {m['last_removal_s']} |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=50, help="chats of the single leaver (default 50)")
    parser.add_argument("--runs", type=int, default=20, help="runs per trigger (default 20)")
    parser.add_argument("--mass-leavers", type=int, default=100, help="leavers at once (default 100)")
    parser.add_argument("--mass-chats", type=int, default=300, help="chats of the mass departure (default 300)")
    parser.add_argument("--mass-triggers", default="directory,hr", help="directory and/or hr (default both)")
    parser.add_argument("--org-members", type=int, default=1000, help="members in the tenant (default 1000)")
    parser.add_argument("--departments", type=int, default=40, help="departments (default 40)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator latency per call (default 50)")
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default WORKER_THREADS)")
    parser.add_argument("--modes", default="remove,keep", help="on_member_delete settings (default remove,keep)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between runs (default 0.5)")
    parser.add_argument("--run-timeout", type=float, default=30.0, help="seconds one run may take (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", action="append", default=None,
                        help="'sqlite' (default) or a PostgreSQL admin URL (scratch database); repeatable")  # fmt: skip
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds for the whole run (default 3600)")
    parser.add_argument("--no-json", action="store_true")
    args = parser.parse_args(argv)
    args.database_url = args.database_url or ["sqlite"]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.mass_triggers = [t.strip() for t in args.mass_triggers.split(",") if t.strip()]
    if not args.mass_triggers or any(t not in ("hr", "directory") for t in args.mass_triggers):
        parser.error("--mass-triggers: directory and/or hr")
    if any(m not in ("remove", "keep") for m in args.modes):
        parser.error("--modes: remove and/or keep")
    if args.chats < 1 or args.runs < 1 or args.mass_leavers < 1 or args.mass_chats < 10:
        parser.error("--chats, --runs and --mass-leavers must be positive, --mass-chats at least 10")
    return args


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bench_off_"))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    emulator: Emulator | None = None
    try:
        org = build_org(args.org_members, args.departments, args.seed)
        plan_ = plan(org, args)
        org["appchats"] = org.get("appchats", []) + [{**c, "creator": OUR_AGENTID} for c in plan_["chats"]]
        org_path = tmp / "org.json"
        org_path.write_text(json.dumps(org, ensure_ascii=False), encoding="utf-8")
        emulator = Emulator(org_path, tmp / "emulator.log")
        for spec in args.database_url:
            for mode in args.modes:
                if budget.left() <= 0:
                    failures.append({"database": spec, "error": "out of --budget"})
                    continue
                try:
                    res = run_pass(spec, mode, args, emulator, plan_, tmp)
                except Exception as exc:  # noqa: BLE001 - one pass failing keeps the others
                    print(f"[{spec} / {mode}] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                    failures.append({"database": spec, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:3000]})
                    for log in sorted(tmp.glob("*.log")):
                        print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
                else:
                    res["goals"] = evaluate(res, args.chats)
                    results.append(res)
    finally:
        if emulator is not None:
            emulator.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    env = run_environment(started, None, [{**r, "steps": {"database_version": r["database_version"]}} for r in results])
    print(f"\nOffboarding, {env['date_utc']}: {args.chats} chats x {args.runs} runs per trigger; {args.mass_leavers} "
          f"leavers across {args.mass_chats} chats per mass trigger; {args.latency_ms:g} ms emulator latency per call; "
          f"worker threads "
          f"{args.threads or 'WORKER_THREADS'}; {env['cpus']} CPUs, Python {env['python']}\n")  # fmt: skip
    if results:
        print(markdown(results))
        for r in results:
            print(f"\n{r['database']} / {r['on_member_delete']}: " + ", ".join(
                f"{k}: {'yes' if v else 'NO'}" for k, v in r["goals"].items()))  # fmt: skip
    for failure in failures:
        print(f"\nFAILED: {failure}")
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"offboarding-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        payload = {"args": {k: v for k, v in vars(args).items()}, "environment": env, "results": results,
                   "failures": failures}  # fmt: skip
        path.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
        print(f"\nJSON: {path.relative_to(REPO_ROOT)}")
    met = all(v is not False for r in results for v in r["goals"].values())
    return 0 if results and not failures and met else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; scratch databases and files were removed", file=sys.stderr)
        sys.exit(130)
