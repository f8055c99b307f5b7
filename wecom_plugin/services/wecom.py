"""Building WeCom clients wired to the shared token and budget: :func:`client_for`.

Every process (web, worker, clock, CLI) gets its clients here, so they all share the database token store
(one ``gettoken`` per expiry for the whole deployment) and the database budget (one count of what the
corp has spent against WeCom's limits)::

    client = client_for(current_app, guard=ctx.ensure_lease)
    appchat.update(client, chatid, del_user_list=[...])

A job handler passes its :meth:`JobContext.ensure_lease` as ``guard``: it runs right before every HTTP
request, so a holder that lost its lease makes no further call.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import sqlalchemy as sa

from wecom_plugin.services.budget import DbBudget
from wecom_plugin.services.wecom_tokens import DbTokenStore
from wecom_plugin.settings import Settings
from wecom_plugin.wecom.client import Guard, WeComClient

_lock = threading.Lock()
_stores: weakref.WeakKeyDictionary[sa.Engine, dict[bytes, DbTokenStore]] = weakref.WeakKeyDictionary()
_engines: dict[str, sa.Engine] = {}


def client_for(
    app_or_settings: Any,
    *,
    secret: str = "app",  # noqa: S107 - names which secret, not a secret
    guard: Guard | None = None,
    **options: Any,
) -> WeComClient:
    """A :class:`WeComClient` for the configured corp with the database token store and budget.

    Args:
        app_or_settings: the Flask app (its engine is used) or a :class:`Settings` (an engine for its
            ``DATABASE_URL`` is made once per process).
        secret: ``"app"`` (WECOM_SECRET) or ``"contact"`` (WECOM_CONTACT_SECRET, for ``user/list_id``).
        guard: called right before every HTTP request (a job's ``ensure_lease``).
        options: passed to :class:`WeComClient` (``timeout``, ``budget=None`` to skip budgets...).

    Raises:
        ConfigurationError: ``secret="contact"`` without WECOM_CONTACT_SECRET.
    """
    settings, engine = _resolve(app_or_settings)
    options.setdefault("token_store", token_store_for(engine, settings))
    options.setdefault("budget", budget_for(engine, settings))
    return WeComClient.from_settings(settings, secret=secret, guard=guard, **options)


def token_store_for(engine: sa.Engine, settings: Settings) -> DbTokenStore:
    """This process's :class:`DbTokenStore` for ``engine`` (one per engine, so its memo is shared)."""
    with _lock:
        per_engine = _stores.setdefault(engine, {})
        store = per_engine.get(settings.encryption_key)
        if store is None:
            store = per_engine[settings.encryption_key] = DbTokenStore(engine, settings.encryption_key)
        return store


def budget_for(engine: sa.Engine, settings: Settings, **options: Any) -> DbBudget:
    """The :class:`DbBudget` for ``settings``' corp size, time zone and WECOM_BUDGET_HEADROOM."""
    options.setdefault("corp_size", settings.corp_size)
    options.setdefault("headroom", settings.budget_headroom)
    options.setdefault("timezone", settings.timezone)
    return DbBudget(engine, **options)


def _resolve(app_or_settings: Any) -> tuple[Settings, sa.Engine]:
    if isinstance(app_or_settings, Settings):
        return app_or_settings, _engine_for(app_or_settings)
    settings = app_or_settings.extensions["wecom_settings"]
    from wecom_plugin.extensions import db

    with app_or_settings.app_context():
        engine = db.engine
    return settings, engine


def _engine_for(settings: Settings) -> sa.Engine:
    from wecom_plugin import database

    with _lock:
        engine = _engines.get(settings.database_url)
        if engine is None:
            engine = sa.create_engine(settings.database_url, **database.engine_options(settings))
            database.configure_engine(engine, settings)
            _engines[settings.database_url] = engine
        return engine
