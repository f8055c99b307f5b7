"""Machine API for offboarding (离职处理), for the HR system.

* ``POST /api/v1/offboardings`` (scope ``offboarding:write``): a JSON object with ``userid`` or
  ``employee_id`` (工号), optional ``effective_at`` (ISO 8601 with a UTC offset; later than now →
  scheduled), ``reason`` and ``requested_by``. 201 with the offboarding when it was started, 200
  when an open one of the person answered. ``Idempotency-Key`` header: the same key with the same
  body answers the same (status and offboarding); with another body 422. The person: ``userid``
  when given; else ``employee_id`` through the imported table, then the directory field
  EMPLOYEE_ID_FIELD (services/employee_numbers.py): unknown 404 ``unknown_person``, on several
  members 409 ``ambiguous_employee_id``. Both given and the number names someone else: 400
  ``employee_id_mismatch``. The key used is recorded in the offboarding's ``detail.resolved_by``.
* ``DELETE /api/v1/offboardings/<id>`` (scope ``offboarding:write``): cancel before execution;
  409 once any chat was changed (or is being changed).
* ``GET /api/v1/offboardings/<id>`` (scope ``offboarding:read``): progress and outcome per chat.

Errors are JSON (``error``, ``message``, ``message_zh``, ``message_en``, ``request_id``); nothing
is stored when a request is refused.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask import g, jsonify, request

from wecom_plugin.domain.directory import fold
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import Offboarding
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
    userid = body.get("userid")
    if userid is not None and not isinstance(userid, str):
        return _error(400, "invalid", "userid 应为字符串", "userid must be a string")
    employee_id = body.get("employee_id")
    if employee_id is not None and not isinstance(employee_id, str):
        return _error(400, "invalid", "employee_id（工号）应为字符串", "employee_id must be a string")
    if not (userid or "").strip() and not (employee_id or "").strip():
        return _error(400, "invalid", "缺少 userid 或 employee_id（工号）", "userid or employee_id is required")
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
    resolved_by, refusal = _resolve_person((userid or "").strip(), (employee_id or "").strip())
    if refusal is not None:
        return refusal
    caller = g.api_client
    requested_by = f"api:{caller.client_name}"
    if body.get("requested_by"):
        requested_by = f"{requested_by} for {body['requested_by']}"
    try:
        started = service.start_offboarding(
            db.session,
            userid=resolved_by["userid"],
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
    if not started.replay:
        _record_key(started.offboarding_id, started.created, resolved_by)
    view = service.view(db.session, started.offboarding_id)
    db.session.commit()
    response = jsonify(view)
    response.status_code = 201 if started.created else 200
    response.headers["Location"] = f"/api/v1/offboardings/{view['id']}"
    if started.replay:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _resolve_person(userid: str, employee_id: str) -> tuple[dict[str, Any], Any]:
    """(which key names the person, None) or (_, the 4xx answer). ``userid`` wins; ``employee_id``
    (工号) goes through the imported table, then the directory field; both given must agree."""
    from flask import current_app

    from wecom_plugin.services import employee_numbers

    if not employee_id:
        return {"key": "userid", "userid": userid}, None
    field = current_app.extensions["wecom_settings"].employee_id_field
    try:
        found = employee_numbers.resolve(db.session, employee_id, field)
    except employee_numbers.Unresolved as exc:
        if userid:  # the userid decides; a number nobody is known by does not contradict it
            return {"key": "userid", "userid": userid, "employee_id": employee_id, "employee_id_resolved": False}, None
        db.session.rollback()
        where = f"、通讯录字段 {field}" if field else "；未配置 EMPLOYEE_ID_FIELD"
        zh = f"未找到工号为 {employee_id} 的人员（已导入的工号对照表{where}）"
        if exc.status != 404:
            zh = f"工号 {employee_id} 对应多名成员，请提供 userid"
        return {}, _error(exc.status, exc.code, zh, str(exc))
    if userid and fold(userid) != fold(found.userid):
        db.session.rollback()
        return {}, _error(
            400, "employee_id_mismatch",
            f"userid {userid} 与工号 {employee_id} 不是同一人（工号对应 {found.userid}）",
            f"userid {userid!r} and employee_id {employee_id!r} name different people "
            f"(the employee number is {found.userid!r}'s, by {found.via})",
        )  # fmt: skip
    key = "userid" if userid else "employee_id"
    return {"key": key, "userid": userid or found.userid, "employee_id": found.employee_id, "via": found.via}, None


def _record_key(offboarding_id: int, created: bool, resolved_by: dict[str, Any]) -> None:
    """Keep which key named the person: ``detail.resolved_by`` of a new offboarding, else on the
    trigger this request added to an existing one."""
    table = Offboarding.__table__
    detail = dict(db.session.execute(sa.select(table.c.detail).where(table.c.id == offboarding_id)).scalar() or {})
    triggers = list(detail.get("triggers") or [])
    if created:
        detail["resolved_by"] = resolved_by
    elif triggers:
        triggers[-1] = {**triggers[-1], "resolved_by": resolved_by}
        detail["triggers"] = triggers
    else:
        return
    db.session.execute(sa.update(table).where(table.c.id == offboarding_id).values(detail=detail))


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
