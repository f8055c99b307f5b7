"""The WeCom API client: one HTTP session, timeouts, errcodes as exceptions, one shared access token.

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
  ``requests``' own exceptions (whose text holds the URL) are not chained.

The client is not thread-safe (one ``requests.Session``); build one per thread or job.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import requests
import urllib3

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
        session: a ``requests.Session`` to use (default: a new one, closed by :meth:`close`).
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
        session: requests.Session | None = None,
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
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
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
        """Close the HTTP session if the client made it."""
        if self._own_session:
            self.session.close()

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
        # stream=True: the body is read below against an overall deadline (requests' read timeout
        # applies per socket read, so a server dripping bytes could otherwise hold a call forever).
        kwargs: dict[str, Any] = {"params": query, "timeout": timeout, "stream": True}
        if files is not None:
            kwargs["files"] = files
        elif body is not None:
            kwargs["data"] = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            kwargs["headers"] = {"Content-Type": "application/json; charset=utf-8"}
        if guarded:
            self.guard()
        started = time.monotonic()
        try:
            resp = self.session.request(method, self.base_url + path, **kwargs)
        except requests.RequestException as exc:
            ms = (time.monotonic() - started) * 1000
            error = _network_error(exc, path, idempotent)
            log.warning("wecom %s %s failed after %.0f ms: %s", method, path, ms, error)
            raise error from None
        try:
            if resp.status_code != 200:
                ms = (time.monotonic() - started) * 1000
                log.warning("wecom %s %s answered HTTP %s in %.0f ms", method, path, resp.status_code, ms)
                raise WeComNetworkError(f"{path}: HTTP {resp.status_code}", path, side_effect_possible=not idempotent)
            raw = _read_body(resp, path, started + sum(timeout), idempotent)
            ms = (time.monotonic() - started) * 1000
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if not isinstance(data, dict):
                log.warning("wecom %s %s answered a body that is not a JSON object in %.0f ms", method, path, ms)
                raise WeComNetworkError(f"{path}: the answer is not a JSON object", path,
                                        side_effect_possible=not idempotent)  # fmt: skip
        finally:
            resp.close()
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


def _read_body(resp: requests.Response, path: str, deadline: float, idempotent: bool) -> bytes:
    """The answer's body, read before ``deadline`` (monotonic) and within :data:`MAX_ANSWER_BYTES`.

    Each read returns what the socket has (``read1``), so the deadline is checked at least once per
    read timeout however slowly the server sends.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = resp.raw.read1(65536, decode_content=True)
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
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _network_error(exc, path, idempotent) from None


def _errcode(data: Mapping[str, Any]) -> int:
    """The answer's errcode; some endpoints omit it on success (§0)."""
    raw = data.get("errcode", 0)
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return -1  # a garbled errcode: treat as "system busy", which is retried a little


def _network_error(exc: requests.RequestException, path: str, idempotent: bool) -> WeComNetworkError:
    mapped = WeComNetworkError.from_exception(exc, path)
    possible = mapped.side_effect_possible and not idempotent
    return WeComNetworkError(redact(str(mapped)), path, side_effect_possible=possible)


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
    "fold_userid",
    "limit_kind",
    "redact",
    "same_userid",
    "secret_for",
]
