"""Machine API for offboarding (离职处理), for the HR system.

* ``POST /api/v1/offboardings`` (scope ``offboarding:write``): a JSON object with ``userid``,
  optional ``effective_at`` (ISO 8601 with a UTC offset; later than now → scheduled), ``reason``
  and ``requested_by``. 201 with the offboarding when it was started, 200 when an open one of the
  person answered. ``Idempotency-Key`` header: the same key with the same body answers the same
  (status and offboarding); with another body 422. ``employee_id`` is refused (400): the directory
  mirror keeps no employee number and no mapping table is configured.
* ``DELETE /api/v1/offboardings/<id>`` (scope ``offboarding:write``): cancel before execution;
  409 once any chat was changed (or is being changed).
* ``GET /api/v1/offboardings/<id>`` (scope ``offboarding:read``): progress and outcome per chat.

Errors are JSON (``error``, ``message``, ``message_zh``, ``message_en``, ``request_id``); nothing
is stored when a request is refused.
"""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, request

from wecom_plugin.extensions import db
from wecom_plugin.web.api import bp
from wecom_plugin.web.api_auth import require_api_client
from wecom_plugin.web.json_body import BodyError, json_object

SCOPE_WRITE = "offboarding:write"
SCOPE_READ = "offboarding:read"
FIELDS = ("userid", "employee_id", "effective_at", "reason", "requested_by")


def _error(status: int, code: str, zh: str, en: str):
    response = jsonify(error=code, message=f"{zh} / {en}", message_zh=zh, message_en=en, request_id=g.get("request_id"))
    response.status_code = status
    return response


def _refused(exc: Any):
    db.session.rollback()
    zh = {
        404: "未找到该人员或离职处理",
        409: "已开始执行，无法取消",
        422: "幂等键已用于不同的请求",
    }.get(exc.status, "请求无效")
    return _error(exc.status, exc.code, zh, str(exc))


@bp.post("/offboardings")
@require_api_client(SCOPE_WRITE)
def start_offboarding():
    """Start an offboarding (HR)."""
    from wecom_plugin.services import offboarding as service

    try:
        body = json_object()
    except BodyError as exc:
        return _error(400, "invalid", exc.zh, exc.en)
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        return _error(400, "invalid", f"未知字段：{', '.join(unknown)}", f"unknown field(s): {', '.join(unknown)}")
    if body.get("employee_id") not in (None, "") and not body.get("userid"):
        return _error(
            400, "employee_id_unsupported",
            "不支持按工号处理：通讯录镜像不保存工号，也未配置工号对照表；请提供 userid",
            "employee_id is not supported: the directory mirror keeps no employee number and no mapping "
            "table is configured; send userid",
        )  # fmt: skip
    userid = body.get("userid")
    if not isinstance(userid, str) or not userid.strip():
        return _error(400, "invalid", "缺少 userid", "userid is required (a string)")
    for name in ("reason", "requested_by"):
        if body.get(name) is not None and not isinstance(body[name], str):
            return _error(400, "invalid", f"{name} 应为字符串", f"{name} must be a string")
    effective_at = None
    if body.get("effective_at") not in (None, ""):
        try:
            effective_at = service.parse_effective_at(body["effective_at"])
        except ValueError as exc:
            return _error(400, "invalid", "effective_at 格式不正确（ISO 8601，带时区）", str(exc))
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key.strip()) <= 255 and key.isprintable()):
        return _error(
            400,
            "invalid",
            "Idempotency-Key 应为 1–255 个可打印字符",
            "Idempotency-Key must be 1 to 255 printable characters",
        )
    caller = g.api_client
    requested_by = f"api:{caller.client_name}"
    if body.get("requested_by"):
        requested_by = f"{requested_by} for {body['requested_by']}"
    try:
        started = service.start_offboarding(
            db.session,
            userid=userid.strip(),
            source="hr",
            effective_at=effective_at,
            client_id=caller.client_id,
            idempotency_key=key.strip() if key else None,
            requested_by=requested_by,
            reason=body.get("reason"),
            body_hash=service.request_hash(body),
        )
    except service.OffboardingError as exc:
        return _refused(exc)
    assert started.offboarding_id is not None
    view = service.view(db.session, started.offboarding_id)
    db.session.commit()
    response = jsonify(view)
    response.status_code = 201 if started.created else 200
    response.headers["Location"] = f"/api/v1/offboardings/{view['id']}"
    if started.replay:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.delete("/offboardings/<int:offboarding_id>")
@require_api_client(SCOPE_WRITE)
def cancel_offboarding(offboarding_id: int):
    """Cancel an offboarding before it runs."""
    from wecom_plugin.services import offboarding as service

    try:
        service.cancel(db.session, offboarding_id, f"api:{g.api_client.client_name}", request.args.get("reason"))
    except service.OffboardingError as exc:
        return _refused(exc)
    view = service.status(db.session, offboarding_id)
    db.session.commit()
    return jsonify(view)


@bp.get("/offboardings/<int:offboarding_id>")
@require_api_client(SCOPE_READ)
def get_offboarding(offboarding_id: int):
    """Progress and outcome of one offboarding, per chat."""
    from wecom_plugin.services import offboarding as service

    view = service.status(db.session, offboarding_id)
    if view is None:
        db.session.rollback()
        return _error(404, "not_found", "未找到该离职处理", f"no offboarding #{offboarding_id}")
    db.session.commit()
    return jsonify(view)
