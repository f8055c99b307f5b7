"""Machine API for the group registry: request a governed group, read one.

* ``POST /api/v1/groups`` (scope ``groups:request``): a JSON object with ``name``, ``purpose``,
  ``content_scope``, ``department_id``, ``requested_by``, ``owner``, ``admins``, ``rule``,
  ``confidentiality``, ``quiet_windows``, ``review_date``. 201 with the group; 400 with every
  problem (``problems``: path, zh, en) for bad input; nothing is stored then.
* ``GET /api/v1/groups/<id>`` (scope ``groups:read``): the group.

Routes live on the ``/api/v1`` blueprint (:mod:`wecom_plugin.web.api`), behind
:func:`~wecom_plugin.web.api_auth.require_api_client`.
"""

from __future__ import annotations

from typing import Any

from flask import g, jsonify

from wecom_plugin.extensions import db
from wecom_plugin.web.api import bp
from wecom_plugin.web.api_auth import require_api_client
from wecom_plugin.web.json_body import BodyError, json_object

SCOPE_REQUEST = "groups:request"
SCOPE_READ = "groups:read"
REQUEST_FIELDS = (
    "name", "purpose", "content_scope", "department_id", "requested_by", "owner", "admins", "rule",
    "confidentiality", "quiet_windows", "review_date",
)  # fmt: skip
REQUIRED = ("name", "purpose", "requested_by", "owner")


def _bad_request(problems: list[dict[str, Any]], message: str):
    response = jsonify(
        error="invalid",
        message=message,
        message_zh="请求无效",
        message_en="bad request",
        problems=problems,
        request_id=g.get("request_id"),
    )
    response.status_code = 400
    return response


def _problem(path: str, zh: str, en: str) -> dict[str, str]:
    return {"path": path, "zh": zh, "en": en, "severity": "error"}


@bp.post("/groups")
@require_api_client(SCOPE_REQUEST)
def request_group():
    """Request a governed group for approval (备案申请)."""
    from wecom_plugin.services import group_registry as registry

    try:
        body = json_object()
    except BodyError as exc:
        return _bad_request([_problem("", exc.zh, exc.en)], f"{exc.zh} / {exc.en}")
    problems = [_problem(str(k), f"未知字段“{k}”", f"unknown field {k!r}") for k in body if k not in REQUEST_FIELDS]
    problems += [_problem(k, f"缺少字段“{k}”", f"{k} is required") for k in REQUIRED if body.get(k) in (None, "")]
    if problems:
        return _bad_request(problems, "; ".join(f"{p['path']}: {p['zh']} / {p['en']}" for p in problems))
    caller = g.api_client
    try:
        group = registry.request_group(
            db.session,
            name=body["name"],
            purpose=body["purpose"],
            content_scope=body.get("content_scope") or "",
            department_id=body.get("department_id"),
            requested_by=body["requested_by"],
            owner=body["owner"],
            admins=body.get("admins") or [],
            rule_doc=body.get("rule"),
            confidentiality=body.get("confidentiality") or "normal",
            quiet_windows=body.get("quiet_windows") or [],
            review_date=body.get("review_date"),
            actor=f"api:{caller.client_name}",
        )
    except registry.RegistryError as exc:
        db.session.rollback()
        return _bad_request([registry.problem_dict(p) for p in exc.problems], str(exc))
    except (TypeError, AttributeError):
        # A value of a shape nothing above expected (e.g. a number where a list of userids goes).
        db.session.rollback()
        problem = _problem("", "字段类型不正确", "a field has the wrong type")
        return _bad_request([problem], "字段类型不正确 / a field has the wrong type")
    view = registry.view(group)
    db.session.commit()
    response = jsonify(view)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/groups/{view['id']}"
    return response


@bp.get("/groups/<int:group_id>")
@require_api_client(SCOPE_READ)
def get_group(group_id: int):
    """One registered group."""
    from wecom_plugin.services import group_registry as registry
    from wecom_plugin.web import error_response

    try:
        view = registry.view(registry.get_group(db.session, group_id))
    except registry.RegistryError:
        db.session.rollback()
        return error_response(404)
    db.session.commit()
    return jsonify(view)
