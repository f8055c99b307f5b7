"""WeCom errcodes → the plugin's retry classes (contract §0, §1, §10)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import requests
import urllib3
from urllib3 import exceptions as u3

from wecom_plugin.errors import (
    ConfigurationError,
    PermanentError,
    PluginError,
    RateLimitedError,
    RetryableError,
)
from wecom_plugin.wecom import errors as E
from wecom_plugin.wecom.errors import (
    WeComApiError,
    WeComConfigError,
    WeComError,
    WeComNetworkError,
    WeComRateLimited,
    WeComRetryableError,
    WeComTokenInvalid,
    classify,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
HINTED = (
    "invalid access_token, hint: [1643352610243980316064956], from ip: 1.2.3.4, "
    "more info at https://open.work.weixin.qq.com/devtool/query?e=40014"
)


def _constants() -> dict[str, int]:
    return {name: value for name, value in vars(E).items() if name.isupper() and type(value) is int}


def test_named_constants_have_the_contract_values():
    assert (E.SYSTEM_BUSY, E.INVALID_CREDENTIAL, E.INVALID_ACCESS_TOKEN, E.ACCESS_TOKEN_EXPIRED) == (
        -1,
        40001,
        40014,
        42001,
    )
    assert (E.API_FREQ_OUT_OF_LIMIT, E.API_CONCURRENCY_OUT_OF_LIMIT, E.IP_NOT_ALLOWED) == (45009, 45033, 60020)
    assert (E.CONTACT_ASSISTANT_FORBIDDEN, E.ALL_RECIPIENTS_INVALID, E.INVALID_WEBHOOK_URL) == (48009, 81013, 93000)
    assert (E.TRANSFER_OWNER_NOT_RESIGNED, E.TRANSFER_NOT_EXTERNAL_CHAT, E.AGENT_NO_PRIVILEGE) == (90500, 90501, 301002)
    assert E.APPCHAT_MEMBER_COUNT == 86006 and E.APPCHAT_NOT_CREATOR == 86008


# §10.1 and §1 tables, plus §3.5 appchat codes: every one has a name.
CONTRACT_CODES = {
    -1, 0, 40001, 40003, 40013, 40014, 40029, 40031, 40032, 40050, 40056, 40057, 40058, 40091, 41001, 41002,
    41004, 42001, 44004, 45002, 45009, 45033, 48002, 48009, 50001, 50002, 50003, 60003, 60011, 60020, 60111,
    81013, 81017, 82001, 86001, 86003, 86004, 86005, 86006, 86007, 86008, 86216, 86217, 86220, 90500, 90501,
    93000, 301002, 40008,
}  # fmt: skip


def test_every_contract_code_is_named_and_has_a_meaning():
    named = set(_constants().values())
    assert CONTRACT_CODES <= named
    assert named <= set(E.MEANINGS)
    assert len(set(_constants().values())) == len(_constants()), "two names share a code"
    assert all(E.MEANINGS[code] for code in named)


def test_describe_gives_the_operator_line():
    assert E.describe(60020) == "60020 访问ip不在白名单之中"
    assert E.describe(123456) == "123456 未知错误码"


@pytest.mark.parametrize(
    "code, endpoint, cls, base",
    [
        (-1, "user/get", WeComRetryableError, RetryableError),
        (45033, "appchat/send", WeComRetryableError, RetryableError),
        (45009, "appchat/send", WeComRateLimited, RateLimitedError),
        (40014, "user/get", WeComTokenInvalid, RetryableError),
        (42001, "user/get", WeComTokenInvalid, RetryableError),
        (40001, "message/send", WeComTokenInvalid, RetryableError),
        (40001, "gettoken", WeComConfigError, ConfigurationError),
        (40001, "/cgi-bin/gettoken?corpid=ww1&corpsecret=x", WeComConfigError, ConfigurationError),
        (60111, "user/get", WeComApiError, PermanentError),
        (86008, "appchat/update", WeComApiError, PermanentError),
        (81013, "message/send", WeComApiError, PermanentError),
        (41001, "user/get", WeComApiError, PermanentError),
        (987654, "user/get", WeComApiError, PermanentError),
        (-40001, "user/get", WeComApiError, PermanentError),
    ],
)
def test_classify(code, endpoint, cls, base):
    exc = classify(code, "msg", endpoint)
    assert type(exc) is cls
    assert isinstance(exc, base) and isinstance(exc, WeComError) and isinstance(exc, PluginError)
    assert exc.errcode == code and exc.endpoint == endpoint


@pytest.mark.parametrize(
    "code",
    [40013, 40091, 40056, 40057, 41002, 41004, 48002, 48009, 50001, 50003, 60011, 60020, 93000, 301002],
)
def test_configuration_codes(code):
    exc = classify(code, "x", "user/get")
    assert isinstance(exc, WeComConfigError) and isinstance(exc, ConfigurationError)
    assert not isinstance(exc, PermanentError | RetryableError)


def test_errcode_zero_is_not_an_error():
    with pytest.raises(ValueError):
        classify(0, "ok", "user/get")


def test_unknown_code_is_permanent_and_keeps_the_code():
    exc = classify(2000002, "something new", "user/get")
    assert isinstance(exc, WeComApiError) and exc.errcode == 2000002
    assert exc.meaning == "未知错误码"
    assert "2000002" in str(exc)


def test_errmsg_hint_is_stripped_for_display_and_kept_raw():
    exc = classify(60020, HINTED.replace("invalid access_token", "not allow to access from your ip"), "user/get")
    assert exc.errmsg == "not allow to access from your ip"
    assert "hint: [1643352610243980316064956]" in exc.errmsg_raw
    assert "hint" not in str(exc) and "60020" in str(exc) and "访问ip不在白名单之中" in str(exc)
    assert E.strip_hint(HINTED) == "invalid access_token"
    assert E.strip_hint("api freq out of limit") == "api freq out of limit"
    assert E.strip_hint("") == ""


def test_every_wecom_error_has_the_attributes_the_worker_reads():
    # the job worker reads retry_after and side_effect_possible off any PluginError it retries
    for code in (-1, 40001, 40014, 45009, 60020, 60111):
        exc = classify(code, "", "user/get")
        assert hasattr(exc, "retry_after") and exc.side_effect_possible is False


# --- 45009: how long the block lasts (§10.2) ------------------------------------------------------
def test_rate_limit_minute_and_hour():
    now = datetime(2025, 1, 1, 12, tzinfo=UTC)
    assert WeComRateLimited.for_limit("minute", now).retry_after == 60
    assert WeComRateLimited.for_limit("hour", now).retry_after == 3600
    assert WeComRateLimited.for_limit("month", now).retry_after == 30 * 86400
    assert classify(45009, "api freq out of limit", "appchat/send").retry_after == 60


def test_rate_limit_day_lasts_until_midnight_in_shanghai():
    # 23:00 in Shanghai is 15:00 UTC: one hour left of WeCom's natural day.
    assert WeComRateLimited.for_limit("day", datetime(2025, 1, 1, 15, tzinfo=UTC), SHANGHAI).retry_after == 3600
    assert WeComRateLimited.for_limit("day", datetime(2025, 1, 1, 23, 59, 30, tzinfo=SHANGHAI)).retry_after == 30
    assert WeComRateLimited.for_limit("day", datetime(2025, 1, 1, 0, 0, tzinfo=SHANGHAI)).retry_after == 86400
    # naive is UTC; the zone may be given by name
    assert WeComRateLimited.for_limit("day", datetime(2025, 1, 1, 15), "Asia/Shanghai").retry_after == 3600
    exc = classify(45009, "", "x", limit="day", now=datetime(2025, 1, 1, 15, tzinfo=UTC))
    assert isinstance(exc, RateLimitedError) and exc.retry_after == 3600


def test_rate_limit_day_counts_real_seconds_across_a_dst_change():
    new_york = ZoneInfo("America/New_York")  # 2025-03-09 has 23 hours there
    exc = WeComRateLimited.for_limit("day", datetime(2025, 3, 9, 0, 30, tzinfo=new_york), new_york)
    assert exc.retry_after == 22.5 * 3600


def test_rate_limited_is_what_the_worker_reschedules():
    exc = WeComRateLimited.for_limit("hour", datetime.now(UTC), errmsg="api freq out of limit", endpoint="x")
    assert isinstance(exc, RateLimitedError) and exc.errcode == 45009 and exc.errmsg == "api freq out of limit"


# --- network errors: could the request have reached WeCom? ---------------------------------------
@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections, reads the request, never answers (or resets when asked)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connect_refused_has_no_side_effect():
    with pytest.raises(requests.RequestException) as info:
        requests.get(f"http://127.0.0.1:{_free_port()}/cgi-bin/user/get", timeout=1)
    exc = WeComNetworkError.from_exception(info.value, "user/get")
    assert isinstance(exc, RetryableError) and exc.side_effect_possible is False
    assert exc.endpoint == "user/get" and "user/get" in str(exc)


def test_read_timeout_may_have_a_side_effect(silent_server):
    port, _ = silent_server
    with pytest.raises(requests.ReadTimeout) as info:
        requests.post(f"http://127.0.0.1:{port}/cgi-bin/appchat/send", json={}, timeout=(1, 0.2))
    exc = WeComNetworkError.from_exception(info.value, "appchat/send")
    assert exc.side_effect_possible is True


def test_reset_after_send_may_have_a_side_effect(silent_server):
    port, accepted = silent_server
    result: list[BaseException] = []

    def call():
        try:
            requests.post(f"http://127.0.0.1:{port}/cgi-bin/appchat/send", json={"x": 1}, timeout=(1, 2))
        except requests.RequestException as exc:
            result.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    for _ in range(100):
        if accepted:
            break
        threading.Event().wait(0.02)
    conn = accepted[0]
    conn.recv(65536)  # the request arrived
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    conn.close()
    accepted.clear()
    caller.join()
    assert isinstance(result[0], requests.ConnectionError)
    assert WeComNetworkError.from_exception(result[0], "appchat/send").side_effect_possible is True


def test_connect_timeout_is_recognised_without_a_network():
    exc = requests.ConnectTimeout("connect timed out")
    assert WeComNetworkError.from_exception(exc).side_effect_possible is False
    assert WeComNetworkError.from_exception(ValueError("not json")).side_effect_possible is True


def _urllib3_call(url: str, method: str = "POST", **options) -> BaseException:
    """What urllib3 raises for one call made the way the client makes it (no retries, no redirects)."""
    with pytest.raises(u3.HTTPError) as info:
        urllib3.PoolManager().request(
            method, url, body=b"{}", retries=options.pop("retries", False), redirect=False,
            timeout=urllib3.Timeout(connect=1, read=0.2), **options,
        )  # fmt: skip
    return info.value


def test_urllib3_connect_refused_has_no_side_effect_bare_or_wrapped():
    url = f"http://127.0.0.1:{_free_port()}/cgi-bin/appchat/send?access_token=SECRET123"
    bare = _urllib3_call(url)
    assert isinstance(bare, u3.NewConnectionError)
    wrapped = _urllib3_call(url, retries=urllib3.Retry(0))
    assert isinstance(wrapped, u3.MaxRetryError) and isinstance(wrapped.reason, u3.NewConnectionError)
    for exc in (bare, wrapped):
        mapped = WeComNetworkError.from_exception(exc, "appchat/send")
        assert mapped.side_effect_possible is False
        assert "SECRET123" not in str(mapped)


def test_urllib3_read_timeout_and_reset_after_send_may_have_a_side_effect(silent_server):
    port, accepted = silent_server
    timeout = _urllib3_call(f"http://127.0.0.1:{port}/cgi-bin/appchat/send")
    assert isinstance(timeout, u3.ReadTimeoutError)
    assert WeComNetworkError.from_exception(timeout, "appchat/send").side_effect_possible is True
    wrapped = _urllib3_call(f"http://127.0.0.1:{port}/cgi-bin/appchat/send", retries=urllib3.Retry(0, read=False))
    assert WeComNetworkError.from_exception(wrapped, "appchat/send").side_effect_possible is True

    result: list[BaseException] = []

    def call():
        try:
            urllib3.PoolManager().request("POST", f"http://127.0.0.1:{port}/x", body=b"{}", retries=False, timeout=2)
        except u3.HTTPError as exc:
            result.append(exc)

    earlier = len(accepted)  # the two timed-out calls' connections (closed by the fixture)
    caller = threading.Thread(target=call)
    caller.start()
    for _ in range(100):
        if len(accepted) > earlier:
            break
        threading.Event().wait(0.02)
    conn = accepted.pop()
    conn.recv(65536)  # the request arrived
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    conn.close()
    caller.join()
    assert isinstance(result[0], u3.ProtocolError)
    assert WeComNetworkError.from_exception(result[0], "appchat/send").side_effect_possible is True


def test_urllib3_connect_phase_types_are_recognised_without_a_network():
    before = [
        u3.ConnectTimeoutError("connect timed out"),
        u3.NameResolutionError("qyapi.weixin.qq.com", None, socket.gaierror(-2, "Name or service not known")),
        u3.ProxyError("Unable to connect to proxy", OSError("refused")),
        u3.MaxRetryError(None, "/x", u3.NameResolutionError("h", None, socket.gaierror(-2, "no"))),
        u3.SSLError(ssl_verification_error()),
        u3.LocationParseError("http://[bad"),
        u3.ClosedPoolError(None, "closed"),
    ]
    for exc in before:
        assert WeComNetworkError.from_exception(exc).side_effect_possible is False, exc
    after = [
        u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
        u3.ReadTimeoutError(None, "/x", "Read timed out."),
        u3.SSLError("[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC]"),  # not known to be the handshake
        u3.MaxRetryError(None, "/x", u3.ProtocolError("Connection aborted.")),
    ]
    for exc in after:
        assert WeComNetworkError.from_exception(exc).side_effect_possible is True, exc


def ssl_verification_error() -> BaseException:
    import ssl

    return ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")


def test_network_errors_never_carry_the_access_token_in_their_message():
    import requests

    from wecom_plugin.wecom.errors import WeComNetworkError

    exc = requests.ConnectionError("HTTPSConnectionPool: /cgi-bin/user/get?access_token=SECRET123&userid=a")
    mapped = WeComNetworkError.from_exception(exc, "user/get")
    assert "SECRET123" not in str(mapped)
    assert "access_token=***" in str(mapped)
