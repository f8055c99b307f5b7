"""Bulletins (通报) at scale: 1,000 bulletins due in the same minute to 1,000 app chats.

Run from the repository root::

    .venv/bin/python bench/bulletins.py --quick                                  # smoke run, < 1 minute
    .venv/bin/python bench/bulletins.py --db sqlite --limits off                 # run A on SQLite
    .venv/bin/python bench/bulletins.py --db postgres --limits on                # run B on PostgreSQL
    .venv/bin/python bench/bulletins.py --db sqlite,postgres --limits off,on     # every combination

Goals (issue 6): no duplicates, nothing silently dropped. Run A ("limits off", the sandbox tenant's
limits lifted): lateness p50 and p99, the plugin's own overhead, goal p99 <= 2 s. Run B ("limits on",
the tenant's limits at the contract's values): the time to the last delivery against the bound WeCom's
limits set.

The deployment, all on this machine, each a real process:

* the sandbox tenant (``python -m wecom_plugin.emulator``, real clock) seeded with a generated company
  (``build_org(--org-members, 40)`` from bench/sync.py) and ``--chats`` app chats created by our app
  (written into the org file with ``creator`` = our agentid, as bench/offboarding.py does), each with
  ``--members`` active members dealt round-robin over the company so everyone sits in about the same
  number of chats; optionally a ``latency`` fault of ``--latency-ms`` on every endpoint;
* ``--clocks`` ``wecom-plugin clock`` processes and ``--workers`` ``wecom-plugin worker --threads K``
  processes, with the project's default settings (CLOCK_TICK_SECONDS 5, WORKER_POLL_INTERVAL 0.5,
  WORKER_BATCH_SIZE 20, the budget's 90 % headroom) unless ``--tick`` says otherwise.

Setup (not timed), per database and limits mode: a fresh scratch database (SQLite file or PostgreSQL
``bench_bul_*``), migrated; the directory mirrored (``run_sync``); the chats registered **directly in
the database** as active governed groups (``governed_group``) with their members in ``chat_member``
(what the plugin reads to take person-times from its budget), as a member check would leave them; then
one bulletin per chat created **through the service** (``services.bulletins.save``: validation, trial
render, its ``schedule`` row, audit), a text message naming the group.

A round: the processes are started and ready (every worker thread and clock has a heartbeat); T is the
next whole minute at least ``--lead`` seconds ahead (a bulletin is due "at 09:00"; ``--no-align``: T =
now + lead); every bulletin's ``schedule.next_run_at`` is set to T; then nothing is touched until every
delivery of the occurrence is final. Measured per delivery, all on this host's clock (SQLite's and this
PostgreSQL's ``now()`` are the host's; the tenant's real clock too):

* **lateness** = the tenant's timestamp of the message (when WeCom accepted it, after the latency
  fault) - T;
* its parts, each against T (negative: done before T, as the clock prepares bulletins up to
  CLOCK_PREPARE_SECONDS ahead): **materialise** = the occurrence job's ``created_at`` - T; **opened** = the
  run's ``created_at`` (the run and its deliveries are opened before the sends) - T; **start** = the
  delivery's ``sent_at`` (taken right before the budget and the call) - T: the send job's pickup, its checks
  and its ``sending`` mark; **send** = the message's timestamp - ``sent_at`` (the budget's transaction, the
  HTTP call, the latency fault).

Checks: ``appchat/send`` requests = chats, one per chat; one message per chat; one occurrence, run and
occurrence job per bulletin (plus at most one queued send job per run when it was prepared ahead); zero
recipients dropped by the tenant; zero 45009; every delivery ``sent``. Also counted: deliveries the
plugin's own budget made wait (their deadline was pushed), and the person-times the tenant received per
minute after T.

Run A repeats ``--rounds`` times on the same database and processes (3 by default): one round has one
clock-tick phase, so the lateness of its 1,000 deliveries shares one draw of it. Between rounds of run A
the plugin's ``appchat.send`` counters are cleared (the tenant's limits are lifted too), so a round is
never held by the one before. Run B runs one round (its budget and the tenant's windows must start empty;
later rounds, if asked for, share both with the earlier ones).

Variants: ``--rate-window fixed`` gives the tenant aligned minute windows instead of its default sliding
ones (WeCom's are undocumented); ``--no-chat-members`` leaves ``chat_member`` empty, as for a chat
registered but not yet read by a member check (the plugin then takes nothing from its budget).

``--members``: 15 for run A (1,000 x 15 = 15,000 person-times, inside the 18,000 a minute the plugin's
budget grants, so the round measures the plugin's overhead and not its budget), 30 for run B (30,000:
more than a minute of WeCom's 20,000 person-times, while each member gets about 30 messages, far from
200 a minute). ``--members 30 --limits off`` shows what the plugin's own budget does with the tenant's
limits lifted.

Results: a Markdown table on stdout and ``bench/results/bulletins-<timestamp>.json`` (gitignored).
Scratch databases, files and processes are removed at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import callbacks  # noqa: E402 - bench/ is on sys.path when a script runs
from common import run_environment  # noqa: E402
from sync import OUR_AGENTID, Budget, PostgresDatabase, SQLiteDatabase, build_org  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import callback_load as load  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_PG = os.environ.get("WECOM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
P99_GOAL_S = 2.0
CORP_MINUTE = 20_000  # WeCom: app-chat person-times per corp per minute (contract §3.4)
HEADROOM = 0.9  # the plugin's default WECOM_BUDGET_HEADROOM
LIFTED = 10**9
# The tenant's limits that touch appchat/send, lifted in run A.
LIMITS_OFF = {
    "basic_limits": False,
    "appchat_member_per_minute": LIFTED,
    "appchat_member_per_day": LIFTED,
    "appchat_corp_per_minute": LIFTED,
    "appchat_corp_per_hour": LIFTED,
}
PARTS = ("lateness", "materialise", "opened", "start", "send")
FINAL = ("sent", "failed", "unknown", "missed", "skipped", "cancelled")


# ================================================================================================
# The tenant and its chats
# ================================================================================================
def plan_chats(org: dict[str, Any], chats: int, members: int) -> list[dict[str, Any]]:
    """``chats`` chats of ``members`` distinct active members each, dealt round-robin over the company."""
    people = [u["userid"] for u in org["users"] if u.get("status", 1) == 1]
    if len(people) < members:
        raise SystemExit(f"the tenant has {len(people)} active members; a chat needs {members}")
    out = []
    cursor = 0
    for i in range(chats):
        picked = []
        while len(picked) < members:
            uid = people[cursor % len(people)]
            cursor += 1
            if uid not in picked:
                picked.append(uid)
        out.append({"chatid": f"wrbenchbul{i:05d}", "name": f"通报测试群{i:04d}", "owner": picked[0],
                    "members": picked, "creator": OUR_AGENTID})  # fmt: skip
    return out


class Emulator(callbacks.Emulator):
    """bench/callbacks.py's tenant (real clock) with a request log long enough for every round."""

    def __init__(self, org_path: Path, log_path: Path) -> None:
        super().__init__(str(org_path), log_path, flags=("request_log_max=500000",))

    def last_seq(self) -> int:
        return int(self.call("GET", "requests", params={"limit": 1})["last_seq"])

    def requests_since(self, seq: int, endpoint: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": seq, "limit": 500000}
        if endpoint:
            params["endpoint"] = endpoint
        return self.call("GET", "requests", params=params)["requests"]

    def appchat_messages(self) -> list[dict[str, Any]]:
        return self.call("GET", "messages", params={"path": "appchat"})["messages"]


def plugin_env(emulator: Emulator, database_url: str, args: argparse.Namespace) -> dict[str, str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WECOM_")},
        **emulator.env,
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(REPO_ROOT),
        "LOG_LEVEL": "WARNING",
        # every process and this one must agree (the stored access token is encrypted with it)
        "SECRET_KEY": secrets.token_urlsafe(32),
        "WECOM_PLUGIN_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "BULLETIN_QUIET_WINDOWS": "",  # the default, spelled out: no delivery is deferred
    }
    if args.tick:
        env["CLOCK_TICK_SECONDS"] = str(args.tick)
    if args.prepare is not None:
        env["CLOCK_PREPARE_SECONDS"] = str(args.prepare)
    return env


def _app(env: dict[str, str]):
    from wecom_plugin import create_app

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return create_app()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def prepare(env: dict[str, str], chats: list[dict[str, Any]], chat_members: bool = True) -> dict[str, Any]:
    """Mirror the directory, register the chats (directly), create one bulletin per chat (the service).

    ``chat_members`` False leaves ``chat_member`` empty, as right after a chat is registered and before
    its first member check has read it."""
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.models.base import utcnow
    from wecom_plugin.models.groups import ChatMember, GovernedGroup
    from wecom_plugin.services import bulletins
    from wecom_plugin.services.directory_sync import run_sync

    timings: dict[str, float] = {}
    app = _app(env)
    started = time.monotonic()
    report = run_sync(app, trigger="bench")
    if report.state != "completed":
        raise RuntimeError(f"directory sync {report.state}: {report.error}")
    timings["sync_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    with app.app_context():
        groups = [
            GovernedGroup(name=c["name"], status="active", chatid=c["chatid"], owner=c["owner"], admins=[c["owner"]],
                          rule={"permitted": {"users": c["members"]}}, first_check_at=utcnow())
            for c in chats
        ]  # fmt: skip
        db.session.add_all(groups)
        db.session.flush()
        group_ids = {g.chatid: g.id for g in groups}
        now = utcnow()
        rows = [
            {"group_id": group_ids[c["chatid"]], "userid_folded": u.casefold(), "userid": u, "seen_at": now}
            for c in chats
            for u in c["members"]
        ]
        for start in range(0, len(rows) if chat_members else 0, 5000):
            db.session.execute(sa.insert(ChatMember), rows[start : start + 5000])
        db.session.commit()
    timings["register_s"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    settings = app.extensions["wecom_settings"]
    bulletin_ids: dict[str, int] = {}
    with app.app_context():
        for i, c in enumerate(chats):
            doc = {
                "name": f"每日通报{i:04d}",
                "message": {"msgtype": "text", "title": "{{ date_zh }}（{{ weekday }}）通报",
                            "content": "{{ group_name }}：今日通报，请查收。"},
                "targets": {"chats": [group_ids[c["chatid"]]]},
                "schedule": {"times": ["09:00"], "days": {"rule": "every_day"}},
            }  # fmt: skip
            row = bulletins.save(db.session, doc, actor="user:bench", settings=settings)
            bulletin_ids[c["chatid"]] = row.id
            if i % 100 == 99:
                db.session.commit()
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    timings["create_bulletins_s"] = round(time.monotonic() - started, 2)
    return {"group_ids": group_ids, "bulletin_ids": bulletin_ids, "timings": timings}


# ================================================================================================
# The plugin's processes
# ================================================================================================
def start_processes(env: dict[str, str], args: argparse.Namespace, tmp: Path, label: str) -> dict[str, list]:
    procs: dict[str, list] = {"clock": [], "worker": []}
    for i in range(args.clocks):
        procs["clock"].append(
            load.spawn([sys.executable, "-m", "wecom_plugin", "clock"], env, tmp / f"clock{i}-{label}.log")
        )
    for i in range(args.workers):
        procs["worker"].append(load.start_worker(env, tmp / f"worker{i}-{label}.log", "--threads", str(args.threads)))
    return procs


def wait_ready(engine, procs: dict[str, list], args: argparse.Namespace, timeout: float = 90) -> float:
    """Until every worker thread and clock has written a heartbeat; returns the seconds it took."""
    import sqlalchemy as sa

    started = time.monotonic()
    want_workers, want_clocks = args.workers * args.threads, args.clocks
    while True:
        for kind, group in procs.items():
            for p in group:
                if p.poll() is not None:
                    raise RuntimeError(f"a {kind} process exited with code {p.returncode} before it was ready")
        with engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.text("SELECT kind, count(*) FROM process_heartbeat WHERE state = 'running' GROUP BY kind")
                ).all()
            )
        if counts.get("worker", 0) >= want_workers and counts.get("clock", 0) >= want_clocks:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"processes not ready after {timeout:.0f} s: heartbeats {counts}")
        time.sleep(0.2)


def cpu_snapshot(procs: dict[str, list], emulator: Emulator) -> dict[str, float]:
    snap = {kind: sum(callbacks.group_cpu_seconds(p.pid) for p in group) for kind, group in procs.items()}
    snap["emulator"] = callbacks.group_cpu_seconds(emulator.proc.pid)
    busy, total = callbacks.machine_busy_seconds()
    snap["machine_busy"], snap["machine_total"] = busy, total
    return snap


# ================================================================================================
# The floor: the same sends from a bare client
# ================================================================================================
def measure_floor(emulator: Emulator, chats: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    """Send one text message to every chat from ``threads`` threads of a bare HTTP client (kept-alive
    urllib3, no database, no budget), all released at once: how long the tenant itself takes to accept
    them on this machine. The plugin's own overhead is the rounds' lateness beyond this."""
    import threading

    import urllib3

    base = emulator.env["WECOM_API_BASE_URL"]
    pool = urllib3.PoolManager(maxsize=threads)
    token = json.loads(
        pool.request(
            "GET", base + "gettoken",
            fields={"corpid": emulator.env["WECOM_CORP_ID"], "corpsecret": emulator.env["WECOM_SECRET"]},
        ).data
    )["access_token"]  # fmt: skip
    url = f"{base}appchat/send?access_token={token}"
    cpu_before = callbacks.group_cpu_seconds(emulator.proc.pid)
    done: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(threads + 1)

    def work(share: list[dict[str, Any]]) -> None:
        barrier.wait()
        for chat in share:
            body = {"chatid": chat["chatid"], "msgtype": "text", "text": {"content": f"{chat['name']}：基线"}}
            answer = json.loads(pool.request("POST", url, body=json.dumps(body, ensure_ascii=False).encode()).data)
            if answer.get("errcode"):
                errors.append(f"{answer.get('errcode')}: {answer.get('errmsg')}")
            done.append(time.monotonic())

    pool_threads = [threading.Thread(target=work, args=(chats[k::threads],)) for k in range(threads)]
    for t in pool_threads:
        t.start()
    barrier.wait()
    started = time.monotonic()
    for t in pool_threads:
        t.join()
    offsets = sorted(d - started for d in done)
    return {
        "threads": threads,
        "sends": len(done),
        "errors": len(errors),
        "p50_s": round(offsets[len(offsets) // 2], 3) if offsets else None,
        "p99_s": round(offsets[max(0, math.ceil(len(offsets) * 0.99) - 1)], 3) if offsets else None,
        "last_s": round(offsets[-1], 3) if offsets else None,
        "emulator_cpu_ms_per_send": round(
            (callbacks.group_cpu_seconds(emulator.proc.pid) - cpu_before) * 1000 / max(1, len(done)), 2
        ),
    }


# ================================================================================================
# One round
# ================================================================================================
def choose_t(args: argparse.Namespace, not_before: float) -> datetime:
    earliest = max(time.time(), not_before) + args.lead
    if args.align:
        return datetime.fromtimestamp(math.ceil(earliest / 60) * 60, UTC)
    return datetime.fromtimestamp(math.ceil(earliest), UTC)


def set_due(engine, when: datetime) -> int:
    import sqlalchemy as sa

    from wecom_plugin.models.jobs import Schedule

    table = Schedule.__table__
    with engine.begin() as conn:
        return conn.execute(sa.update(table).where(table.c.key.like("bulletin:%")).values(next_run_at=when)).rowcount


def clear_send_budget(engine) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM rate_counter WHERE bucket LIKE '%appchat.send%'"))


def wait_final(engine, when: datetime, expected: int, timeout: float) -> tuple[int, float]:
    """Poll until ``expected`` deliveries of the occurrence at ``when`` are final (or the timeout)."""
    import sqlalchemy as sa

    from wecom_plugin.models.bulletins import BulletinDelivery

    d = BulletinDelivery.__table__
    deadline = time.time() + timeout
    final = 0
    while time.time() < deadline:
        with engine.connect() as conn:
            final = conn.execute(
                sa.select(sa.func.count()).where(d.c.scheduled_at == when, d.c.state.in_(FINAL))
            ).scalar_one()
        if final >= expected:
            return final, time.time()
        time.sleep(0.5)
    return final, time.time()


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _stats(values: list[float]) -> dict[str, float | None]:
    r = lambda v: None if v is None else round(v, 3)  # noqa: E731
    return {
        "n": len(values),
        "p50": r(_pct(values, 50)),
        "p99": r(_pct(values, 99)),
        "max": r(max(values) if values else None),
    }


def collect(engine, emulator: Emulator, when: datetime, prep: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """Everything one round left in the database and the tenant, checked and summarised."""
    import sqlalchemy as sa

    from wecom_plugin.models.bulletins import BulletinDelivery, BulletinRun
    from wecom_plugin.models.jobs import Job, Occurrence

    dt, rt, jt, ot = (m.__table__ for m in (BulletinDelivery, BulletinRun, Job, Occurrence))
    chat_of_bulletin = {b: c for c, b in prep["bulletin_ids"].items()}
    with engine.connect() as conn:
        deliveries = conn.execute(sa.select(dt).where(dt.c.scheduled_at == when)).all()
        runs = conn.execute(sa.select(rt).where(rt.c.scheduled_at == when)).all()
        occurrences = conn.execute(
            sa.select(ot).where(ot.c.scheduled_at == when, ot.c.schedule_key.like("bulletin:%"))
        ).all()
        job_ids = [o.job_id for o in occurrences if o.job_id is not None]
        jobs = {}
        for start in range(0, len(job_ids), 500):
            for j in conn.execute(sa.select(jt).where(jt.c.id.in_(job_ids[start : start + 500]))):
                jobs[j.id] = j
        fire_jobs_in_round = conn.execute(
            sa.select(sa.func.count()).where(
                jt.c.name == "bulletins.fire", jt.c.created_at >= before["wall"], jt.c.dedupe_key.like("occ:%")
            )
        ).scalar_one()
        send_jobs_in_round = conn.execute(
            sa.select(sa.func.count()).where(
                jt.c.name == "bulletins.send",
                jt.c.created_at >= before["wall"],
                jt.c.dedupe_key.like("bulletin-prepared:%"),
            )
        ).scalar_one()
        corp_windows = conn.execute(
            sa.text(
                "SELECT window_start, count FROM rate_counter WHERE bucket = 'budget:appchat.send.corp_minute:corp' "
                "ORDER BY window_start"
            )  # fmt: skip
        ).all()
    run_by_bulletin = {r.bulletin_id: r for r in runs}
    occ_by_bulletin = {int(o.schedule_key.split(":", 1)[1]): o for o in occurrences}

    # The tenant's side: this round's messages and requests.
    messages = [m for m in emulator.appchat_messages() if m["seq"] > before["msg_seq"]]
    requests_ = emulator.requests_since(before["req_seq"])
    sends = [r for r in requests_ if r["endpoint"] == "appchat/send"]
    msg_by_chat: dict[str, list[dict]] = {}
    for m in messages:
        msg_by_chat.setdefault(m["chatid"], []).append(m)
    sends_by_chat: dict[str, int] = {}
    for r in sends:
        chatid = (r.get("body") or {}).get("chatid")
        sends_by_chat[chatid] = sends_by_chat.get(chatid, 0) + 1
    errors: dict[str, int] = {}
    for r in requests_:
        if r.get("errcode"):
            key = f"{r['endpoint']}:{r['errcode']}"
            errors[key] = errors.get(key, 0) + 1
    dropped: dict[str, int] = {}
    delivered_total = 0
    for m in messages:
        delivered_total += len(m["delivered"])
        for reason in (m.get("dropped") or {}).values():
            dropped[reason] = dropped.get(reason, 0) + 1

    t0 = when.timestamp()
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    budget_waited = 0
    states: dict[str, int] = {}
    for d in deliveries:
        states[d.state] = states.get(d.state, 0) + 1
        chatid = chat_of_bulletin.get(d.bulletin_id)
        msgs = msg_by_chat.get(chatid, [])
        if (d.deadline_at - d.due_at).total_seconds() > 600 + 1:  # grace 10 min, pushed by the budget
            budget_waited += 1
        if d.state != "sent" or len(msgs) != 1:
            continue
        ts = msgs[0]["ts"]
        run, occ = run_by_bulletin.get(d.bulletin_id), occ_by_bulletin.get(d.bulletin_id)
        job = jobs.get(occ.job_id) if occ is not None else None
        parts["lateness"].append(ts - t0)
        if job is not None:
            parts["materialise"].append(job.created_at.timestamp() - t0)
        if run is not None:
            parts["opened"].append(run.created_at.timestamp() - t0)
        if d.sent_at is not None:
            parts["start"].append(d.sent_at.timestamp() - t0)
            parts["send"].append(ts - d.sent_at.timestamp())

    # Person-times the tenant received per minute and per 10 s after T; when the first minute's sends ended.
    per_minute: dict[int, int] = {}
    per_10s: dict[int, int] = {}
    for m in messages:
        n = len(m["delivered"]) + len(m.get("dropped") or {})
        per_minute[int((m["ts"] - t0) // 60)] = per_minute.get(int((m["ts"] - t0) // 60), 0) + n
        per_10s[int((m["ts"] - t0) // 10)] = per_10s.get(int((m["ts"] - t0) // 10), 0) + n
    boundary = (math.floor(t0 / 60) + 1) * 60  # the end of the minute window T falls in
    before_boundary = [m["ts"] for m in messages if m["ts"] < boundary]
    expected = len(prep["bulletin_ids"])
    last_ts = max((m["ts"] for m in messages), default=None)
    first_ts = min((m["ts"] for m in messages), default=None)
    out = {
        "scheduled_at": when.isoformat(),
        "bulletins": expected,
        "occurrences": len(occurrences),
        "fire_jobs": fire_jobs_in_round,
        "send_jobs": send_jobs_in_round,
        "runs_opened_before_t": sum(1 for r in runs if r.created_at.timestamp() < t0),
        "runs": len(runs),
        "bulletins_with_one_run": sum(1 for n in _count(r.bulletin_id for r in runs).values() if n == 1),
        "run_states": _count(r.state for r in runs),
        "deliveries": len(deliveries),
        "delivery_states": states,
        "appchat_send_requests": len(sends),
        "chats_sent_twice": sum(1 for n in sends_by_chat.values() if n > 1),
        "chats_without_send": expected - len([c for c in prep["bulletin_ids"] if sends_by_chat.get(c)]),
        "messages": len(messages),
        "chats_with_two_messages": sum(1 for v in msg_by_chat.values() if len(v) > 1),
        "errors": errors,
        "errcode_45009": sum(n for k, n in errors.items() if k.endswith(":45009")),
        "person_times": delivered_total + sum(dropped.values()),
        "recipients_delivered": delivered_total,
        "recipients_dropped": sum(dropped.values()),
        "dropped_by_reason": dropped,
        "budget_waited_deliveries": budget_waited,
        "first_delivery_s": round(first_ts - t0, 3) if first_ts else None,
        "last_delivery_s": round(last_ts - t0, 3) if last_ts else None,
        "person_times_per_minute_after_t": [per_minute.get(k, 0) for k in range(max(per_minute, default=-1) + 1)],
        "person_times_per_10s_after_t": [per_10s.get(k, 0) for k in range(max(per_10s, default=-1) + 1)],
        "last_send_in_first_minute_window_s": round(max(before_boundary) - t0, 3) if before_boundary else None,
        "messages_with_drops": sum(1 for m in messages if m.get("dropped")),
        "plugin_corp_minute_windows": [
            {"window_start_offset_s": round(int(ws) - t0, 1), "granted": int(n)} for ws, n in corp_windows
        ],
        "t_offset_in_minute_s": round(t0 % 60, 3),
        **{k: _stats(v) for k, v in parts.items()},
        "_raw": parts,
    }
    return out


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def run_round(engine, emulator: Emulator, prep: dict, args: argparse.Namespace, procs: dict, not_before: float) -> dict:
    when = choose_t(args, not_before)
    before = {
        "msg_seq": max((m["seq"] for m in emulator.appchat_messages()), default=0),
        "req_seq": emulator.last_seq(),
        "wall": datetime.now(UTC) - timedelta(seconds=1),
    }
    n = set_due(engine, when)
    if n != len(prep["bulletin_ids"]):
        raise RuntimeError(f"{n} bulletin schedules set due, expected {len(prep['bulletin_ids'])}")
    wait = when.timestamp() - time.time()
    print(f"    T = {when:%H:%M:%S} UTC ({wait:.1f} s ahead)", file=sys.stderr, flush=True)
    time.sleep(max(0.0, wait - 0.5))
    cpu0, load0 = cpu_snapshot(procs, emulator), os.getloadavg()
    final, done_at = wait_final(engine, when, len(prep["bulletin_ids"]), args.round_timeout)
    cpu1 = cpu_snapshot(procs, emulator)
    elapsed = max(1e-6, done_at - when.timestamp())
    time.sleep(1.0)  # let the last jobs' completions land before reading
    result = collect(engine, emulator, when, prep, before)
    result["final_when_polled"] = final
    result["load_average_before"] = [round(x, 2) for x in load0]
    result["cpu_s"] = {k: round(cpu1[k] - cpu0[k], 2) for k in ("clock", "worker", "emulator")}
    result["machine_busy_cores"] = round((cpu1["machine_busy"] - cpu0["machine_busy"]) / elapsed, 2)
    result["worker_cpu_ms_per_delivery"] = round(1000 * result["cpu_s"]["worker"] / max(1, result["deliveries"]), 1)
    return result


# ================================================================================================
# One database, one limits mode
# ================================================================================================
def run_pass(spec: str, limits: str, args: argparse.Namespace, emulator: Emulator, chats: list, tmp: Path) -> dict:
    import sqlalchemy as sa

    db: Any = SQLiteDatabase(tmp) if spec == "sqlite" else PostgresDatabase(args.postgres_url)
    if spec != "sqlite":
        db.database = db.database.replace("bench_sync_", "bench_bul_")
        db.url = db.admin_url.set(database=db.database).render_as_string(hide_password=False)
    procs: dict[str, list] = {"clock": [], "worker": []}
    label = f"{db.name}-{limits}"
    engine = None
    try:
        print(f"[{db.name} / limits {limits}] preparing...", file=sys.stderr, flush=True)
        db.create()
        emulator.call("POST", "reset", json={})
        flags: dict[str, Any] = dict(LIMITS_OFF) if limits == "off" else {}
        if args.rate_window:
            flags["rate_window"] = args.rate_window
        if flags:
            emulator.call("POST", "flags", json=flags)
        if args.latency_ms:
            emulator.call(
                "POST", "faults", json={"action": "latency", "endpoint": "*", "seconds": args.latency_ms / 1000}
            )
        env = plugin_env(emulator, db.url, args)
        prep = prepare(env, chats, args.chat_members)
        print(f"    setup: {prep['timings']}", file=sys.stderr, flush=True)
        engine = sa.create_engine(
            db.url.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.pool.NullPool
        )
        procs = start_processes(env, args, tmp, label)
        ready_s = wait_ready(engine, procs, args)
        print(f"    {args.clocks} clock(s), {args.workers} worker(s) x {args.threads} threads ready in "
              f"{ready_s:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        floor = None
        if limits == "off" and args.floor:
            floor = measure_floor(emulator, chats, args.workers * args.threads)
            print(f"    floor (a bare client, {floor['threads']} threads): {floor}", file=sys.stderr, flush=True)
            clear_send_budget(engine)
        rounds = []
        not_before = 0.0
        for i in range(args.rounds):
            if i and limits == "off":  # with the tenant's limits on, the rounds share its windows too
                clear_send_budget(engine)
            res = run_round(engine, emulator, prep, args, procs, not_before)
            rounds.append(res)
            not_before = time.time()
            print(
                f"    round {i + 1}: lateness {res['lateness']}, sends {res['appchat_send_requests']}, dropped "
                f"{res['recipients_dropped']}, states {res['delivery_states']}, last {res['last_delivery_s']} s, "
                f"worker CPU {res['worker_cpu_ms_per_delivery']} ms per delivery",
                file=sys.stderr,
                flush=True,
            )
        logs = {}
        for log in sorted(tmp.glob(f"*-{label}.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text or "ERROR" in text:
                logs[log.name] = text[-3000:]
        return {
            "database": db.name,
            "database_version": db.version(),
            "limits": limits,
            "members_per_chat": args.members_for[limits],
            "chats": len(chats),
            "latency_ms": args.latency_ms,
            "workers": args.workers,
            "threads": args.threads,
            "clocks": args.clocks,
            "tick_s": args.tick or 5.0,
            "rate_window": args.rate_window or "sliding",
            "chat_members_known": args.chat_members,
            "setup": prep["timings"],
            "prepare_s": args.prepare if args.prepare is not None else 60.0,
            "floor": floor,
            "rounds": rounds,
            "log_errors": logs,
        }
    finally:
        load.stop_all([(p, signal.SIGTERM) for group in procs.values() for p in group], timeout=30)
        if engine is not None:
            engine.dispose()
        emulator.call("DELETE", "faults")
        db.drop()


# ================================================================================================
# Judging and printing
# ================================================================================================
def bound(result: dict[str, Any]) -> dict[str, Any]:
    """The earliest the last delivery can be, given WeCom's person-times per minute (and the headroom)."""
    r = result["rounds"][0]
    p = r["person_times"]
    t_off = r["t_offset_in_minute_s"]
    granted = math.floor(CORP_MINUTE * HEADROOM)
    windows = math.ceil(p / granted) if p else 0
    plugin_bound = max(0.0, (windows - 1) * 60 - t_off) if windows else 0.0
    wecom_windows = math.ceil(p / CORP_MINUTE) if p else 0
    wecom_bound = max(0.0, (wecom_windows - 1) * 60 - t_off) if wecom_windows else 0.0
    last = r["last_delivery_s"]
    return {
        "person_times": p,
        "windows_at_18000": windows,
        "bound_s_at_18000": round(plugin_bound, 1),
        "windows_at_20000": wecom_windows,
        "bound_s_at_20000": round(wecom_bound, 1),
        "last_delivery_s": last,
        "ratio_to_bound_18000": round(last / plugin_bound, 2) if last and plugin_bound else None,
        "beyond_bound_s": round(last - plugin_bound, 1) if last is not None else None,
    }


def evaluate(result: dict[str, Any]) -> dict[str, bool | None]:
    goals: dict[str, bool | None] = {}
    for i, r in enumerate(result["rounds"], 1):
        n = r["bulletins"]
        tag = f"round {i}: " if len(result["rounds"]) > 1 else ""
        goals[tag + "one appchat/send per bulletin"] = (
            r["appchat_send_requests"] == n and r["chats_sent_twice"] == 0 and r["chats_without_send"] == 0
        )
        goals[tag + "one occurrence, job, run per bulletin"] = (
            r["occurrences"] == n
            and r["fire_jobs"] == n
            and r["runs"] == n
            and r["bulletins_with_one_run"] == n
            and r["send_jobs"] <= n
        )
        goals[tag + "every delivery sent"] = r["delivery_states"] == {"sent": n}
        goals[tag + "no recipient dropped"] = r["recipients_dropped"] == 0
        goals[tag + "no 45009"] = r["errcode_45009"] == 0
    if result["limits"] == "off":
        p99 = result["pooled"]["lateness"]["p99"]
        goals[f"lateness p99 <= {P99_GOAL_S:g} s (pooled)"] = p99 is not None and p99 <= P99_GOAL_S
    return goals


def _f(stats: dict[str, Any], key: str) -> str:
    return "—" if stats.get(key) is None else f"{stats[key]:.2f}"


def _md_row(res: dict[str, Any], label: str, stats: dict[str, Any], counts: dict[str, Any]) -> str:
    return (
        f"| {res['database']} | {res['limits']} | {res['members_per_chat']} | {res['latency_ms']:g} | "
        f"{res['workers']} x {res['threads']} | {label} | {counts['sends']} | {counts['dropped']} | "
        f"{counts['e45009']} | {counts['sent']} | {_f(stats['lateness'], 'p50')} | {_f(stats['lateness'], 'p99')} | "
        f"{_f(stats['lateness'], 'max')} | {_f(stats['materialise'], 'p50')} / {_f(stats['materialise'], 'max')} | "
        f"{_f(stats['opened'], 'p50')} / {_f(stats['opened'], 'max')} | "
        f"{_f(stats['start'], 'p50')} / {_f(stats['start'], 'p99')} | "
        f"{_f(stats['send'], 'p50')} / {_f(stats['send'], 'p99')} | {counts['last']} |"
    )


def _counts(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sends": sum(r["appchat_send_requests"] for r in rounds),
        "dropped": sum(r["recipients_dropped"] for r in rounds),
        "e45009": sum(r["errcode_45009"] for r in rounds),
        "sent": sum(r["delivery_states"].get("sent", 0) for r in rounds),
        "last": max((r["last_delivery_s"] or 0 for r in rounds), default=0),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| database | limits | members | latency ms | workers x threads | round | sends | dropped | 45009 | sent "
        "| lateness p50 s | p99 s | max s | materialise p50/max s | opened p50/max s | start p50/p99 s "
        "| send p50/p99 s | last delivery s |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for res in results:
        for i, r in enumerate(res["rounds"], 1):
            lines.append(_md_row(res, str(i), r, _counts([r])))
        if len(res["rounds"]) > 1:
            lines.append(_md_row(res, "**all**", res["pooled"], _counts(res["rounds"])))
    bounded = [r for r in results if r["limits"] == "on" or r["members_per_chat"] * r["chats"] > 18_000]
    if bounded:
        lines += [
            "",
            "| database | limits | window | person-times | windows of 18,000 | bound s (18,000/min) "
            "| bound s (20,000/min) | last delivery s | × bound | person-times per minute after T "
            "| first window's sends ended s | budget-deferred deliveries | dropped (messages) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for res in bounded:
            b, r = res["bound"], res["rounds"][0]
            lines.append(
                f"| {res['database']} | {res['limits']} | {res['rate_window']} | {b['person_times']:,} | "
                f"{b['windows_at_18000']} | {b['bound_s_at_18000']} | {b['bound_s_at_20000']} | "
                f"{b['last_delivery_s']} | {b['ratio_to_bound_18000']} | {r['person_times_per_minute_after_t']} | "
                f"{r['last_send_in_first_minute_window_s']} | {r['budget_waited_deliveries']} | "
                f"{r['recipients_dropped']} ({r['messages_with_drops']}) |"
            )
    return "\n".join(lines)


# ================================================================================================
# Main
# ================================================================================================
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="sqlite", help="sqlite, postgres, or both comma separated (default sqlite)")
    parser.add_argument("--limits", default="off", help="off, on, or both comma separated (default off)")
    parser.add_argument("--chats", type=int, default=1000, help="chats, one bulletin each (default 1000)")
    parser.add_argument("--members", type=int, default=None, help="members per chat (default 15 off, 30 on)")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="threads per worker (default 2)")
    parser.add_argument("--clocks", type=int, default=1, help="clock processes (default 1)")
    parser.add_argument("--tick", type=float, default=None, help="CLOCK_TICK_SECONDS (default: the setting's 5)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="tenant latency per call (default 0)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per pass (default 3 off, 1 on)")
    parser.add_argument("--rate-window", choices=("sliding", "fixed"), default=None,
                        help="the tenant's minute/hour windows (default: its own, sliding)")  # fmt: skip
    parser.add_argument(
        "--chat-members",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="register each chat's members in chat_member, as a member check does (default yes); "
        "--no-chat-members: as before the first check",
    )
    parser.add_argument("--lead", type=float, default=None,
                        help="T at least this many seconds ahead (default: --prepare + 15, so the clock prepares "
                        "the occurrence as it would a bulletin saved long before; 5 with --quick)")  # fmt: skip
    parser.add_argument("--prepare", type=float, default=None,
                        help="CLOCK_PREPARE_SECONDS (default: the setting's 60; 0: materialise at T)")  # fmt: skip
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="before run A, time the same sends from a bare client (default yes)")  # fmt: skip
    parser.add_argument("--align", action=argparse.BooleanOptionalAction, default=True,
                        help="T on a whole minute, as a bulletin due at HH:MM (default yes)")  # fmt: skip
    parser.add_argument("--org-members", type=int, default=1000, help="members in the tenant (default 1000)")
    parser.add_argument("--round-timeout", type=float, default=600.0, help="seconds one round may take (default 600)")
    parser.add_argument("--postgres-url", default=DEFAULT_PG, help="admin URL (scratch database bench_bul_*)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 chats, 2 workers, no alignment, 1 round")
    parser.add_argument("--budget", type=float, default=3600.0, help="seconds for the whole run (default 3600)")
    parser.add_argument("--no-json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.chats, args.workers, args.align = min(args.chats, 50), min(args.workers, 2), False
        args.rounds = args.rounds or 1
        args.lead = 5.0 if args.lead is None else args.lead
    if args.lead is None:
        args.lead = (60.0 if args.prepare is None else args.prepare) + 15.0
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    args.modes = [m.strip() for m in args.limits.split(",") if m.strip()]
    if not args.dbs or any(d not in ("sqlite", "postgres", "postgresql") for d in args.dbs):
        parser.error("--db: sqlite and/or postgres")
    if not args.modes or any(m not in ("off", "on") for m in args.modes):
        parser.error("--limits: off and/or on")
    if args.chats < 1 or args.workers < 1 or args.threads < 1 or args.clocks < 1:
        parser.error("--chats, --workers, --threads and --clocks must be positive")
    args.members_for = {m: args.members or (15 if m == "off" else 30) for m in ("off", "on")}
    if max(args.members_for.values()) < 2:
        parser.error("--members: a chat has at least 2 members")
    args.rounds_for = {m: args.rounds or (3 if m == "off" else 1) for m in ("off", "on")}
    return args


def code_version() -> dict[str, Any]:
    """The commit measured, and whether product code differed from it (read-only git commands)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "wecom_plugin", "migrations", "config").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "product_changes_uncommitted": dirty}


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="bench_bul_"))
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    emulator: Emulator | None = None
    try:
        org = build_org(args.org_members, 40, 1)
        for members in sorted(set(args.members_for[m] for m in args.modes)):
            chats = plan_chats(org, args.chats, members)
            org_m = {**org, "appchats": [*org.get("appchats", []), *chats]}
            org_path = tmp / f"org-{members}.json"
            org_path.write_text(json.dumps(org_m, ensure_ascii=False), encoding="utf-8")
            if emulator is not None:
                emulator.stop()
            emulator = Emulator(org_path, tmp / f"emulator-{members}.log")
            for spec in args.dbs:
                for mode in [m for m in args.modes if args.members_for[m] == members]:
                    if budget.left() <= 0:
                        failures.append({"database": spec, "limits": mode, "error": "out of --budget"})
                        continue
                    args.rounds = args.rounds_for[mode]
                    try:
                        res = run_pass("sqlite" if spec == "sqlite" else "postgres", mode, args, emulator, chats, tmp)
                    except Exception as exc:  # noqa: BLE001 - one pass failing keeps the others
                        print(f"[{spec} / {mode}] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                        failures.append(
                            {"database": spec, "limits": mode, "error": f"{type(exc).__name__}: {exc}"[:3000]}
                        )
                        for log in sorted(tmp.glob("*.log")):
                            print(f"--- {log.name} (tail)\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
                        continue
                    res["pooled"] = _pooled(res["rounds"])
                    res["bound"] = bound(res)
                    res["goals"] = evaluate(res)
                    results.append(res)
    finally:
        if emulator is not None:
            emulator.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    env = run_environment(started, None, [{**r, "steps": {"database_version": r["database_version"]}} for r in results])
    env["code"] = code_version()
    dirty = " + uncommitted product changes" if env["code"]["product_changes_uncommitted"] else ""
    print(
        f"\nBulletins, {env['date_utc']}, commit {env['code']['commit']}{dirty}: {args.chats} chats, one bulletin "
        f"each, all due at T; {env['cpus']} CPUs, Python {env['python']}, load average at end "
        f"{env['load_average_at_end'][0]:.2f}\n"
    )
    if results:
        print(markdown(results))
        for r in results:
            print(f"\n{r['database']} / limits {r['limits']} / {r['members_per_chat']} members: " + ", ".join(
                f"{k}: {'yes' if v else 'NO'}" for k, v in r["goals"].items()))  # fmt: skip
            if r["log_errors"]:
                print(f"  !! errors in the process logs: {list(r['log_errors'])}")
    for failure in failures:
        print(f"\nFAILED: {failure}")
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"bulletins-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        payload = {"args": {k: v for k, v in vars(args).items()}, "environment": env, "results": results,
                   "failures": failures}  # fmt: skip
        path.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
        print(f"\nJSON: {path.relative_to(REPO_ROOT)}")
    met = all(v is not False for r in results for v in r["goals"].values())
    return 0 if results and not failures and met else 1


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled percentiles need the raw values: each round keeps them in ``_raw`` (dropped from the JSON)."""
    out = {}
    for key in PARTS:
        values = [v for r in rounds for v in r.get("_raw", {}).get(key, [])]
        out[key] = _stats(values)
    for r in rounds:
        r.pop("_raw", None)
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; scratch databases and files were removed", file=sys.stderr)
        sys.exit(130)
