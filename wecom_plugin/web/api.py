"""Machine API (HR system, scripts): authenticated with per-client keys. Endpoints grow per issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")
