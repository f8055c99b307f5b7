"""The send budget: the named limits, fixed windows of the database clock, and the database budget
shared by processes (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from tests.support.client_procs import client_env, release_and_collect, start_many
from tests.support.threads import run_threads
from wecom_plugin.extensions import db
from wecom_plugin.models import RateCounter
from wecom_plugin.services.budget import DbBudget
from wecom_plugin.wecom import budget as b
from wecom_plugin.wecom.budget import Ask, Budget, BudgetExhausted, Grant, Limit, MemoryBudget

SHANGHAI = ZoneInfo("Asia/Shanghai")
# 10:20:30 in Shanghai (02:20:30 UTC).
T0 = datetime(2026, 3, 3, 10, 20, 30, tzinfo=SHANGHAI)


# --- the limits ---------------------------------------------------------------------------------
def test_the_named_limits_and_their_budgets_at_90_percent():
    table = b.limits_for("small")
    expected = {
        "appchat.update": (1000, "hour", 900),
        "appchat.update.routine": (800, "hour", 720),  # ours: the share routine updates may spend
        "appchat.create": (1000, "day", 900),
        "appchat.send.corp_minute": (20_000, "minute", 18_000),
        "appchat.send.corp_hour": (150_000, "hour", 135_000),
        "appchat.send.member_minute": (200, "minute", 180),
        "appchat.send.member_day": (10_000, "day", 9_000),
        "message.member_minute": (30, "minute", 27),
        "message.member_hour": (1000, "hour", 900),
        "robot.minute": (20, "minute", 18),
        "groupchat.transfer_day": (300, "day", 270),
        "api.minute": (10_000, "minute", 9_000),
        "api.hour": (150_000, "hour", 135_000),
    }
    assert {name: (lim.capacity, lim.window, lim.allowed()) for name, lim in table.items()} == expected
    assert all(lim.source.startswith("§") for lim in table.values())


def test_the_hourly_chat_cap_follows_the_corp_size():
    assert b.limits_for("medium")["appchat.send.corp_hour"].capacity == 350_000
    assert b.limits_for("large")["appchat.send.corp_hour"].capacity == 700_000
    with pytest.raises(ValueError):
        b.limits_for("huge")


def test_silent_limits_are_marked():
    assert b.APPCHAT_SEND_MEMBER_MINUTE.silent and b.MESSAGE_MEMBER_MINUTE.silent
    assert not b.APPCHAT_UPDATE.silent and not b.ROBOT_MINUTE.silent


def test_headroom_is_configurable_and_never_below_one():
    assert b.APPCHAT_UPDATE.allowed(1.0) == 1000
    assert b.APPCHAT_UPDATE.allowed(0.5) == 500
    assert Limit("x", 1, "minute", "corp", "§test").allowed(0.1) == 1
    with pytest.raises(ValueError):
        MemoryBudget(headroom=0)
    with pytest.raises(ValueError):
        Limit("x", 1, "week", "corp", "§test")


def test_message_app_day_is_accounts_times_200():
    assert b.message_app_day(500).capacity == 100_000


def test_keys_never_hold_a_webhook_key_and_fold_userids():
    key = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa"
    assert key not in b.robot_key(key) and b.robot_key(key) == b.robot_key(key)
    assert b.member_key("ZhangSan") == b.member_key("zhangsan")
    assert b.handover_key("A", "b") == "a>b"
    assert len(b.bucket("appchat.update", "x" * 500)) <= 200


@pytest.mark.parametrize(
    ("window", "at", "start", "end"),
    [
        ("minute", T0, T0.replace(second=0), T0.replace(second=0) + timedelta(minutes=1)),
        ("hour", T0, T0.replace(minute=0, second=0), T0.replace(minute=0, second=0) + timedelta(hours=1)),
        ("day", T0, datetime(2026, 3, 3, tzinfo=SHANGHAI), datetime(2026, 3, 4, tzinfo=SHANGHAI)),
        # 23:30 UTC on the 3rd is already the 4th in Shanghai.
        ("day", datetime(2026, 3, 3, 23, 30, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=SHANGHAI),
         datetime(2026, 3, 5, tzinfo=SHANGHAI)),
    ],
)  # fmt: skip
def test_windows_are_fixed_in_the_corp_time_zone(window, at, start, end):
    assert b.window_bounds(window, at.timestamp(), "Asia/Shanghai") == (int(start.timestamp()), int(end.timestamp()))


# --- the in-memory budget -----------------------------------------------------------------------
class Clock:
    def __init__(self, at: datetime):
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def test_memory_budget_grants_up_to_the_allowance_then_says_when():
    clock = Clock(T0)
    budget = MemoryBudget(clock=clock)
    assert isinstance(budget, Budget)
    grants = [budget.acquire("robot.minute", "r1") for _ in range(19)]
    assert [g.ok for g in grants] == [True] * 18 + [False]
    denied = grants[-1]
    assert denied.retry_at == T0.replace(second=0) + timedelta(minutes=1)
    assert denied.wait == 30 and denied.limit_name == "robot.minute"
    assert budget.acquire("robot.minute", "r2").ok  # another robot
    clock.now += 30
    assert budget.acquire("robot.minute", "r1").ok  # the next minute


def test_memory_budget_takes_several_all_or_nothing():
    budget = MemoryBudget(clock=Clock(T0))
    for _ in range(27):
        assert budget.acquire("message.member_minute", "lisi").ok
    grant = budget.acquire_many([Ask("message.member_minute", "zhangsan"), Ask("message.member_minute", "lisi")])
    assert not grant.ok
    assert budget.acquire_many([Ask("message.member_minute", "zhangsan")] * 27).ok  # nothing was taken for zhangsan


def test_memory_budget_exhaust_and_bad_asks():
    budget = MemoryBudget(clock=Clock(T0))
    budget.exhaust("appchat.update")
    assert not budget.acquire("appchat.update").ok
    with pytest.raises(KeyError):
        budget.acquire("no.such.limit")
    with pytest.raises(ValueError):
        budget.acquire("robot.minute", "r1", n=19)
    with pytest.raises(ValueError):
        budget.acquire("robot.minute", "r1", n=0)


def test_budget_exhausted_is_a_rate_limited_error():
    from wecom_plugin.errors import RateLimitedError

    grant = Grant(False, T0 + timedelta(seconds=90), 90.0, "appchat.update")
    exc = BudgetExhausted(grant)
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 90 and exc.limit_name == "appchat.update" and exc.retry_at == grant.retry_at


# --- the database budget ------------------------------------------------------------------------
@pytest.fixture
def budget(app):
    with app.app_context():
        engine = db.engine
    return DbBudget(engine)


def _rows(app):
    with app.app_context():
        return db.session.execute(sa.select(RateCounter.bucket, RateCounter.window_start, RateCounter.count)).all()


def test_db_budget_grants_900_chat_changes_an_hour_then_the_next_hour(app, budget):
    assert isinstance(budget, Budget)
    grants = [budget.acquire("appchat.update", now=T0) for _ in range(901)]
    assert sum(g.ok for g in grants) == 900
    denied = grants[-1]
    assert not denied.ok and denied.limit_name == "appchat.update"
    hour_end = T0.replace(minute=0, second=0) + timedelta(hours=1)
    assert denied.retry_at == hour_end and denied.wait == (hour_end - T0).total_seconds()
    assert budget.usage("appchat.update", now=T0) == (900, 900)
    assert budget.acquire("appchat.update", now=hour_end).ok
    assert sorted(_rows(app)) == [
        ("budget:appchat.update:corp", int(T0.replace(minute=0, second=0).timestamp()), 900),
        ("budget:appchat.update:corp", int(hour_end.timestamp()), 1),
    ]


def test_db_budget_days_end_at_shanghai_midnight(budget):
    late = datetime(2026, 3, 3, 23, 59, 30, tzinfo=SHANGHAI)
    assert budget.acquire("appchat.create", n=900, now=late).ok
    grant = budget.acquire("appchat.create", now=late)
    assert grant.retry_at == datetime(2026, 3, 4, tzinfo=SHANGHAI) and grant.wait == 30
    assert budget.acquire("appchat.create", now=late + timedelta(seconds=30)).ok


def test_db_budget_takes_several_all_or_nothing(app, budget):
    assert budget.acquire("appchat.send.member_minute", "lisi", n=180, now=T0).ok
    grant = budget.acquire_many(
        [Ask("appchat.send.corp_minute", "corp", 2), Ask("appchat.send.member_minute", "zhangsan"),
         Ask("appchat.send.member_minute", "lisi")],
        now=T0,
    )  # fmt: skip
    assert not grant.ok and grant.limit_name == "appchat.send.member_minute"
    assert budget.usage("appchat.send.corp_minute", now=T0) == (0, 18_000)
    assert budget.usage("appchat.send.member_minute", "zhangsan", now=T0) == (0, 180)
    assert budget.acquire_many([Ask("appchat.send.corp_minute", "corp", 2), ("message.member_hour", "x", 3)], now=T0).ok
    assert budget.usage("appchat.send.corp_minute", now=T0) == (2, 18_000)


def test_db_budget_takes_a_big_chat_in_batches_and_one_full_member_blocks_it_all(budget):
    members = [f"user{i:04d}" for i in range(1200)]  # more than one statement's worth of counters

    def asks(who):
        out = [Ask("appchat.send.corp_minute", "corp", len(who))]
        out += [Ask("appchat.send.member_minute", m) for m in who]
        return out + [Ask("appchat.send.member_day", m) for m in who]

    budget.exhaust("appchat.send.member_minute", "user0777", now=T0)
    grant = budget.acquire_many(asks(members), now=T0)
    assert not grant.ok and grant.limit_name == "appchat.send.member_minute"
    assert budget.usage("appchat.send.member_minute", "user0001", now=T0) == (0, 180)
    assert budget.usage("appchat.send.member_day", "user1199", now=T0) == (0, 9000)
    others = [m for m in members if m != "user0777"]
    assert budget.acquire_many(asks(others), now=T0).ok
    assert budget.usage("appchat.send.corp_minute", now=T0) == (1199, 18_000)
    assert budget.usage("appchat.send.member_day", "user1199", now=T0) == (1, 9000)


def test_db_budget_reports_the_latest_blocking_window(budget):
    budget.exhaust("robot.minute", "r1", now=T0)
    budget.exhaust("appchat.update", now=T0)
    grant = budget.acquire_many([Ask("robot.minute", "r1"), Ask("appchat.update")], now=T0)
    assert grant.limit_name == "appchat.update"
    assert grant.retry_at == T0.replace(minute=0, second=0) + timedelta(hours=1)


def test_db_budget_exhaust_never_lowers_a_count(budget):
    for _ in range(5):
        budget.acquire("robot.minute", "r1", now=T0)
    budget.exhaust("robot.minute", "r1", now=T0)
    assert budget.usage("robot.minute", "r1", now=T0) == (18, 18)
    budget.exhaust("robot.minute", "r1", now=T0)
    assert budget.usage("robot.minute", "r1", now=T0) == (18, 18)
    assert not budget.acquire("robot.minute", "r1", now=T0).ok


def test_db_budget_rejects_what_can_never_be_granted(budget):
    with pytest.raises(ValueError, match="never be granted"):
        budget.acquire("robot.minute", "r1", n=19, now=T0)
    with pytest.raises(KeyError):
        budget.acquire("no.such.limit", now=T0)


def test_db_budget_uses_the_database_clock_by_default(app, budget):
    assert budget.acquire("robot.minute", "r1").ok
    ((_bucket, window_start, count),) = _rows(app)
    now = datetime.now(UTC).timestamp()
    assert window_start % 60 == 0 and window_start <= now < window_start + 61 and count == 1


def test_db_budget_headroom_is_configurable(app):
    with app.app_context():
        engine = db.engine
    strict = DbBudget(engine, headroom=0.5)
    assert sum(strict.acquire("robot.minute", "r", now=T0).ok for _ in range(12)) == 10


def test_concurrent_spenders_never_exceed_the_budget(app, budget):
    """Eight threads on their own connections ask for 150 chat changes each: exactly 900 are granted."""
    granted = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker():
        start.wait()
        ok = sum(budget.acquire("appchat.update", now=T0).ok for _ in range(150))
        with lock:
            granted.append(ok)

    errors = run_threads(worker, 8, timeout=120)
    assert not errors, errors
    assert sum(granted) == 900
    assert budget.usage("appchat.update", now=T0) == (900, 900)


def test_four_processes_asking_for_1000_chat_changes_get_at_most_900_an_hour(db_url, emulator, tmp_path):
    """Four real processes, 250 ``appchat/update`` calls each, through the client and the database budget."""
    chatid = emulator.our_chats()[0].chatid
    env = client_env(db_url, emulator, base64.urlsafe_b64encode(b"b" * 32).decode())
    procs = start_many(4, env, tmp_path / "barrier", "budget", chatid, "250")
    results = release_and_collect(procs, tmp_path / "barrier", timeout=300)
    granted = sum(r["granted"] for r in results)
    assert granted + sum(r["denied"] for r in results) == 1000
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            windows = conn.execute(
                sa.select(RateCounter.window_start, RateCounter.count).where(
                    RateCounter.bucket == "budget:appchat.update:corp"
                )
            ).all()
    finally:
        engine.dispose()
    assert all(count <= 900 for _start, count in windows)
    assert sum(count for _start, count in windows) == granted
    if len(windows) == 1:  # the run did not straddle an hour boundary
        assert granted == 900
        assert all(r["retry_after"] is None or 0 < r["retry_after"] <= 3600 for r in results)
    # Exactly the granted calls reached WeCom; the denied ones sent nothing.
    assert len(emulator.requests(endpoint="appchat/update")) == granted
    assert all(r["errcode"] == 0 for r in emulator.requests(endpoint="appchat/update"))


def test_the_headroom_setting_reaches_the_budget_the_client_uses(make_app):
    from wecom_plugin.extensions import db
    from wecom_plugin.services.wecom import budget_for

    app = make_app(WECOM_BUDGET_HEADROOM="0.5")
    with app.app_context():
        assert budget_for(db.engine, app.extensions["wecom_settings"]).headroom == 0.5


def test_after_a_45009_the_limit_stays_closed_for_the_whole_block_not_just_the_window(app):
    # Two processes' budgets on one database. WeCom blocks an hourly limit for an hour from the hit.
    with app.app_context():
        engine = db.engine
    first, second = DbBudget(engine), DbBudget(engine)
    hit = T0.replace(minute=59, second=0)  # a minute before the hourly window turns
    first.exhaust("appchat.update", block_seconds=3600, now=hit)
    after_turn = hit + timedelta(minutes=2)  # a new fixed window, but WeCom still blocks
    grant = second.acquire("appchat.update", now=after_turn)
    assert not grant.ok and grant.limit_name == "appchat.update"
    assert hit + timedelta(minutes=59) < grant.retry_at <= hit + timedelta(hours=1, seconds=2)
    assert second.acquire("appchat.update", now=hit + timedelta(hours=1, seconds=5)).ok


def test_a_memory_budget_honours_the_block_too():
    clock = [T0.timestamp()]
    budget = MemoryBudget(clock=lambda: clock[0])
    budget.exhaust("robot.minute", "r1", block_seconds=60)
    clock[0] += 59
    assert not budget.acquire("robot.minute", "r1").ok
    clock[0] += 2
    assert budget.acquire("robot.minute", "r1").ok


def test_a_silent_limit_also_counts_the_previous_window_so_no_sliding_minute_exceeds_it(budget):
    """WeCom drops the excess of person-time limits silently, and whether its minute is fixed or sliding
    is undocumented: across a window boundary a fixed count alone would let 2 × 18,000 through within
    60 s. Counting the previous window keeps every 60 s span within the limit under either reading."""
    late = T0.replace(second=50)
    assert budget.acquire("appchat.send.corp_minute", n=18_000, now=late).ok
    next_window = late + timedelta(seconds=15)  # 15 s later, a new fixed window
    grant = budget.acquire("appchat.send.corp_minute", n=1, now=next_window)
    assert not grant.ok and grant.limit_name == "appchat.send.corp_minute"
    assert budget.acquire("appchat.send.corp_minute", n=18_000, now=late + timedelta(seconds=75)).ok
    # Per member too (200 a minute in app chats), and in the in-memory budget the same way.
    assert budget.acquire("appchat.send.member_minute", "lisi", n=180, now=late).ok
    assert not budget.acquire("appchat.send.member_minute", "lisi", now=next_window).ok
    # Only each counter's own previous window counts, never the other members' (it once summed them all).
    assert budget.acquire_many([Ask("message.member_minute", f"u{i}", 20) for i in range(30)], now=late).ok
    assert budget.acquire("message.member_minute", "zhaowu", n=27, now=next_window).ok
    assert budget.acquire("message.member_minute", "u0", n=7, now=next_window).ok
    assert not budget.acquire("message.member_minute", "u0", n=1, now=next_window).ok
    memory = MemoryBudget(clock=lambda: now[0])
    now = [late.timestamp()]
    assert memory.acquire("message.member_minute", "lisi", n=27).ok
    now[0] = next_window.timestamp()
    assert not memory.acquire("message.member_minute", "lisi").ok
    # A limit WeCom enforces with 45009 keeps its plain fixed window (the robot's 20 a minute).
    assert budget.acquire("robot.minute", "r1", n=18, now=late).ok
    assert budget.acquire("robot.minute", "r1", n=18, now=next_window).ok
