"""Machine API for bulletins (通报). Every endpoint needs the scope ``bulletins``.

* ``GET /api/v1/bulletins[?state=active|paused]``: ``{"bulletins": [...]}``.
* ``POST /api/v1/bulletins``: create from a JSON bulletin document; 201 with the bulletin. Sending
  to ``@all`` or a department above BULLETIN_BROADCAST_DEPARTMENT_SIZE members also needs the scope
  ``bulletins:broadcast`` (403 otherwise). Names are unique: a repeated create is refused (400).
* ``GET /api/v1/bulletins/<id>``: the bulletin (robot keys appear only as ``key_hint``).
* ``PUT /api/v1/bulletins/<id>``: the body's top-level fields replace the stored ones, the others
  are kept; with ``version``, compare-and-set (409 when the bulletin changed meanwhile). The body of
  a ``GET`` may be edited and sent back (its read-only fields are ignored; a robot without ``key``
  keeps its key).
* ``POST /api/v1/bulletins/<id>/pause`` (optional body ``{"reason": ...}``), ``.../resume``.
* ``DELETE /api/v1/bulletins/<id>``: 204; the delivery history stays.
* ``GET /api/v1/bulletins/<id>/history?limit=20``: the latest runs with their deliveries.
* ``GET /api/v1/bulletins/<id>/preview?next=10[&from=ISO]``: the next occurrences day by day.
* ``POST /api/v1/bulletin-deliveries/<id>/resend`` (body ``{"reason": ...}``): 202 with the new
  delivery. Resending an app message of a broadcast bulletin needs ``bulletins:broadcast`` too.

Refusals answer ``{"error", "message", "message_zh", "message_en", "problems": [{path, zh, en}],
"request_id"}`` with the service's status (400, 403, 404, 409); nothing is changed then. The actor
recorded in the audit log is ``api:<client name>``.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app, g, jsonify, request

from wecom_plugin.extensions import db
from wecom_plugin.services.bulletins import BROADCAST_SCOPE, SCOPE, BulletinError
from wecom_plugin.web.api import bp
from wecom_plugin.web.api_auth import require_api_client
from wecom_plugin.web.json_body import BodyError, json_object

# Fields of a bulletin as answered that a client may send back in a PUT; they are not stored from it.
READ_ONLY = ("id", "owner", "created_at", "updated_at", "next_run_at")
ERROR_CODES = {400: "invalid", 403: "forbidden", 404: "not_found", 409: "conflict"}


def _problems(status: int, problems: list[tuple[str, str, str]]):
    """The error answer for ``problems`` ((path, zh, en) triples); the session is rolled back."""
    db.session.rollback()
    if len(problems) == 1:
        zh, en = problems[0][1], problems[0][2]
    else:
        zh, en = f"共 {len(problems)} 处问题", f"{len(problems)} problems"
    body = BulletinError(problems, status=status).as_dict()
    body.update(error=ERROR_CODES.get(status, "invalid"), message_zh=zh, message_en=en, request_id=g.get("request_id"))
    response = jsonify(body)
    response.status_code = status
    return response


def _refused(exc: BulletinError):
    return _problems(exc.status, exc.problems)


def _invalid(zh: str, en: str, path: str = ""):
    return _problems(400, [(path, zh, en)])


def _actor() -> str:
    return f"api:{g.api_client.client_name}"


def _settings() -> Any:
    return current_app.extensions["wecom_settings"]


def _body(*, optional: bool = False) -> dict[str, Any]:
    """The JSON object of the request; an empty body is ``{}`` when ``optional``."""
    if optional and not request.get_data(cache=True).strip():
        return {}
    return json_object()


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BodyError(f"参数 {name} 应为 {low}-{high} 的整数", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _save(doc: dict[str, Any], bulletin_id: int | None):
    """Create or replace; the answer, committed, or the refusal, rolled back."""
    from wecom_plugin.services import bulletins

    try:
        row = bulletins.save(
            db.session,
            doc,
            actor=_actor(),
            settings=_settings(),
            scopes=frozenset(g.api_client.scopes),
            bulletin_id=bulletin_id,
        )
        view = bulletins.view(row, db.session)
    except BulletinError as exc:
        return _refused(exc)
    except (TypeError, AttributeError):
        # A value of a shape nothing in the service expected (e.g. a number where a list goes).
        return _invalid("字段类型不正确", "a field has the wrong type")
    db.session.commit()
    return view


# --- bulletins ------------------------------------------------------------------------------------
@bp.get("/bulletins")
@require_api_client(SCOPE)
def list_bulletins():
    """Every bulletin, or those in one ``state``."""
    from wecom_plugin.services import bulletins

    state = request.args.get("state") or None
    if state is not None and state not in bulletins.STATES:
        return _invalid("state 应为 active 或 paused", "state must be active or paused", "state")
    views = [bulletins.view(row, db.session) for row in bulletins.list_bulletins(db.session, state)]
    db.session.rollback()
    return jsonify(bulletins=views)


@bp.post("/bulletins")
@require_api_client(SCOPE)
def create_bulletin():
    """Create a bulletin."""
    try:
        body = _body()
    except BodyError as exc:
        return _invalid(exc.zh, exc.en)
    if "id" in body or "version" in body:
        return _invalid("新建通报时不能指定 id 或 version", "a new bulletin takes no id or version")
    view = _save(body, None)
    if not isinstance(view, dict):
        return view
    response = jsonify(view)
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/bulletins/{view['id']}"
    return response


@bp.get("/bulletins/<int:bulletin_id>")
@require_api_client(SCOPE)
def get_bulletin(bulletin_id: int):
    """One bulletin."""
    from wecom_plugin.services import bulletins

    try:
        view = bulletins.view(bulletins.get(db.session, bulletin_id), db.session)
    except BulletinError as exc:
        return _refused(exc)
    db.session.rollback()
    return jsonify(view)


@bp.put("/bulletins/<int:bulletin_id>")
@require_api_client(SCOPE)
def replace_bulletin(bulletin_id: int):
    """Replace a bulletin's fields (compare-and-set with ``version``)."""
    try:
        body = _body()
    except BodyError as exc:
        return _invalid(exc.zh, exc.en)
    if "id" in body and body["id"] != bulletin_id:
        return _invalid(f"id 应为 {bulletin_id}", f"id must be {bulletin_id} (the bulletin of the URL)", "id")
    version = body.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        return _invalid("version 应为整数", "version must be an integer", "version")
    view = _save({k: v for k, v in body.items() if k not in READ_ONLY}, bulletin_id)
    return jsonify(view) if isinstance(view, dict) else view


def _set_state(bulletin_id: int, state: str):
    from wecom_plugin.services import bulletins

    try:
        body = _body(optional=True)
    except BodyError as exc:
        return _invalid(exc.zh, exc.en)
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        return _invalid(f"未知字段: {', '.join(unknown)}", f"unknown field(s): {', '.join(unknown)}")
    reason = body.get("reason") or ""
    if not isinstance(reason, str):
        return _invalid("reason 应为字符串", "reason must be a string", "reason")
    try:
        row = bulletins.set_state(
            db.session,
            bulletin_id,
            state,
            actor=_actor(),
            reason=reason,
            scopes=g.api_client.scopes,
            settings=_settings(),
        )
        view = bulletins.view(row, db.session)
    except BulletinError as exc:
        return _refused(exc)
    db.session.commit()
    return jsonify(view)


@bp.post("/bulletins/<int:bulletin_id>/pause")
@require_api_client(SCOPE)
def pause_bulletin(bulletin_id: int):
    """Stop sending until resumed."""
    return _set_state(bulletin_id, "paused")


@bp.post("/bulletins/<int:bulletin_id>/resume")
@require_api_client(SCOPE)
def resume_bulletin(bulletin_id: int):
    """Send again from the next occurrence (what fell in the pause is not sent)."""
    return _set_state(bulletin_id, "active")


@bp.delete("/bulletins/<int:bulletin_id>")
@require_api_client(SCOPE)
def delete_bulletin(bulletin_id: int):
    """Delete a bulletin and its schedule; its history stays."""
    from wecom_plugin.services import bulletins

    try:
        bulletins.delete(db.session, bulletin_id, actor=_actor())
    except BulletinError as exc:
        return _refused(exc)
    db.session.commit()
    return "", 204


@bp.get("/bulletins/<int:bulletin_id>/history")
@require_api_client(SCOPE)
def bulletin_history(bulletin_id: int):
    """The latest runs, newest first, each with its deliveries."""
    from wecom_plugin.services import bulletins

    try:
        limit = _int_arg("limit", 20, 1, 500)
    except BodyError as exc:
        return _invalid(exc.zh, exc.en, "limit")
    try:
        runs = bulletins.history(db.session, bulletin_id, limit=limit)
    except BulletinError as exc:
        return _refused(exc)
    db.session.rollback()
    return jsonify(bulletin_id=bulletin_id, runs=runs)


@bp.get("/bulletins/<int:bulletin_id>/preview")
@require_api_client(SCOPE)
def bulletin_preview(bulletin_id: int):
    """The next occurrences day by day, with the reasons and the rendered messages."""
    from wecom_plugin.services import bulletins

    try:
        count = _int_arg("next", 10, 1, 100)
    except BodyError as exc:
        return _invalid(exc.zh, exc.en, "next")
    try:
        row = bulletins.get(db.session, bulletin_id)
        after = bulletins.preview_start(request.args.get("from"), ZoneInfo(row.timezone))
        result = bulletins.preview(db.session, bulletin_id, settings=_settings(), count=count, after=after)
    except BulletinError as exc:
        return _refused(exc)
    except BodyError as exc:
        return _invalid(exc.zh, exc.en, "from")
    db.session.rollback()
    return jsonify(result)


# --- deliveries -----------------------------------------------------------------------------------
@bp.post("/bulletin-deliveries/<int:delivery_id>/resend")
@require_api_client(SCOPE)
def resend_delivery(delivery_id: int):
    """Send again a delivery whose outcome was unknown, or that failed or was missed."""
    from wecom_plugin.services import bulletin_delivery, bulletins

    try:
        body = _body()
    except BodyError as exc:
        return _invalid(exc.zh, exc.en)
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        return _invalid(f"未知字段: {', '.join(unknown)}", f"unknown field(s): {', '.join(unknown)}")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        return _invalid("重发需要说明原因（reason）", "a resend needs a reason", "reason")
    refusal = _broadcast_check(delivery_id)
    if refusal is not None:
        return refusal
    try:
        new = bulletin_delivery.resend(db.session, delivery_id, actor=_actor(), reason=reason)
        view = bulletins.delivery_view(new)
    except BulletinError as exc:
        return _refused(exc)
    db.session.commit()
    response = jsonify(view)
    response.status_code = 202
    return response


def _broadcast_check(delivery_id: int):
    """A resent app message reaches what the bulletin's targets reach: a broadcast needs its scope."""
    from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery
    from wecom_plugin.services import bulletins

    if BROADCAST_SCOPE in g.api_client.scopes or not 0 < delivery_id < 2**62:
        return None
    delivery = db.session.get(BulletinDelivery, delivery_id)
    if delivery is None or not delivery.target.startswith("message:"):
        return None
    row = db.session.get(Bulletin, delivery.bulletin_id)
    if row is None or bulletins.required_scope(db.session, row.targets, _settings()) != BROADCAST_SCOPE:
        return None
    return _problems(
        403,
        [("", f"重发发给 @all 或大部门的消息需要 API 权限 {BROADCAST_SCOPE}",
          f"resending a message to @all or a large department needs the scope {BROADCAST_SCOPE}")],
    )  # fmt: skip
