"""Delivery over HTTP: blueprints translate HTTP to service calls and back, nothing more."""

from __future__ import annotations

import re

from flask import Flask, abort, g, jsonify, request
from werkzeug.exceptions import HTTPException

from wecom_plugin.context import _request_id, new_request_id

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

# Bilingual messages for the errors a client can cause; never a traceback.
ERROR_MESSAGES = {
    400: ("请求无效", "bad request"),
    401: ("未认证", "unauthorized"),
    403: ("无权限", "forbidden"),
    404: ("未找到", "not found"),
    405: ("方法不允许", "method not allowed"),
    409: ("冲突", "conflict"),
    413: ("请求体过大", "request body too large"),
    415: ("不支持的媒体类型", "unsupported media type"),
    422: ("无法处理的请求", "unprocessable request"),
    429: ("请求过于频繁", "too many requests"),
    500: ("服务器内部错误", "internal server error"),
    503: ("服务暂不可用", "service unavailable"),
}


def init_app(app: Flask) -> None:
    from wecom_plugin.web import api, api_bulletins, api_groups, api_offboarding, callback, health  # noqa: F401 - routes on api.bp

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(callback.bp)

    @app.before_request
    def _assign_request_id() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID_RE.match(incoming) else new_request_id()
        g._request_id_token = _request_id.set(g.request_id)
        # Refuse oversized bodies up front, whether or not the view would read them.
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and (request.content_length or 0) > limit:
            abort(413)

    @app.teardown_request
    def _clear_request_id(_exc) -> None:
        token = g.pop("_request_id_token", None)
        if token is not None:
            _request_id.reset(token)

    @app.after_request
    def _security_headers(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
        response.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error_response(exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error (request %s)", g.get("request_id"))
        return error_response(500)


def error_response(status: int, detail: str | None = None):
    zh, en = ERROR_MESSAGES.get(status, ERROR_MESSAGES[500] if status >= 500 else ERROR_MESSAGES[400])
    body = {"error": en, "message_zh": zh, "message_en": en, "request_id": g.get("request_id")}
    if detail:
        body["detail"] = detail
    response = jsonify(body)
    response.status_code = status
    return response
