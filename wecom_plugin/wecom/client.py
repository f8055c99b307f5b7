"""The WeCom API client: one connection pool, timeouts, errcodes as exceptions, one shared access token.

:class:`WeComClient` is the only place that talks HTTP to WeCom (``qyapi.weixin.qq.com/cgi-bin/``, or the
sandbox tenant). Endpoint functions (:mod:`wecom_plugin.wecom.api`) are thin wrappers over
:meth:`WeComClient.get` and :meth:`WeComClient.post`, which return the answer's JSON object and raise
for everything else:

* errcode ≠ 0 → the exception :func:`~wecom_plugin.wecom.errors.classify` picks (permanent, config,
  retryable, token-invalid, rate-limited); the answer's body is kept on it as ``exc.body``;
* HTTP status ≠ 200, a body that is not a JSON object, or no answer at all →
  :class:`~wecom_plugin.wecom.errors.WeComNetworkError` (retryable). ``side_effect_possible`` is False when
  the request provably never left (connect errors) or could not change anything (reads), True otherwise
  (a read timeout after a POST was sent: an at-most-once step must then end ``unknown``).

What the client does itself (contract §1, §10):

* **The token.** Read from a :class:`~wecom_plugin.wecom.token_store.TokenStore` shared by every
  process, refreshed 5 minutes before it expires, under the store's lock, so N cold processes make one
  ``gettoken``. On 40014/42001 (and 40001 off ``gettoken``) it refreshes once, only if the stored token is
  still the refused one, retries once, then raises :class:`~wecom_plugin.wecom.errors.WeComTokenInvalid`.
  40001 from ``gettoken`` is a wrong secret: :class:`~wecom_plugin.wecom.errors.WeComConfigError`, no retry.
* **Busy.** -1 and 45033 are retried at most 3 times after short jittered pauses (< 2 s in all).
* **45009.** Raised as :class:`~wecom_plugin.wecom.errors.WeComRateLimited`; ``retry_after`` follows the
  limit that endpoint has (:data:`LIMIT_KINDS`: hour for ``appchat/update``, the end of the corp's natural
  day for ``appchat/create``, a minute by default), computed in the corp's time zone.
* **Budgets.** Calls made with ``spend=[...]`` first take those units from the client's
  :class:`~wecom_plugin.wecom.budget.Budget` (raising :class:`~wecom_plugin.wecom.budget.BudgetExhausted`,
  with nothing sent, when it is spent); after a 45009 the non-silent budgets are marked used up for
  their window so the other processes stop too.
* **The guard.** ``guard()`` (e.g. :meth:`JobContext.ensure_lease`) runs right before every HTTP request,
  retries included. For ``gettoken`` it runs right before the token store's refresh lock is taken: the
  lock may be the SQLite write lock, which a guard that writes (a lease renewal) would wait on forever.
  ``gettoken`` has no side effect, and the call that needed the token is guarded again before it leaves.
* **Secrets stay out of logs and errors.** Logs carry the endpoint, errcode and duration; query values
  of ``access_token``, ``corpsecret``, ``key`` and ``code`` are masked in every error message, and
  urllib3's own exceptions (whose text holds the URL) are not chained.

The transport is urllib3 (a ``PoolManager``, or a ``ProxyManager`` when the environment names a proxy
for the API host, see :func:`pool_for`) and orjson: no retries and no redirects inside urllib3, so a
POST is never resent behind the client's back; a keep-alive connection is reused once its answer has
been read to the end. The pool is thread-safe and may be shared by clients (``pool=``). A client keeps
no per-call state, but its ``guard`` belongs to one job: build one client per job or thread.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import certifi
import orjson
import urllib3
from requests.utils import get_auth_from_url, get_environ_proxies, prepend_scheme_if_needed, select_proxy
from urllib3.fields import RequestField
from urllib3.filepost import encode_multipart_formdata

from wecom_plugin.errors import ConfigurationError
from wecom_plugin.wecom.budget import Ask, Budget, BudgetExhausted
from wecom_plugin.wecom.errors import (
    WeComNetworkError,
    WeComRateLimited,
    WeComRetryableError,
    WeComTokenInvalid,
    classify,
    describe,
    redact,
)
from wecom_plugin.wecom.token_store import EARLY_REFRESH_SECONDS, MemoryTokenStore, TokenStore, token_key

if TYPE_CHECKING:
    from wecom_plugin.settings import Settings

log = logging.getLogger("wecom_plugin.wecom.client")

#: (connect, read) seconds. Well below JOB_LEASE_SECONDS, so a call cannot outlive the lease that guarded it.
DEFAULT_TIMEOUT = (3.05, 10.0)
#: Media uploads (up to 20 MB) get a longer read timeout.
UPLOAD_TIMEOUT = (3.05, 60.0)
#: Connections kept per host, and hosts kept, by a pool :func:`pool_for` makes (requests' defaults).
POOL_MAXSIZE = 10
POOL_HOSTS = 10
#: -1 / 45033: at most this many retries (official advice for -1: ≤3), after these base pauses, jittered ×[0.5, 1].
BUSY_RETRIES = 3
BUSY_DELAYS = (0.2, 0.4, 0.8)

#: Which limit a 45009 from an endpoint means, so ``retry_after`` is right (contract §10.2: a minute block
#: lasts 60 s, an hour block 60 min, a day block until the end of the natural day).
LIMIT_KINDS: dict[str, str] = {
    "gettoken": "hour",  # frequency blocking after ~2000 failing calls/hour lasts an hour (§1, obs)
    "appchat/create": "day",  # 1000 per corp per day (§3.1)
    "appchat/update": "hour",  # 1000 per corp per hour (§3.2)
    "appchat/send": "minute",
    "message/send": "minute",
    "webhook/send": "minute",  # 20 per robot per minute (§5)
    "webhook/upload_media": "minute",
}
DEFAULT_LIMIT_KIND = "minute"  # the basic per-API limit (§10.2)

Guard = Callable[[], object]


def limit_kind(path: str) -> str:
    """The limit (``minute``/``hour``/``day``) a 45009 from ``path`` means; ``minute`` when unknown."""
    return LIMIT_KINDS.get(path.split("?", 1)[0].strip("/"), DEFAULT_LIMIT_KIND)


def fold_userid(userid: str) -> str:
    """A userid in the form used for comparing: case-folded (WeCom userids are case-insensitive, §0)."""
    return userid.casefold()


def same_userid(a: str | None, b: str | None) -> bool:
    """True if ``a`` and ``b`` name the same WeCom member (case-insensitive); None matches nothing."""
    if a is None or b is None:
        return False
    return fold_userid(a) == fold_userid(b)


def _no_guard() -> None:
    return None


class WeComClient:
    """One WeCom app (a corp id and one secret) as the transport sees it.

    Args:
        corp_id, secret: the credentials (``secret`` is the app's, or the contact-sync secret).
        base_url: the API base, ending in ``/cgi-bin/`` (added when missing).
        agent_id: the app's agentid (``message/send`` needs it).
        token_store: where the token is shared; default a private :class:`MemoryTokenStore`.
        budget: the shared :class:`~wecom_plugin.wecom.budget.Budget`; None = no budget checks.
        guard: called right before every HTTP request (see the module docstring); may raise.
        timeout: ``(connect, read)`` seconds for every request.
        timezone: the corp's zone, for day-limit retry times (Asia/Shanghai).
        early_refresh: refresh the token this many seconds before it expires.
        busy_retries, busy_delays: the -1/45033 retry policy.
        clock: current time as an aware datetime (for 45009 retry times); tests fix it.
        sleep: how to pause between busy retries; tests may record instead.
        pool: a ``urllib3.PoolManager`` to share with other clients (default: ``pool_for(base_url)``,
            closed by :meth:`close`; a pool passed in is left open for its owner).

    The pool a client makes honours the environment the way ``requests`` did: the proxy for
    ``base_url`` is resolved once, here, from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` (upper or
    lower case) and ``NO_PROXY`` (host suffixes, ``host:port``, IPv4 CIDR); when one applies, requests go
    through a ``urllib3.ProxyManager`` (an HTTPS API through a ``CONNECT`` tunnel; credentials in the
    proxy URL are sent as ``Proxy-Authorization``), otherwise a ``urllib3.PoolManager``. TLS certificates
    are verified against ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when set, else certifi's store.
    A pool passed as ``pool`` is used as it is: build it with :func:`pool_for` to keep these rules.
    """

    def __init__(
        self,
        *,
        corp_id: str,
        secret: str,
        base_url: str,
        agent_id: int | None = None,
        token_store: TokenStore | None = None,
        budget: Budget | None = None,
        guard: Guard | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        timezone: tzinfo | str = "Asia/Shanghai",
        early_refresh: float = EARLY_REFRESH_SECONDS,
        busy_retries: int = BUSY_RETRIES,
        busy_delays: tuple[float, ...] = BUSY_DELAYS,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], object] = time.sleep,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        if not corp_id or not secret:
            raise ConfigurationError("WeComClient needs a corp id and a secret")
        self.corp_id = corp_id
        self._secret = secret
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.agent_id = agent_id
        self.token_store: TokenStore = token_store if token_store is not None else MemoryTokenStore()
        self.budget = budget
        self.guard: Guard = guard or _no_guard
        self.timeout = timeout
        self.timezone = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
        self.early_refresh = early_refresh
        self.busy_retries = busy_retries
        self.busy_delays = busy_delays or (0.0,)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._own_pool = pool is None
        self.pool: urllib3.PoolManager = pool if pool is not None else pool_for(self.base_url)
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}
        # A plain PoolManager is asked for the API host's pool once (not per call, which re-parses the
        # URL); a proxy manager gets the whole URL every time, as it needs it.
        origin = urllib3.util.parse_url(self.base_url)
        self._origin = (origin.host, origin.port, origin.scheme)
        self._prefix = origin.path or "/"
        self._direct = type(self.pool) is urllib3.PoolManager
        self._host_pool: urllib3.HTTPConnectionPool | None = None
        self._token_key = token_key(corp_id, secret)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        secret: str = "app",  # noqa: S107 - names which secret, not a secret
        guard: Guard | None = None,
        **options: Any,
    ) -> WeComClient:
        """A client for ``settings``' corp with the app secret (``"app"``) or the contact-sync one (``"contact"``).

        ``options`` go to the constructor (token_store, budget, timeout...).
        """
        return cls(
            corp_id=settings.corp_id,
            secret=secret_for(settings, secret),
            base_url=settings.api_base_url,
            agent_id=settings.agent_id,
            timezone=settings.timezone,
            guard=guard,
            **options,
        )

    def __repr__(self) -> str:  # never show the secret or the token
        return f"<WeComClient corp={self.corp_id} agent={self.agent_id} base={self.base_url}>"

    def close(self) -> None:
        """Close the connection pool if the client made it."""
        if self._own_pool:
            self.pool.clear()

    def __enter__(self) -> WeComClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public calls ---------------------------------------------------------------------------
    def get(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        auth: str = "token",
        timeout: tuple[float, float] | None = None,
        spend: Iterable[Ask] = (),
    ) -> dict[str, Any]:
        """``GET {base}{path}`` with the access token; the answer's JSON object (errcode 0)."""
        return self._request("GET", path, params=params, auth=auth, idempotent=True, timeout=timeout, spend=spend)

    def post(
        self,
        path: str,
        json: Any = None,
        *,
        files: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: str = "token",
        idempotent: bool = False,
        timeout: tuple[float, float] | None = None,
        spend: Iterable[Ask] = (),
    ) -> dict[str, Any]:
        """``POST {base}{path}`` with a JSON body (UTF-8, compact) or multipart ``files``; the answer's JSON object.

        ``idempotent=True`` marks a POST that only reads (``user/list_id``, ``groupchat/get``...), so a
        timeout after sending it is known to have had no side effect.
        """
        return self._request(
            "POST", path, params=params, body=json, files=files, auth=auth, idempotent=idempotent,
            timeout=timeout, spend=spend,
        )  # fmt: skip

    def access_token(self) -> str:
        """The current access token (fetched if needed). Never log it."""
        return self._token()

    def spend(self, asks: Iterable[Ask]) -> None:
        """Take ``asks`` from the budget (all or nothing) or raise :class:`BudgetExhausted`; no-op without one."""
        asks = list(asks)
        if self.budget is None or not asks:
            return
        grant = self.budget.acquire_many(asks)
        if not grant.ok:
            key = next((a.key for a in asks if a.limit_name == grant.limit_name), "corp")
            raise BudgetExhausted(grant, key)

    # --- the token ------------------------------------------------------------------------------
    def _token(self, stale: str | None = None) -> str:
        if stale is None:
            token = self.token_store.get(self._token_key, early=self.early_refresh)
            if token:
                return token
        self.guard()  # before the refresh lock, see the module docstring
        return self.token_store.refresh(self._token_key, self._fetch_token, early=self.early_refresh, stale=stale)

    def _fetch_token(self) -> tuple[str, float]:
        from wecom_plugin.wecom.api import token as token_api

        return token_api.gettoken(self, self._secret)

    def _gettoken_body(self, secret: str) -> dict[str, Any]:
        """One ``gettoken`` attempt, unguarded (the caller holds the refresh lock) and never retried here."""
        return self._request(
            "GET", "gettoken", params={"corpid": self.corp_id, "corpsecret": secret}, auth="none", idempotent=True,
            guarded=False, retry=False,
        )  # fmt: skip

    # --- the request loop -----------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        files: Mapping[str, Any] | None = None,
        auth: str = "token",
        idempotent: bool = False,
        timeout: tuple[float, float] | None = None,
        spend: Iterable[Ask] = (),
        guarded: bool = True,
        retry: bool = True,
    ) -> dict[str, Any]:
        if auth not in ("token", "none"):
            raise ValueError("auth must be 'token' or 'none'")
        path = path.lstrip("/")
        asks = list(spend)
        self.spend(asks)
        refreshed = False
        busy = 0
        stale: str | None = None
        while True:
            token: str | None = None
            try:
                query = dict(params or {})
                if auth == "token":
                    token = self._token(stale)
                    stale = None
                    query["access_token"] = token
                data = self._send(method, path, query, body, files, idempotent, timeout or self.timeout, guarded)
                errcode = _errcode(data)
                if errcode == 0:
                    return data
                exc = classify(
                    errcode, str(data.get("errmsg", "")), path, limit=limit_kind(path), now=self._clock(),
                    tz=self.timezone,
                )  # fmt: skip
                exc.body = {k: v for k, v in data.items() if k != "errmsg"}  # type: ignore[attr-defined]
                raise exc
            except WeComTokenInvalid:
                if token is None or refreshed or not retry:
                    raise
                refreshed = True
                stale = token  # refresh only if the stored token is still this one
            except WeComRetryableError:
                if busy >= self.busy_retries or not retry:
                    raise
                delay = self.busy_delays[min(busy, len(self.busy_delays) - 1)] * random.uniform(0.5, 1.0)
                busy += 1
                self._sleep(delay)
            except WeComRateLimited as exc:
                if exc.endpoint == path:  # not a 45009 from gettoken: that is no limit of this call
                    self._exhaust(asks, exc.retry_after)
                raise

    def _send(
        self,
        method: str,
        path: str,
        query: dict[str, Any],
        body: Any,
        files: Mapping[str, Any] | None,
        idempotent: bool,
        timeout: tuple[float, float],
        guarded: bool,
    ) -> dict[str, Any]:
        target = path
        if query:
            target += ("&" if "?" in path else "?") + _encode_query(query)
        payload: bytes | None = None
        headers = _HEADERS
        if files is not None:
            payload, content_type = _multipart(files)
            headers = {**_HEADERS, "Content-Type": content_type}
        elif body is not None:
            payload = _dumps(body)
            headers = _JSON_HEADERS
        timeouts = self._timeouts.get(timeout)
        if timeouts is None:
            timeouts = self._timeouts[timeout] = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        if guarded:
            self.guard()
        started = time.monotonic()
        try:
            # preload_content=False: the body is read below against an overall deadline (the read
            # timeout applies per socket read, so a server dripping bytes could otherwise hold a call
            # forever). retries=False: urllib3 raises instead of resending, redirect=False: a 3xx is an error.
            if self._direct:
                pool = self._host_pool
                if pool is None or pool.pool is None:  # first call, or the manager closed it (clear, eviction)
                    pool = self._host_pool = self.pool.connection_from_host(*self._origin)
                url = self._prefix + target
            else:
                pool, url = self.pool, self.base_url + target
            resp = pool.urlopen(
                method, url, body=payload, headers=headers, timeout=timeouts, retries=False, redirect=False,
                preload_content=False, decode_content=True,
            )  # fmt: skip
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            ms = (time.monotonic() - started) * 1000
            error = _network_error(exc, path, idempotent)
            log.warning("wecom %s %s failed after %.0f ms: %s", method, path, ms, error)
            raise error from None
        complete = False
        try:
            if resp.status != 200:
                ms = (time.monotonic() - started) * 1000
                log.warning("wecom %s %s answered HTTP %s in %.0f ms", method, path, resp.status, ms)
                raise WeComNetworkError(f"{path}: HTTP {resp.status}", path, side_effect_possible=not idempotent)
            raw = _read_body(resp, path, started + timeout[0] + timeout[1], idempotent)
            complete = True
            ms = (time.monotonic() - started) * 1000
            data = _loads(raw)
            if not isinstance(data, dict):
                log.warning("wecom %s %s answered a body that is not a JSON object in %.0f ms", method, path, ms)
                raise WeComNetworkError(f"{path}: the answer is not a JSON object", path,
                                        side_effect_possible=not idempotent)  # fmt: skip
        finally:
            if not complete:  # unread bytes left: the connection cannot carry another request
                resp.close()
            resp.release_conn()  # back to the pool (read to the end, it already is)
        errcode = _errcode(data)
        if errcode:
            log.info("wecom %s %s errcode %s in %.0f ms", method, path, describe(errcode), ms)
        else:
            log.debug("wecom %s %s ok in %.0f ms", method, path, ms)
        return data

    def _exhaust(self, asks: list[Ask], block_seconds: float | None) -> None:
        """WeCom blocks a limit after a 45009 (60 s, an hour, or until midnight): every process stops."""
        if self.budget is None:
            return
        table = getattr(self.budget, "limits", {})
        for ask in asks:
            limit = table.get(ask.limit_name)
            if limit is not None and not limit.silent:
                self.budget.exhaust(ask.limit_name, ask.key, block_seconds=block_seconds)


# WeCom's largest answers (a department's member list with details) are well under this.
MAX_ANSWER_BYTES = 32 * 1024 * 1024


def _read_body(resp: urllib3.BaseHTTPResponse, path: str, deadline: float, idempotent: bool) -> bytes:
    """The answer's body, read before ``deadline`` (monotonic) and within :data:`MAX_ANSWER_BYTES`.

    Each read returns what the socket has (``read1``), so the deadline is checked at least once per
    read timeout however slowly the server sends.
    """
    chunks: list[bytes] = []
    size = 0
    read1 = resp.read1
    try:
        while True:
            chunk = read1(65536, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise WeComNetworkError(
                    f"{path}: the answer did not arrive within the call's deadline", path,
                    side_effect_possible=not idempotent,
                )  # fmt: skip
            if size > MAX_ANSWER_BYTES:
                raise WeComNetworkError(f"{path}: the answer exceeds {MAX_ANSWER_BYTES} bytes", path,
                                        side_effect_possible=not idempotent)  # fmt: skip
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        # The request was sent and answered: whatever failed now, it may have had its effect.
        raise _network_error(exc, path, idempotent, sent=True) from None


#: Headers of every request (the Accept-Encoding requests sent; urllib3 decodes the answer).
_HEADERS = {
    "User-Agent": f"wecom-plugin urllib3/{urllib3.__version__}",
    "Accept-Encoding": "gzip, deflate",
}
_JSON_HEADERS = {**_HEADERS, "Content-Type": "application/json; charset=utf-8"}


def _encode_query(query: Mapping[str, Any]) -> str:
    """``query`` as requests encoded it: None values left out, sequences repeated, UTF-8, ``+`` for spaces."""
    return urlencode([(k, v) for k, v in query.items() if v is not None], doseq=True)


def _dumps(body: Any) -> bytes:
    """Compact UTF-8 JSON with non-ASCII text as is (Chinese stays readable to WeCom)."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # what orjson refuses (an int beyond 64 bits...): the standard library may take it
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _loads(raw: bytes) -> Any:
    """The parsed body, or None if it is not JSON."""
    try:
        return orjson.loads(raw)
    except ValueError:
        try:  # what orjson refuses that the standard library reads (a UTF-8 BOM, NaN...)
            return json.loads(raw)
        except ValueError:
            return None


def _multipart(files: Mapping[str, Any]) -> tuple[bytes, str]:
    """``(body, content type)`` of a multipart upload, built as requests built it from ``files=``.

    Each value is ``(filename, content[, content_type[, headers]])`` (content: bytes, str or a file
    object), or bare content sent under the field's name.
    """
    fields = []
    for name, value in files.items():
        content_type = headers = None
        if isinstance(value, (tuple, list)):
            if len(value) == 2:
                filename, content = value
            elif len(value) == 3:
                filename, content, content_type = value
            else:
                filename, content, content_type, headers = value
        else:
            filename, content = getattr(value, "name", None) or name, value
        if content is None:
            continue
        data = content.read() if hasattr(content, "read") else content
        field = RequestField(name=name, data=data, filename=filename, headers=headers)
        field.make_multipart(content_type=content_type)
        fields.append(field)
    return encode_multipart_formdata(fields)


def _errcode(data: Mapping[str, Any]) -> int:
    """The answer's errcode; some endpoints omit it on success (§0)."""
    raw = data.get("errcode", 0)
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return -1  # a garbled errcode: treat as "system busy", which is retried a little


def _network_error(exc: BaseException, path: str, idempotent: bool, *, sent: bool = False) -> WeComNetworkError:
    """The :class:`WeComNetworkError` for ``exc``, its message redacted; ``sent``: the request surely left."""
    mapped = WeComNetworkError.from_exception(exc, path)
    possible = (sent or mapped.side_effect_possible) and not idempotent
    return WeComNetworkError(redact(str(mapped)), path, side_effect_possible=possible)


def environ_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``, as requests chose it (None: go direct).

    ``HTTPS_PROXY``/``HTTP_PROXY`` by the URL's scheme, else ``ALL_PROXY`` (lower case first, as curl);
    none when ``NO_PROXY`` matches the host. A proxy without a scheme is taken as ``http://``.
    """
    proxy = select_proxy(url, get_environ_proxies(url))
    return prepend_scheme_if_needed(proxy, "http") if proxy else None


def pool_for(base_url: str) -> urllib3.PoolManager:
    """A connection pool for ``base_url``: a ``ProxyManager`` if :func:`environ_proxy` names a proxy, else a
    ``PoolManager``; TLS verified against ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` or certifi's store.

    Raises:
        ConfigurationError: the proxy or the CA bundle named in the environment cannot be used.
    """
    options: dict[str, Any] = {"num_pools": POOL_HOSTS, "maxsize": POOL_MAXSIZE, "cert_reqs": "CERT_REQUIRED"}
    options.update(_trust_store(base_url))
    proxy = environ_proxy(base_url)
    if proxy is None:
        return urllib3.PoolManager(**options)
    parsed = urllib3.util.parse_url(proxy)
    where = f"the proxy the environment names for {urlsplit(base_url).hostname}"  # never the proxy's credentials
    scheme = (parsed.scheme or "").lower()
    if not parsed.host:
        raise ConfigurationError(f"{where} has no host")
    if scheme.startswith("socks"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from urllib3.contrib.socks import SOCKSProxyManager
        except ImportError:
            raise ConfigurationError(f"{where} is a SOCKS proxy, which needs PySocks (not installed)") from None
        return SOCKSProxyManager(proxy, **options)
    if scheme not in ("http", "https"):
        raise ConfigurationError(f"{where} has the unsupported scheme {scheme!r}")
    username, password = get_auth_from_url(proxy)
    proxy_headers = urllib3.make_headers(proxy_basic_auth=f"{username}:{password}") if username else None
    return urllib3.ProxyManager(parsed._replace(auth=None).url, proxy_headers=proxy_headers, **options)


def _trust_store(base_url: str) -> dict[str, str]:
    """``ca_certs``/``ca_cert_dir`` for the pool: what requests verified against."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        path = os.environ.get(name)
        if path:
            if not os.path.exists(path) and base_url.lower().startswith("https:"):
                raise ConfigurationError(f"{name}: no CA bundle at {path}")
            return {"ca_cert_dir": path} if os.path.isdir(path) else {"ca_certs": path}
    return {"ca_certs": certifi.where()}


def secret_for(settings: Settings, which: str) -> str:
    """The secret named ``which`` (``"app"`` or ``"contact"``) from ``settings``."""
    if which == "app":
        return settings.app_secret
    if which == "contact":
        if not settings.contact_secret:
            raise ConfigurationError("WECOM_CONTACT_SECRET: is required for the contact-sync (通讯录同步) calls")
        return settings.contact_secret
    raise ValueError("secret must be 'app' or 'contact'")


__all__ = [
    "BUSY_RETRIES",
    "DEFAULT_TIMEOUT",
    "LIMIT_KINDS",
    "UPLOAD_TIMEOUT",
    "WeComClient",
    "environ_proxy",
    "fold_userid",
    "limit_kind",
    "pool_for",
    "redact",
    "same_userid",
    "secret_for",
]
