"""Machine API (HR system, scripts): authenticated with per-client keys. Endpoints grow per issue.

Every view is wrapped in :func:`wecom_plugin.web.api_auth.require_api_client`; see
:mod:`wecom_plugin.services.api_keys` for the bearer and HMAC schemes.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, g, jsonify, request

from wecom_plugin.web.api_auth import require_api_client

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.get("/whoami")
@require_api_client()
def whoami():
    """Who the credentials belong to: integrators call this to test their key (any scope)."""
    caller = g.api_client
    return jsonify(client=caller.client_name, scopes=sorted(caller.scopes), key_id=caller.key_id, auth=caller.scheme)


@bp.post("/echo")
@require_api_client("test")
def echo():
    """The SHA-256 of the body exactly as received (scope ``test``): checks HMAC-over-body signing."""
    body = request.get_data(cache=True)
    return jsonify(sha256=hashlib.sha256(body).hexdigest(), length=len(body))
