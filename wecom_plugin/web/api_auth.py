"""``@require_api_client(scope)``: authenticate a machine API request before the view runs.

Order: credentials (:func:`wecom_plugin.services.api_keys.authenticate`, database clock), then
the client's rate limit (shared by all web processes), then the scope.

* Any authentication failure: 401 with the same body whatever failed, one audit row
  (action ``api.auth``, outcome ``denied``) whose reason names the failed check. The actor is
  ``api:<client name>`` only when the caller proved it holds the key's secret, else
  ``api:unknown``.
* More than :data:`AUTH_FAILURES_PER_MINUTE` failures from one client address in a minute: 429
  with ``Retry-After``, logged but no longer audited, so a brute-force attempt neither gets more
  guesses nor grows the append-only audit log without bound.
* Over the rate limit: 429 with ``Retry-After`` (logged, not audited: a flood must not flood the
  audit log too).
* Missing scope: 403 and one audit row.

On success the view finds the caller in ``g.api_client`` (an
:class:`~wecom_plugin.services.api_keys.Authenticated`); responses carry ``X-RateLimit-Limit``
and ``X-RateLimit-Remaining``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from flask import current_app, g, make_response, request

from wecom_plugin.context import escape_log_text
from wecom_plugin.extensions import db
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.services import audit, rate_limit
from wecom_plugin.services.api_keys import AuthenticationFailed, authenticate
from wecom_plugin.web import error_response

log = logging.getLogger("wecom_plugin.api_auth")

AUDIT_ACTION = "api.auth"
# Failed authentications per client address per minute that are answered 401 and audited.
AUTH_FAILURES_PER_MINUTE = 20


def require_api_client(scope: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a view so only a valid API key (with ``scope``, when given) reaches it."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any):
            settings = current_app.extensions["wecom_settings"]
            session = db.session
            now = db_now(session)
            try:
                caller = authenticate(
                    session,
                    method=request.method,
                    path=request.path,
                    headers=request.headers,
                    body=request.get_data(cache=True),
                    now=now,
                    max_skew=settings.api_hmac_max_skew,
                    encryption_key=settings.encryption_key,
                )
            except AuthenticationFailed as failure:
                session.rollback()
                failures = rate_limit.hit(
                    db.engine, f"auth-failures:{request.remote_addr or '-'}", limit=AUTH_FAILURES_PER_MINUTE, now=now
                )
                if not failures.allowed:
                    log.warning(
                        "api auth failures from %s over %d/minute; answering 429 (request %s)",
                        escape_log_text(request.remote_addr or "-"),
                        AUTH_FAILURES_PER_MINUTE,
                        g.get("request_id"),
                    )
                    response = error_response(429)
                    response.headers["Retry-After"] = str(failures.retry_after)
                    return response
                _deny(
                    f"api:{failure.client_name}" if failure.client_name else "api:unknown",
                    failure.key_id,
                    failure.reason,
                )
                response = error_response(401)
                response.headers["WWW-Authenticate"] = 'Bearer realm="wecom-plugin"'
                return response
            # End this transaction (it holds SQLite's write lock) before the limiter's own one.
            session.commit()

            decision = rate_limit.hit(
                db.engine, f"api-client:{caller.client_id}", limit=settings.api_rate_limit_per_minute, now=now
            )
            if not decision.allowed:
                log.warning(
                    "api rate limit: client %s over %d requests/minute (request %s)",
                    escape_log_text(caller.client_name),
                    decision.limit,
                    g.get("request_id"),
                )
                response = error_response(429)
                response.headers["Retry-After"] = str(decision.retry_after)
                return _with_limit_headers(response, decision)

            if scope is not None and not caller.has_scope(scope):
                _deny(f"api:{caller.client_name}", caller.key_id, f"missing scope {scope!r}")
                return _with_limit_headers(error_response(403), decision)

            g.api_client = caller
            return _with_limit_headers(make_response(view(*args, **kwargs)), decision)

        return wrapper

    return decorator


def _deny(actor: str, key_id: str | None, reason: str) -> None:
    """One audit row (committed now) and one log line; neither ever contains a secret."""
    audit.record(
        actor,
        AUDIT_ACTION,
        target=f"key:{key_id}" if key_id else None,
        reason=reason,
        outcome="denied",
        detail={"method": request.method, "path": request.path[:200]},
    )
    db.session.commit()
    log.info(
        "api request denied: %s; actor %s, key %s (request %s)",
        reason,
        escape_log_text(actor),
        key_id or "-",
        g.get("request_id"),
    )


def _with_limit_headers(response, decision: rate_limit.RateDecision):
    response.headers["X-RateLimit-Limit"] = str(decision.limit)
    response.headers["X-RateLimit-Remaining"] = str(decision.remaining)
    return response
