"""Where the WeCom access token lives: the :class:`TokenStore` protocol and an in-memory store.

WeCom wants the token cached and refreshed rarely ("不能频繁调用gettoken接口", contract §1): one token per
(corp id, secret), shared by every process, refreshed a few minutes *before* it expires and, when WeCom
refuses it early, once. The client (:mod:`wecom_plugin.wecom.client`) owns the policy; a store only keeps
the token with its expiry and provides the cross-process lock. The database store every deployed
process shares is :class:`wecom_plugin.services.wecom_tokens.DbTokenStore`; :class:`MemoryTokenStore`
serves tests and single-process tools.

Minimum contract of a store (what the client relies on):

* ``get(key, early=...)`` returns the stored token when it is *fresh*: it stays valid for longer than
  the refresh margin, ``min(early, lifetime / 2)`` seconds, by the store's clock. Otherwise ``None``.
  It never fetches and takes no lock; it may answer from a per-process memo.
* ``refresh(key, fetch, early=..., stale=...)`` runs under a lock every process sharing the store
  honours. Inside the lock it re-reads the token: if the stored one is fresh and is not ``stale`` (the
  token WeCom just refused), someone else refreshed it meanwhile and it is returned without a fetch.
  Otherwise it calls ``fetch()`` exactly once, stores ``(token, now + expires_in)`` and returns the token.
  If ``fetch`` raises, nothing is stored and the exception propagates. So N processes that find the
  token missing at once make exactly one ``gettoken``.
* Keys come from :func:`token_key`: a hash of corp id and secret, never the secret itself.
* The store never logs or displays the token.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Refresh this many seconds before the token expires (capped at half its lifetime, see :func:`margin`).
EARLY_REFRESH_SECONDS = 300.0

#: ``fetch()`` returns ``(access_token, expires_in_seconds)``.
Fetch = Callable[[], tuple[str, float]]


def token_key(corp_id: str, secret: str) -> str:
    """The store key of a (corp id, secret) pair: ``sha256(corp_id + ":" + secret)`` in hex (64 chars).

    Tokens are per secret (contract §1); the key identifies the pair without revealing the secret.
    """
    return hashlib.sha256(f"{corp_id}:{secret}".encode()).hexdigest()[:64]


def margin(lifetime: float, early: float = EARLY_REFRESH_SECONDS) -> float:
    """Seconds before expiry at which a token stops being fresh: ``min(early, lifetime / 2)``.

    The cap keeps a short-lived token (WeCom may report the remaining lifetime of a re-issued token)
    from counting as stale the moment it is fetched, which would make every call refresh.
    """
    return max(0.0, min(early, lifetime / 2.0))


def is_fresh(now: float, expires_at: float, fetched_at: float, early: float = EARLY_REFRESH_SECONDS) -> bool:
    """True while ``now`` is before ``expires_at`` minus the refresh margin (all in one clock's seconds)."""
    return now < expires_at - margin(expires_at - fetched_at, early)


def same_token(a: str | None, b: str | None) -> bool:
    """True if both are tokens and equal, compared in constant time (never ``==`` on a credential)."""
    if a is None or b is None:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@runtime_checkable
class TokenStore(Protocol):
    """Keeps one access token per key for every process that shares it (see the module docstring)."""

    def get(self, key: str, *, early: float = EARLY_REFRESH_SECONDS) -> str | None:
        """The stored token if fresh, else ``None``. No fetch, no lock."""
        ...

    def refresh(self, key: str, fetch: Fetch, *, early: float = EARLY_REFRESH_SECONDS, stale: str | None = None) -> str:
        """Under the shared lock: the stored token if fresh and not ``stale``, else ``fetch()`` once and store it."""
        ...


@dataclass
class _Entry:
    token: str
    expires_at: float
    fetched_at: float


class MemoryTokenStore:
    """A :class:`TokenStore` in this process's memory, safe across threads.

    For tests and single-process tools: processes do not share it. ``clock`` (seconds) defaults to
    ``time.time``; tests pass their own to move time. ``fetches`` counts the ``fetch()`` calls made.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.fetches = 0

    def get(self, key: str, *, early: float = EARLY_REFRESH_SECONDS) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and is_fresh(self._clock(), entry.expires_at, entry.fetched_at, early):
                return entry.token
            return None

    def refresh(self, key: str, fetch: Fetch, *, early: float = EARLY_REFRESH_SECONDS, stale: str | None = None) -> str:
        with self._lock:  # held across fetch(): the point is that only one caller fetches
            now = self._clock()
            entry = self._entries.get(key)
            fresh = entry is not None and is_fresh(now, entry.expires_at, entry.fetched_at, early)
            if entry is not None and fresh and not same_token(entry.token, stale):
                return entry.token
            token, expires_in = fetch()
            self.fetches += 1
            self._entries[key] = _Entry(token, now + float(expires_in), now)
            return token

    def expire(self, key: str | None = None) -> None:
        """Forget one token (or all): the next call fetches. For tests."""
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def __repr__(self) -> str:  # never show tokens
        return f"<MemoryTokenStore keys={len(self._entries)}>"
