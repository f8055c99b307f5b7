"""The WeCom client over real HTTP against the sandbox tenant: the token, errcodes, retries, 45009,
timeouts, the guard, budgets, and what never reaches a log."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest

from tests.support.threads import run_threads
from wecom_plugin.errors import ConfigurationError, LeaseLostError, PermanentError, RetryableError
from wecom_plugin.wecom.api import appchat, department, message, robot, user
from wecom_plugin.wecom.budget import Ask, BudgetExhausted, MemoryBudget, robot_key
from wecom_plugin.wecom.client import (
    BUSY_RETRIES,
    WeComClient,
    fold_userid,
    limit_kind,
    pool_for,
    redact,
    same_userid,
)
from wecom_plugin.wecom.errors import (
    WeComApiError,
    WeComConfigError,
    WeComNetworkError,
    WeComRateLimited,
    WeComRetryableError,
    WeComTokenInvalid,
)
from wecom_plugin.wecom.token_store import MemoryTokenStore, token_key

SHANGHAI = ZoneInfo("Asia/Shanghai")


def make_client(emulator, **options) -> WeComClient:
    who = options.pop("who", emulator.OUR)
    options.setdefault("sleep", lambda _s: None)
    return WeComClient(
        corp_id=emulator.corp_id,
        secret=emulator.secret(who),
        base_url=emulator.url,
        agent_id=emulator.OUR,
        **options,
    )


def count(emulator, endpoint: str) -> int:
    return len(emulator.requests(endpoint=endpoint))


def fault(emulator, **spec):
    return emulator.admin("faults", **spec)


# --- helpers ------------------------------------------------------------------------------------
def test_userids_compare_case_insensitively():
    assert same_userid("ZhangSan", "zhangsan")
    assert not same_userid("zhangsan", "zhangsan2")
    assert not same_userid(None, "x") and not same_userid(None, None)
    assert fold_userid("LiSi") == "lisi"


def test_limit_kinds_per_endpoint():
    assert limit_kind("appchat/update") == "hour"
    assert limit_kind("appchat/create") == "day"
    assert limit_kind("webhook/send") == "minute"
    assert limit_kind("message/send") == "minute"
    assert limit_kind("user/get") == "minute"


def test_redact_masks_credentials_in_urls():
    text = "Max retries exceeded with url: /cgi-bin/x?access_token=abc123&corpsecret=s3cr3t&key=k-1&code=c0de&id=2"
    assert (
        redact(text)
        == "Max retries exceeded with url: /cgi-bin/x?access_token=***&corpsecret=***&key=***&code=***&id=2"
    )


def test_base_url_gets_its_trailing_slash_and_credentials_are_required(emulator):
    client = WeComClient(corp_id="ww1", secret="very-secret", base_url=emulator.url.rstrip("/"))
    assert client.base_url == emulator.url
    assert "very-secret" not in repr(client)
    with pytest.raises(ConfigurationError):
        WeComClient(corp_id="ww1", secret="", base_url=emulator.url)


# --- the token ----------------------------------------------------------------------------------
def test_the_token_is_fetched_once_and_reused(emulator):
    client = make_client(emulator)
    for _ in range(3):
        department.simplelist(client)
    assert count(emulator, "gettoken") == 1
    assert count(emulator, "department/simplelist") == 3


def test_eight_threads_with_a_cold_shared_store_make_one_gettoken(emulator):
    store = MemoryTokenStore()
    fault(emulator, action="latency", endpoint="gettoken", seconds=0.2, times=1)  # widen the race
    results = []
    start = threading.Barrier(8)

    def worker():
        client = make_client(emulator, token_store=store)
        start.wait()
        results.append(len(department.simplelist(client)))

    errors = run_threads(worker, 8, timeout=30)
    assert not errors and len(results) == 8
    assert count(emulator, "gettoken") == 1


def test_the_token_is_refreshed_five_minutes_before_it_expires(emulator):
    now = [1_000_000.0]
    store = MemoryTokenStore(clock=lambda: now[0])
    client = make_client(emulator, token_store=store)
    department.simplelist(client)
    now[0] += 7200 - 301
    department.simplelist(client)
    assert count(emulator, "gettoken") == 1
    now[0] += 2  # now inside the last 5 minutes
    department.simplelist(client)
    assert count(emulator, "gettoken") == 2


def test_an_invalidated_token_is_refreshed_once_and_the_call_retried(emulator):
    client = make_client(emulator)
    department.simplelist(client)
    emulator.admin("tokens/invalidate", agentid=emulator.OUR, errcode=40014)
    assert len(department.simplelist(client)) > 1
    assert count(emulator, "gettoken") == 2
    assert [r["errcode"] for r in emulator.requests(endpoint="department/simplelist")] == [0, 40014, 0]


def test_a_token_expired_by_wecoms_clock_answers_42001_and_is_refreshed(emulator):
    client = make_client(emulator)
    department.simplelist(client)
    emulator.advance(7200)  # WeCom's clock: the token is gone; ours still thinks it valid
    department.simplelist(client)
    assert [r["errcode"] for r in emulator.requests(endpoint="department/simplelist")] == [0, 42001, 0]
    assert count(emulator, "gettoken") == 2


def test_40001_on_a_business_api_counts_as_a_refused_token(emulator):
    client = make_client(emulator)
    department.simplelist(client)
    emulator.admin("tokens/invalidate", agentid=emulator.OUR, errcode=40001)
    department.simplelist(client)
    assert [r["errcode"] for r in emulator.requests(endpoint="department/simplelist")] == [0, 40001, 0]


def test_a_server_answering_42001_forever_gets_one_refresh_then_an_error_fast(emulator):
    fault(emulator, action="errcode", endpoint="department/simplelist", errcode=42001)
    client = make_client(emulator)
    started = time.monotonic()
    with pytest.raises(WeComTokenInvalid) as info:
        department.simplelist(client)
    assert time.monotonic() - started < 1.0
    assert info.value.errcode == 42001
    assert count(emulator, "gettoken") == 2  # the first fetch and one refresh
    assert count(emulator, "department/simplelist") == 2  # the call and one retry
    assert isinstance(info.value, RetryableError)


def test_a_refresh_is_skipped_when_another_process_already_replaced_the_token(emulator):
    store = MemoryTokenStore()
    first, second = make_client(emulator, token_store=store), make_client(emulator, token_store=store)
    department.simplelist(first)
    old = first.access_token()
    emulator.admin("tokens/invalidate", agentid=emulator.OUR)
    department.simplelist(first)  # refreshes
    assert store.refresh(token_key(emulator.corp_id, emulator.secret()), pytest.fail, stale=old) != old
    department.simplelist(second)
    assert count(emulator, "gettoken") == 2


def test_40001_from_gettoken_is_a_config_error_and_never_retried(emulator):
    client = WeComClient(corp_id=emulator.corp_id, secret="wrong-secret", base_url=emulator.url)
    with pytest.raises(WeComConfigError) as info:
        department.simplelist(client)
    assert info.value.errcode == 40001 and info.value.endpoint == "gettoken"
    assert count(emulator, "gettoken") == 1
    assert count(emulator, "department/simplelist") == 0


def test_45009_from_gettoken_blocks_for_an_hour(emulator):
    fault(emulator, action="errcode", endpoint="gettoken", errcode=45009)
    with pytest.raises(WeComRateLimited) as info:
        department.simplelist(make_client(emulator))
    assert info.value.retry_after == 3600


# --- errcodes -----------------------------------------------------------------------------------
def test_system_busy_is_retried_then_succeeds(emulator):
    sleeps = []
    fault(emulator, action="errcode", endpoint="department/simplelist", errcode=-1, times=2)
    client = make_client(emulator, sleep=sleeps.append)
    assert len(department.simplelist(client)) > 1
    assert [r["errcode"] for r in emulator.requests(endpoint="department/simplelist")] == [-1, -1, 0]
    assert len(sleeps) == 2 and all(0 < s <= 1.0 for s in sleeps)


def test_system_busy_forever_gives_up_after_three_short_jittered_retries(emulator):
    fault(emulator, action="errcode", endpoint="department/simplelist", errcode=-1)
    started = time.monotonic()
    client = make_client(emulator, sleep=time.sleep)
    with pytest.raises(WeComRetryableError) as info:
        department.simplelist(client)
    assert info.value.errcode == -1
    assert count(emulator, "department/simplelist") == 1 + BUSY_RETRIES
    assert time.monotonic() - started < 2.5


def test_busy_gettoken_is_retried_outside_the_lock(emulator):
    fault(emulator, action="errcode", endpoint="gettoken", errcode=-1, times=1)
    assert len(department.simplelist(make_client(emulator))) > 1
    assert [r["errcode"] for r in emulator.requests(endpoint="gettoken")] == [-1, 0]


def test_too_many_concurrent_calls_45033_is_retried(emulator):
    fault(emulator, action="errcode", endpoint="department/simplelist", errcode=45033, times=1)
    department.simplelist(make_client(emulator))
    assert [r["errcode"] for r in emulator.requests(endpoint="department/simplelist")] == [45033, 0]


def test_untrusted_ip_60020_is_a_config_error_without_retry(emulator):
    emulator.caller_ip("203.0.113.9")
    with pytest.raises(WeComConfigError) as info:
        department.simplelist(make_client(emulator))
    assert info.value.errcode == 60020
    assert "203.0.113.9" not in info.value.errmsg  # the hint/from-ip suffix is stripped for display
    assert "from ip" in info.value.errmsg_raw
    assert count(emulator, "department/simplelist") == 1


def test_contact_sync_secret_from_a_new_ip_48009_is_a_config_error(emulator):
    client = make_client(emulator, who="contact_sync")
    userid = emulator.users()[0].userid
    with pytest.raises(WeComConfigError) as info:
        user.get(client, userid)
    assert info.value.errcode == 48009
    assert count(emulator, "user/get") == 1


def test_other_errcodes_are_permanent_and_keep_the_answer(emulator):
    with pytest.raises(WeComApiError) as info:
        user.get(make_client(emulator), "no_such_user")
    assert info.value.errcode == 60111 and isinstance(info.value, PermanentError)
    assert info.value.body["errcode"] == 60111
    assert count(emulator, "user/get") == 1


# --- 45009 and the retry time of each limit -----------------------------------------------------
def test_45009_on_appchat_update_waits_an_hour(emulator):
    emulator.flags(appchat_updates_per_hour=1)
    client = make_client(emulator)
    chatid = emulator.our_chats()[0].chatid
    appchat.update(client, chatid, name="一")
    with pytest.raises(WeComRateLimited) as info:
        appchat.update(client, chatid, name="二")
    assert info.value.retry_after == 3600 and info.value.errcode == 45009
    assert count(emulator, "appchat/update") == 2  # not retried


def test_45009_on_appchat_create_waits_until_the_end_of_the_shanghai_day(emulator):
    emulator.flags(appchat_creates_per_day=1)
    at = datetime(2026, 3, 3, 23, 0, tzinfo=SHANGHAI)  # 15:00 UTC
    client = make_client(emulator, clock=lambda: at)
    members = [u.userid for u in emulator.users()[:3]]
    appchat.create(client, members, name="第一个")
    with pytest.raises(WeComRateLimited) as info:
        appchat.create(client, members, name="第二个")
    assert info.value.retry_after == 3600


def test_45009_on_robot_send_waits_a_minute(emulator):
    emulator.flags(robot_per_minute=1)
    client = make_client(emulator)
    key = next(iter(emulator.data.robots))
    robot.send(client, key, robot.text("1"))
    with pytest.raises(WeComRateLimited) as info:
        robot.send(client, key, robot.text("2"))
    assert info.value.retry_after == 60


def test_45009_on_message_send_waits_a_minute(emulator):
    fault(emulator, action="errcode", endpoint="message/send", errcode=45009)
    with pytest.raises(WeComRateLimited) as info:
        message.send(make_client(emulator), message.text("x"), touser=[emulator.users()[0].userid])
    assert info.value.retry_after == 60


# --- network ------------------------------------------------------------------------------------
def test_a_read_timeout_after_a_post_may_have_had_an_effect(emulator):
    client = make_client(emulator, timeout=(1.0, 0.3))
    chatid = emulator.our_chats()[0].chatid
    client.access_token()
    fault(emulator, action="timeout_after_apply", endpoint="appchat/update", seconds=5)
    started = time.monotonic()
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client, chatid, name="改名")
    assert time.monotonic() - started < 1.5
    assert info.value.side_effect_possible is True
    assert emulator.data.chats[chatid].name == "改名"  # it did happen


def test_latency_past_the_read_timeout_is_a_quick_network_error(emulator):
    client = make_client(emulator, timeout=(1.0, 0.3))
    client.access_token()
    fault(emulator, action="latency", endpoint="department/simplelist", seconds=5)
    started = time.monotonic()
    with pytest.raises(WeComNetworkError) as info:
        department.simplelist(client)
    assert time.monotonic() - started < 1.5
    assert info.value.side_effect_possible is False  # a read has no effect
    assert isinstance(info.value, RetryableError)


def test_a_refused_connection_had_no_effect_and_leaks_no_token():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = MemoryTokenStore()
    store.refresh(token_key("ww1", "s"), lambda: ("TOKEN-VALUE-1234", 7200))
    client = WeComClient(corp_id="ww1", secret="s", base_url=f"http://127.0.0.1:{port}/cgi-bin/", token_store=store)
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client, "chat1", name="x")
    assert info.value.side_effect_possible is False
    assert "TOKEN-VALUE-1234" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


class Stub:
    """A tiny HTTP server answering every request with a fixed status and body."""

    def __init__(self, status: int, body: bytes, content_type: str = "text/html"):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                stub.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args):
                pass

        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "body"),
    [(502, b"<html>Bad Gateway</html>"), (200, b"<html>not json</html>"), (200, b"[1, 2]")],
)
def test_http_errors_and_bodies_that_are_not_json_objects_are_network_errors(status, body):
    stub = Stub(status, body)
    try:
        store = MemoryTokenStore()
        store.refresh(token_key("ww1", "s"), lambda: ("TOKEN-VALUE-1234", 7200))
        client = WeComClient(corp_id="ww1", secret="s", base_url=stub.url, token_store=store)
        with pytest.raises(WeComNetworkError) as info:
            appchat.update(client, "chat1", name="x")
        assert info.value.side_effect_possible is True  # a POST that may have been processed
        with pytest.raises(WeComNetworkError) as info:
            department.simplelist(client)
        assert info.value.side_effect_possible is False
        assert len(stub.paths) == 2  # never retried by the client
        assert "TOKEN-VALUE-1234" not in str(info.value)
    finally:
        stub.stop()


@pytest.mark.parametrize("spec", [{"action": "http_status", "status": 502}, {"action": "bad_body"}])
def test_a_non_json_or_non_200_answer_is_a_retryable_network_error(emulator, spec):
    fault(emulator, endpoint="department/simplelist", **spec)
    with pytest.raises(WeComNetworkError) as info:
        department.simplelist(make_client(emulator))
    assert info.value.side_effect_possible is False  # a read: safe to retry


# --- the guard ----------------------------------------------------------------------------------
def test_the_guard_runs_before_every_request_retries_and_gettoken_included(emulator):
    calls = []
    fault(emulator, action="errcode", endpoint="department/simplelist", errcode=-1, times=1)
    client = make_client(emulator, guard=lambda: calls.append(len(emulator.requests())))
    department.simplelist(client)
    # Before gettoken (0 requests so far), before the first try (1), before the retry (2).
    assert calls == [0, 1, 2]
    assert len(emulator.requests()) == 3


def test_a_guard_that_raises_stops_the_call_before_it_leaves(emulator):
    client = make_client(emulator)
    department.simplelist(client)

    def lost():
        raise LeaseLostError("job 1 lease lost")

    client.guard = lost
    with pytest.raises(LeaseLostError):
        appchat.update(client, emulator.our_chats()[0].chatid, name="never")
    assert count(emulator, "appchat/update") == 0


def test_a_guard_that_raises_before_gettoken_fetches_nothing(emulator):
    def lost():
        raise LeaseLostError("lost")

    with pytest.raises(LeaseLostError):
        department.simplelist(make_client(emulator, guard=lost))
    assert emulator.requests() == []


# --- budgets ------------------------------------------------------------------------------------
def test_the_robot_budget_stops_the_19th_send_before_it_leaves(emulator):
    budget = MemoryBudget()
    client = make_client(emulator, budget=budget)
    key = next(iter(emulator.data.robots))
    for i in range(18):
        robot.send(client, key, robot.text(f"{i}"))
    with pytest.raises(BudgetExhausted) as info:
        robot.send(client, key, robot.text("19"))
    assert 0 < info.value.retry_after <= 60 and info.value.limit_name == "robot.minute"
    assert key not in str(info.value)
    assert count(emulator, "webhook/send") == 18


def test_a_45009_despite_the_budget_uses_up_the_window_for_everyone(emulator):
    budget = MemoryBudget()
    emulator.flags(appchat_updates_per_hour=1)
    client = make_client(emulator, budget=budget)
    chatid = emulator.our_chats()[0].chatid
    appchat.update(client, chatid, name="一")
    with pytest.raises(WeComRateLimited):
        appchat.update(client, chatid, name="二")
    assert not budget.acquire("appchat.update").ok  # other processes now wait too
    with pytest.raises(BudgetExhausted):
        appchat.update(client, chatid, name="三")
    assert count(emulator, "appchat/update") == 2


def test_a_45009_from_gettoken_does_not_use_up_the_calls_budget(emulator):
    budget = MemoryBudget()
    fault(emulator, action="errcode", endpoint="gettoken", errcode=45009, times=1)
    client = make_client(emulator, budget=budget)
    with pytest.raises(WeComRateLimited):
        appchat.update(client, emulator.our_chats()[0].chatid, name="x")
    assert budget.acquire("appchat.update", n=899).ok  # one unit was spent on the attempt, the rest is there


def test_silent_limits_are_not_exhausted_by_a_45009(emulator):
    budget = MemoryBudget()
    fault(emulator, action="errcode", endpoint="message/send", errcode=45009, times=1)
    client = make_client(emulator, budget=budget)
    userid = emulator.users()[0].userid
    with pytest.raises(WeComRateLimited):
        message.send(client, message.text("x"), touser=[userid])
    assert budget.acquire("message.member_minute", userid.lower()).ok


def test_spend_is_all_or_nothing_and_a_no_op_without_a_budget(emulator):
    make_client(emulator).spend([Ask("robot.minute", "x", 99)])  # no budget: nothing checked
    budget = MemoryBudget()
    client = make_client(emulator, budget=budget)
    client.spend([Ask("robot.minute", robot_key("a"), 18)])
    with pytest.raises(BudgetExhausted):
        client.spend([Ask("robot.minute", robot_key("b"), 5), Ask("robot.minute", robot_key("a"))])
    assert budget.acquire("robot.minute", robot_key("b"), 18).ok  # nothing was taken for b


# --- logs ---------------------------------------------------------------------------------------
def test_logs_carry_endpoint_errcode_and_duration_but_never_tokens_or_secrets(emulator, caplog):
    caplog.set_level(logging.DEBUG, logger="wecom_plugin")
    client = make_client(emulator, timeout=(1.0, 0.3))
    department.simplelist(client)
    token = client.access_token()
    fault(emulator, action="errcode", endpoint="user/get", errcode=60011, times=1)
    with pytest.raises(WeComConfigError):
        user.get(client, "x")
    fault(emulator, action="latency", endpoint="tag/list", seconds=3, times=1)
    with pytest.raises(WeComNetworkError):
        client.get("tag/list")
    text = caplog.text
    assert "department/simplelist ok in" in text
    assert "user/get errcode 60011" in text
    assert "tag/list failed after" in text
    for secret in (token, emulator.secret(), token[:16]):
        assert secret not in text


def test_request_bodies_are_sent_as_compact_utf8_json(emulator):
    captured = []

    class Recording(WeComClient):
        def _send(self, method, path, query, body, files, idempotent, timeout, guarded):
            if body is not None:
                captured.append(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
            return super()._send(method, path, query, body, files, idempotent, timeout, guarded)

    client = Recording(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url)
    chatid = emulator.our_chats()[0].chatid
    appchat.update(client, chatid, name="中文群名")
    assert emulator.data.chats[chatid].name == "中文群名"
    assert captured == [json.dumps({"chatid": chatid, "name": "中文群名"}, ensure_ascii=False, separators=(",", ":"))]


def test_the_client_closes_only_a_pool_it_made(emulator):
    shared = pool_for(emulator.url)
    with make_client(emulator, pool=shared) as client, make_client(emulator, pool=shared) as other:
        department.simplelist(client)
        department.simplelist(other)
    assert len(shared.pools) == 1  # not closed: the caller owns it, and both clients used the same pool
    with make_client(emulator) as own:
        department.simplelist(own)
        assert own.pool is not shared and len(own.pool.pools) == 1
    assert len(own.pool.pools) == 0  # closed with the client that made it
    own.close()  # closing twice is harmless
    shared.clear()


def test_tokens_expire_by_the_store_clock_not_wecoms(emulator):
    """A token WeCom still accepts is refreshed when *our* clock says it is near its end."""
    now = [0.0]
    store = MemoryTokenStore(clock=lambda: now[0])
    client = make_client(emulator, token_store=store)
    department.simplelist(client)
    now[0] = (timedelta(hours=2) - timedelta(minutes=4)).total_seconds()
    department.simplelist(client)
    assert count(emulator, "gettoken") == 2


def test_a_server_dripping_its_answer_cannot_hold_a_call_past_its_deadline():
    # Every byte arrives well within the read timeout, but the whole answer would take ~10 s.
    body = b'{"errcode":0,"errmsg":"ok","department_id":[' + b" " * 40 + b"]}"

    class Drip(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.15)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = MemoryTokenStore()
        store.refresh(token_key("ww1", "s"), lambda: ("TOKEN", 7200))
        client = WeComClient(
            corp_id="ww1", secret="s", base_url=f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/",
            token_store=store, timeout=(0.5, 0.5),
        )  # fmt: skip
        started = time.monotonic()
        with pytest.raises(WeComNetworkError, match="deadline"):
            department.simplelist(client)
        assert time.monotonic() - started < 2.5  # connect + read timeouts, plus one read
    finally:
        server.shutdown()
        server.server_close()
