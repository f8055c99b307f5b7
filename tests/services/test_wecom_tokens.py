"""The database token store (SQLite and PostgreSQL) and the client factory.

The cross-process guarantee is tested with real processes against the sandbox tenant: eight processes
with a cold cache make exactly one ``gettoken`` between them.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support.client_procs import client_env, release_and_collect, start_many
from tests.support.threads import run_threads
from wecom_plugin.errors import ConfigurationError
from wecom_plugin.extensions import db
from wecom_plugin.models.dbtime import db_now, sql_now
from wecom_plugin.models.tokens import WeComToken
from wecom_plugin.services.wecom import budget_for, client_for, token_store_for
from wecom_plugin.services.wecom_tokens import DbTokenStore
from wecom_plugin.wecom.api import department
from wecom_plugin.wecom.client import WeComClient
from wecom_plugin.wecom.token_store import TokenStore, token_key

TOKEN = WeComToken.__table__
KEY = token_key("wwcorp", "app-secret")


class Fetcher:
    """A fetch() that counts its calls and hands out numbered tokens."""

    def __init__(self, expires_in: float = 7200, delay: float = 0.0):
        self.calls = 0
        self.expires_in = expires_in
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self) -> tuple[str, float]:
        with self._lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.delay)
        return f"token-{n}", self.expires_in


@pytest.fixture
def store(app):
    with app.app_context():
        engine = db.engine
    return DbTokenStore(engine, app.extensions["wecom_settings"].encryption_key)


def _row(app):
    with app.app_context():
        return db.session.execute(sa.select(TOKEN).where(TOKEN.c.key == KEY)).one()


def test_it_satisfies_the_token_store_protocol(store):
    assert isinstance(store, TokenStore)
    store.refresh(KEY, Fetcher())
    assert "token-1" not in repr(store)


def test_a_cold_store_has_nothing_and_a_refresh_fetches_once_and_stores_encrypted(app, store):
    fetch = Fetcher()
    assert store.get(KEY) is None
    assert store.refresh(KEY, fetch) == "token-1"
    assert store.get(KEY) == "token-1"
    assert store.refresh(KEY, fetch) == "token-1"  # fresh and not stale: no fetch
    assert fetch.calls == 1
    row = _row(app)
    assert row.key == KEY and len(row.key) == 64
    assert b"token-1" not in row.token_encrypted
    assert row.fetch_count == 1


def test_the_key_is_a_hash_of_corp_and_secret_never_the_secret():
    assert token_key("wwcorp", "app-secret") == hashlib.sha256(b"wwcorp:app-secret").hexdigest()
    assert "app-secret" not in KEY
    assert token_key("wwcorp", "other") != KEY


def test_expiry_is_measured_by_the_database_clock(app, store):
    store.refresh(KEY, Fetcher(expires_in=7200))
    row = _row(app)
    with app.app_context():
        now = db_now(db.session)
    assert abs((row.expires_at - now).total_seconds() - 7200) < 5
    assert abs((row.fetched_at - now).total_seconds()) < 5


def test_a_stale_token_is_replaced_only_if_it_is_still_the_stored_one(store):
    fetch = Fetcher()
    first = store.refresh(KEY, fetch)
    second = store.refresh(KEY, fetch, stale=first)  # WeCom refused token-1: fetch
    assert (first, second, fetch.calls) == ("token-1", "token-2", 2)
    # Another caller still holding token-1 reports it refused: token-2 is already stored, no fetch.
    assert store.refresh(KEY, fetch, stale=first) == "token-2"
    assert fetch.calls == 2


def test_a_token_near_expiry_is_refreshed_early(app, store):
    fetch = Fetcher()
    store.refresh(KEY, fetch)
    with app.app_context():
        # fetched 7,000 s ago, 200 s left: inside the 5-minute margin
        db.session.execute(sa.update(TOKEN).values(expires_at=sql_now(200), fetched_at=sql_now(-7000)))
        db.session.commit()
    store.forget()  # the memo would otherwise answer until its own deadline
    assert store.get(KEY) is None
    assert store.refresh(KEY, fetch) == "token-2"
    assert fetch.calls == 2


def test_a_short_lived_token_is_not_refetched_on_every_call(store):
    fetch = Fetcher(expires_in=120)  # e.g. WeCom reporting the remaining lifetime of a re-issued token
    store.refresh(KEY, fetch)
    assert store.get(KEY) == "token-1"  # fresh for half its lifetime
    assert fetch.calls == 1


def test_the_memo_answers_without_the_database(app, store):
    store.refresh(KEY, Fetcher())
    with app.app_context():
        db.session.execute(sa.delete(TOKEN))
        db.session.commit()
    assert store.get(KEY) == "token-1"  # from the memo
    store.forget(KEY)
    assert store.get(KEY) is None


def test_a_token_encrypted_with_another_key_is_fetched_again(app, store):
    store.refresh(KEY, Fetcher())
    with app.app_context():
        engine = db.engine
    other = DbTokenStore(engine, base64.urlsafe_b64encode(b"k" * 32))
    fetch = Fetcher()
    assert other.get(KEY) is None
    assert other.refresh(KEY, fetch) == "token-1" and fetch.calls == 1


def test_a_failed_fetch_stores_nothing(app, store):
    def broken():
        raise RuntimeError("gettoken failed")

    with pytest.raises(RuntimeError):
        store.refresh(KEY, broken)
    with app.app_context():
        assert db.session.execute(sa.select(sa.func.count()).select_from(TOKEN)).scalar_one() == 0
    assert store.refresh(KEY, Fetcher()) == "token-1"


def test_concurrent_refreshes_fetch_once(app):
    """Eight threads, each with its own store (no shared memo), refresh a cold key at once."""
    with app.app_context():
        engine = db.engine
    key = app.extensions["wecom_settings"].encryption_key
    fetch = Fetcher(delay=0.2)
    results = []
    barrier = threading.Barrier(8)

    def worker():
        own = DbTokenStore(engine, key, memo=False)
        barrier.wait()
        results.append(own.get(KEY) or own.refresh(KEY, fetch))

    errors = run_threads(worker, 8, timeout=60)
    assert not errors, errors
    assert results == ["token-1"] * 8
    assert fetch.calls == 1


def test_eight_cold_processes_make_exactly_one_gettoken(db_url, emulator, tmp_path):
    encryption_key = base64.urlsafe_b64encode(b"e" * 32).decode()
    env = client_env(db_url, emulator, encryption_key)
    procs = start_many(8, env, tmp_path / "barrier", "token")
    results = release_and_collect(procs, tmp_path / "barrier")
    assert all(r["departments"] > 1 for r in results)
    assert len(emulator.requests(endpoint="gettoken")) == 1
    assert len(emulator.requests(endpoint="department/simplelist")) == 8
    assert all(r["errcode"] == 0 for r in emulator.requests())


# --- the factory --------------------------------------------------------------------------------
def test_client_for_builds_a_client_with_the_shared_store_and_budget(app, emulator):
    app_settings = app.extensions["wecom_settings"]
    with app.app_context():
        engine = db.engine
    from dataclasses import replace

    settings = replace(
        app_settings,
        api_base_url=emulator.url,
        corp_id=emulator.corp_id,
        app_secret=emulator.secret(),
        agent_id=1000002,
    )
    app.extensions["wecom_settings"] = settings
    calls = []
    client = client_for(app, guard=lambda: calls.append(1))
    assert isinstance(client, WeComClient)
    assert client.token_store is token_store_for(engine, settings)  # one store (and memo) per engine
    assert client.budget is not None and client.budget.allowed("appchat.update") == 900
    assert client.agent_id == 1000002 and client.base_url == emulator.url
    assert len(department.simplelist(client)) > 1
    assert calls  # the guard ran
    second = client_for(app)
    assert len(department.simplelist(second)) > 1
    assert len(emulator.requests(endpoint="gettoken")) == 1  # the second client used the stored token
    assert "secret" not in repr(client).lower()


def test_client_for_accepts_settings(app, emulator):
    from dataclasses import replace

    settings = replace(
        app.extensions["wecom_settings"], api_base_url=emulator.url, corp_id=emulator.corp_id,
        app_secret=emulator.secret(),
    )  # fmt: skip
    client = client_for(settings)
    assert len(department.simplelist(client)) > 1
    with app.app_context():
        assert db.session.execute(sa.select(sa.func.count()).select_from(TOKEN)).scalar_one() == 1


def test_client_for_the_contact_secret_needs_it_configured(app):
    with pytest.raises(ConfigurationError, match="WECOM_CONTACT_SECRET"):
        client_for(app, secret="contact")
    with pytest.raises(ValueError):
        client_for(app, secret="nonsense")


def test_budget_for_follows_the_corp_size(make_app):
    app = make_app(WECOM_CORP_SIZE="large")
    with app.app_context():
        engine = db.engine
    budget = budget_for(engine, app.extensions["wecom_settings"])
    assert budget.limit("appchat.send.corp_hour").capacity == 700_000
    assert budget.allowed("appchat.send.corp_hour") == 630_000


def test_the_store_uses_short_transactions_and_no_session(app, store):
    """Nothing stays open: after a refresh the SQLite write lock is free for another connection."""
    store.refresh(KEY, Fetcher())
    with app.app_context():
        assert not db.session().in_transaction()
        with db.engine.begin() as conn:  # would wait for busy_timeout if the store held the lock
            conn.execute(sa.update(TOKEN).values(fetch_count=TOKEN.c.fetch_count + 0))


def test_expires_at_uses_the_time_read_after_the_lock(app, store):
    store.refresh(KEY, Fetcher(expires_in=100))
    row = _row(app)
    assert row.expires_at - row.fetched_at == timedelta(seconds=100)


def test_a_guard_that_writes_to_sqlite_does_not_deadlock_with_the_refresh_lock(app, emulator):
    """ensure_lease() opens a write transaction; it runs before the store takes the (write) lock, never inside it."""
    from dataclasses import replace

    app.extensions["wecom_settings"] = replace(
        app.extensions["wecom_settings"], api_base_url=emulator.url, corp_id=emulator.corp_id,
        app_secret=emulator.secret(),
    )  # fmt: skip
    with app.app_context():
        engine = db.engine
    renewals = []

    def ensure_lease():  # what JobContext.ensure_lease does: a short write transaction on the engine
        with engine.begin() as conn:
            conn.execute(sa.update(TOKEN).values(fetch_count=TOKEN.c.fetch_count))
        renewals.append(1)

    started = time.monotonic()
    client = client_for(app, guard=ensure_lease)
    assert len(department.simplelist(client)) > 1
    assert time.monotonic() - started < 5  # a self-lock would wait for the 30 s busy timeout
    assert len(renewals) == 2  # before gettoken, before the call


def test_a_slow_gettoken_on_sqlite_does_not_hold_the_database_write_lock(make_app):
    """Other writers (callbacks being stored, job claims) must not wait for WeCom's answer."""
    import threading as _threading
    import time as _time

    import sqlalchemy as _sa

    from wecom_plugin.extensions import db as _db
    from wecom_plugin.services.wecom import token_store_for

    app = make_app(SQLITE_BUSY_TIMEOUT="10")
    settings = app.extensions["wecom_settings"]
    with app.app_context():
        engine = _db.engine
    store = token_store_for(engine, settings)
    inside = _threading.Event()

    def slow_fetch():
        inside.set()
        _time.sleep(2)
        return "TOKEN-SLOW", 7200

    refresher = _threading.Thread(target=lambda: store.refresh("k" * 64, slow_fetch))
    refresher.start()
    assert inside.wait(5)
    started = _time.monotonic()
    with engine.begin() as conn:  # an unrelated write while gettoken is in flight
        conn.execute(_sa.text("INSERT INTO rate_counter (bucket, window_start, count) VALUES ('x', 1, 1)"))
    waited = _time.monotonic() - started
    refresher.join()
    assert waited < 0.5
    assert store.get("k" * 64) == "TOKEN-SLOW"
