"""The WeCom access token shared by every process: a :class:`~wecom_plugin.wecom.token_store.TokenStore`
on the ``wecom_token`` table.

One row per (corp id, secret), keyed by :func:`~wecom_plugin.wecom.token_store.token_key` (a hash, never
the secret). The token is stored Fernet-encrypted with ``WECOM_PLUGIN_ENCRYPTION_KEY`` together with its
expiry, which is measured by the **database clock** (:mod:`wecom_plugin.models.dbtime`) so hosts with
skewed clocks agree on when to refresh.

The refresh lock:

* PostgreSQL: the row is inserted if missing (``ON CONFLICT DO NOTHING``), then locked with
  ``SELECT ... FOR UPDATE``; a second process waits there and, once the first commits, re-reads the row
  and finds the fresh token.
* SQLite: every transaction of this engine starts with ``BEGIN IMMEDIATE`` (:mod:`wecom_plugin.database`),
  which takes the database's single write lock, so refreshes are serialized the same way.

The lock is held across the one ``gettoken`` call (bounded by the client's timeouts): that is what makes
N cold processes fetch once. It is the store's own short transaction on the engine — never
``db.session``, never open while the caller does anything else. A process also keeps a memo of the
token while it is comfortably valid, so most calls need no database read at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import lru_cache

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from wecom_plugin.models.base import insert_for
from wecom_plugin.models.dbtime import db_now, sql_now
from wecom_plugin.models.tokens import WeComToken
from wecom_plugin.wecom.token_store import EARLY_REFRESH_SECONDS, Fetch, is_fresh, margin, same_token

log = logging.getLogger("wecom_plugin.services.wecom_tokens")

TABLE = WeComToken.__table__


class DbTokenStore:
    """The database :class:`~wecom_plugin.wecom.token_store.TokenStore` (SQLite and PostgreSQL).

    Args:
        engine: the application's engine (``db.engine``); the store uses its own short transactions.
        encryption_key: ``settings.encryption_key`` (Fernet).
        memo: keep a per-process copy of fresh tokens (skips the database read until the refresh margin).
    """

    def __init__(self, engine: sa.Engine, encryption_key: bytes, *, memo: bool = True) -> None:
        self._engine = engine
        self._fernet = _fernet(encryption_key)
        self._use_memo = memo
        self._memo: dict[str, tuple[str, float]] = {}  # key -> (token, time.monotonic() it stays fresh until)
        self._lock = threading.Lock()  # guards the memo
        self._refresh_lock = threading.Lock()

    def __repr__(self) -> str:  # never show tokens
        return f"<DbTokenStore {self._engine.url.render_as_string(hide_password=True)}>"

    # --- the protocol ---------------------------------------------------------------------------
    def get(self, key: str, *, early: float = EARLY_REFRESH_SECONDS) -> str | None:
        token = self._memo_get(key)
        if token is not None:
            return token
        with self._engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")  # a read: no write lock on SQLite
            row = conn.execute(
                sa.select(TABLE.c.token_encrypted, TABLE.c.expires_at, TABLE.c.fetched_at, sql_now()).where(
                    TABLE.c.key == key
                )
            ).first()
        if row is None:
            return None
        token_encrypted, expires_at, fetched_at, now = row
        token = self._decrypt(token_encrypted, key)
        if token is None or not _fresh(now, expires_at, fetched_at, early):
            return None
        self._memo_put(key, token, now, expires_at, fetched_at, early)
        return token

    def refresh(self, key: str, fetch: Fetch, *, early: float = EARLY_REFRESH_SECONDS, stale: str | None = None) -> str:
        if stale is not None:
            self._memo_drop(key, stale)
        if self._engine.dialect.name == "sqlite":
            with self._sqlite_refresh_lock(key):
                return self._refresh_without_transaction(key, fetch, early, stale)
        with self._engine.begin() as conn:
            conn.execute(
                insert_for(conn, TABLE).values(key=key, fetch_count=0).on_conflict_do_nothing(index_elements=["key"])
            )
            row = conn.execute(
                sa.select(TABLE.c.token_encrypted, TABLE.c.expires_at, TABLE.c.fetched_at)
                .where(TABLE.c.key == key)
                .with_for_update()  # PostgreSQL: the row lock every refresher queues on
            ).one()
            now = db_now(conn)  # read after the lock was granted
            current = self._decrypt(row.token_encrypted, key)
            fresh = current is not None and _fresh(now, row.expires_at, row.fetched_at, early)
            if fresh and current is not None and not same_token(current, stale):
                self._memo_put(key, current, now, row.expires_at, row.fetched_at, early)
                return current  # another process refreshed it while we waited
            token, expires_in = fetch()
            expires_at = now + timedelta(seconds=float(expires_in))
            conn.execute(
                sa.update(TABLE)
                .where(TABLE.c.key == key)
                .values(
                    token_encrypted=self._fernet.encrypt(token.encode()),
                    expires_at=expires_at,
                    fetched_at=now,
                    fetch_count=TABLE.c.fetch_count + 1,
                )
            )
        self._memo_put(key, token, now, expires_at, now, early)
        log.info("wecom access token refreshed (key %s..., valid %.0f s)", key[:8], float(expires_in))
        return token

    def _refresh_without_transaction(self, key: str, fetch: Fetch, early: float, stale: str | None) -> str:
        """SQLite: a transaction there holds the database's only write lock, and every other writer
        (callbacks being stored, job claims) would wait for the whole gettoken call. So refreshers
        queue on a file lock instead, and the database is touched only in two short transactions."""
        with self._engine.connect() as conn:
            conn = conn.execution_options(sqlite_begin="DEFERRED")
            row = conn.execute(
                sa.select(TABLE.c.token_encrypted, TABLE.c.expires_at, TABLE.c.fetched_at).where(TABLE.c.key == key)
            ).first()
            now = db_now(conn)
        current = self._decrypt(row.token_encrypted, key) if row is not None else None
        if (
            current is not None
            and _fresh(now, row.expires_at, row.fetched_at, early)
            and not same_token(current, stale)
        ):
            self._memo_put(key, current, now, row.expires_at, row.fetched_at, early)
            return current  # another process refreshed it while we waited for the lock
        token, expires_in = fetch()
        with self._engine.begin() as conn:
            fetched_at = db_now(conn)
            expires_at = fetched_at + timedelta(seconds=float(expires_in))
            values = {
                "token_encrypted": self._fernet.encrypt(token.encode()),
                "expires_at": expires_at,
                "fetched_at": fetched_at,
            }
            conn.execute(
                insert_for(conn, TABLE)
                .values(key=key, fetch_count=1, **values)
                .on_conflict_do_update(index_elements=["key"], set_={**values, "fetch_count": TABLE.c.fetch_count + 1})
            )
        self._memo_put(key, token, fetched_at, expires_at, fetched_at, early)
        log.info("wecom access token refreshed (key %s..., valid %.0f s)", key[:8], float(expires_in))
        return token

    @contextlib.contextmanager
    def _sqlite_refresh_lock(self, key: str) -> Iterator[None]:
        """An exclusive lock shared by every process using this SQLite file (a lock file beside it)."""
        database = self._engine.url.database
        if not database or database == ":memory:":
            with self._refresh_lock:  # one process only: a thread lock is enough
                yield
            return
        path = f"{database}.wecom-token-{key[:16]}.lock"
        with open(path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # --- helpers --------------------------------------------------------------------------------
    def forget(self, key: str | None = None) -> None:
        """Drop this process's memo (one key or all); the next :meth:`get` reads the database."""
        with self._lock:
            if key is None:
                self._memo.clear()
            else:
                self._memo.pop(key, None)

    def _decrypt(self, token_encrypted: bytes | None, key: str) -> str | None:
        if not token_encrypted:
            return None
        try:
            return self._fernet.decrypt(token_encrypted).decode()
        except InvalidToken:
            # WECOM_PLUGIN_ENCRYPTION_KEY changed: the stored token is unreadable; the refresh replaces it.
            log.warning("stored wecom token (key %s...) cannot be decrypted; it will be fetched again", key[:8])
            return None

    def _memo_get(self, key: str) -> str | None:
        if not self._use_memo:
            return None
        with self._lock:
            entry = self._memo.get(key)
            if entry is None:
                return None
            token, until = entry
            if time.monotonic() < until:
                return token
            del self._memo[key]
            return None

    def _memo_put(
        self, key: str, token: str, now: datetime, expires_at: datetime, fetched_at: datetime | None, early: float
    ) -> None:
        if not self._use_memo:
            return
        fetched = fetched_at or now
        lifetime = (expires_at - fetched).total_seconds()
        remaining = (expires_at - now).total_seconds() - margin(lifetime, early)
        if remaining <= 0:
            return
        with self._lock:
            self._memo[key] = (token, time.monotonic() + remaining)

    def _memo_drop(self, key: str, token: str) -> None:
        with self._lock:
            entry = self._memo.get(key)
            if entry is not None and same_token(entry[0], token):
                del self._memo[key]


def _fresh(now: datetime, expires_at: datetime | None, fetched_at: datetime | None, early: float) -> bool:
    if expires_at is None:
        return False
    fetched = fetched_at or now
    return is_fresh(now.timestamp(), expires_at.timestamp(), fetched.timestamp(), early)


@lru_cache(maxsize=4)
def _fernet(encryption_key: bytes) -> Fernet:
    return Fernet(encryption_key)
