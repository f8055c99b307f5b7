"""The TokenStore contract, on the in-memory store (the database store passes the same tests in
tests/services/test_wecom_tokens.py)."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from wecom_plugin.wecom.token_store import (
    EARLY_REFRESH_SECONDS,
    MemoryTokenStore,
    TokenStore,
    is_fresh,
    margin,
    token_key,
)


class Fetcher:
    def __init__(self, expires_in: float = 7200, delay: float = 0.0):
        self.calls = 0
        self.expires_in = expires_in
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        return f"token-{n}", self.expires_in


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


def test_the_refresh_margin_is_five_minutes_or_half_the_lifetime():
    assert EARLY_REFRESH_SECONDS == 300
    assert margin(7200) == 300
    assert margin(200) == 100
    assert margin(-5) == 0
    assert is_fresh(now=7200 - 301, expires_at=7200, fetched_at=0)
    assert not is_fresh(now=7200 - 300, expires_at=7200, fetched_at=0)


def test_keys_hash_corp_and_secret():
    assert token_key("ww1", "s") == hashlib.sha256(b"ww1:s").hexdigest()
    assert len(token_key("ww1", "s" * 1000)) == 64


def test_memory_store_follows_the_contract():
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    assert isinstance(store, TokenStore)
    fetch = Fetcher()
    assert store.get("k") is None
    assert store.refresh("k", fetch) == "token-1"
    assert store.refresh("k", fetch) == "token-1"  # fresh: no fetch
    assert store.get("k") == "token-1"
    clock.now += 7200 - 300  # the last 5 minutes
    assert store.get("k") is None
    assert store.refresh("k", fetch) == "token-2"
    assert (fetch.calls, store.fetches) == (2, 2)
    assert "token-2" not in repr(store)


def test_stale_forces_a_fetch_only_while_the_stale_token_is_stored():
    store = MemoryTokenStore()
    fetch = Fetcher()
    first = store.refresh("k", fetch)
    assert store.refresh("k", fetch, stale=first) == "token-2"
    assert store.refresh("k", fetch, stale=first) == "token-2"  # someone already replaced it
    assert fetch.calls == 2


def test_a_failed_fetch_stores_nothing():
    store = MemoryTokenStore()

    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.refresh("k", broken)
    assert store.get("k") is None


def test_keys_are_independent_and_expire_forgets():
    store = MemoryTokenStore()
    fetch = Fetcher()
    store.refresh("a", fetch)
    store.refresh("b", fetch)
    assert (store.get("a"), store.get("b")) == ("token-1", "token-2")
    store.expire("a")
    assert store.get("a") is None and store.get("b") == "token-2"
    store.expire()
    assert store.get("b") is None


def test_concurrent_cold_refreshes_fetch_once():
    store = MemoryTokenStore()
    fetch = Fetcher(delay=0.05)
    start = threading.Barrier(8)
    results = []

    def worker():
        start.wait()
        results.append(store.get("k") or store.refresh("k", fetch))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["token-1"] * 8 and fetch.calls == 1
