"""Health endpoints.

* ``/healthz``: the process is alive. No database access: a liveness probe must not restart a
  web process because the database is slow.
* ``/readyz``: this web process can store callbacks: the database answers and the schema is at
  the migration head. It does not look at workers or clocks: a dead worker must not take the web
  tier out of a load balancer, or WeCom's callbacks would be lost too.
* ``/status``: worker and clock freshness and queue depth, for people and monitoring.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from wecom_plugin.services import status as status_service

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    ready, checks = status_service.readiness()
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


@bp.get("/status")
def status():
    settings = current_app.extensions["wecom_settings"]
    return jsonify(status_service.runtime_status(settings))
