"""WeCom's two receivers (contract §7): thin adapters over :mod:`wecom_plugin.wecom.callbacks`.

* ``/wecom/callback``: the app's receiver (``WECOM_CALLBACK_*``): messages to the app, card clicks.
* ``/wecom/callback/contacts``: the contact-sync assistant's receiver (``WECOM_CONTACT_CALLBACK_*``),
  where WeCom sends directory changes.

GET answers the URL check with the decrypted ``echostr``, byte for byte. POST verifies, stores the
callback in the inbox and answers 200 with an empty body at once; a duplicate answers 200 too.
Every rejection (bad signature, stale, undecryptable, wrong corp, junk) gets the same 400 and body,
so nothing about the keys leaks; bodies over 64 KiB get 413 before any parsing.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, abort, current_app, request

from wecom_plugin.context import escape_log_text
from wecom_plugin.extensions import db
from wecom_plugin.services import callbacks as service
from wecom_plugin.wecom.callbacks import CallbackRejected, open_callback, verify_url

log = logging.getLogger("wecom_plugin.callback")

bp = Blueprint("callback", __name__, url_prefix="/wecom")
REJECTED_BODY = b"invalid callback"


def _keys(receiver: str):
    settings = current_app.extensions["wecom_settings"]
    keys = settings.callback_keys if receiver == "app" else settings.contact_callback_keys
    if not keys:
        abort(404)  # this receiver is not configured
    return settings, keys


def _receive(receiver: str):
    settings, keys = _keys(receiver)
    query = request.args.to_dict()
    try:
        if request.method == "GET":
            plain = verify_url(query, keys, settings.corp_id, time.time(), settings.callback_max_skew)
            return Response(plain, status=200, mimetype="text/plain")
        callback = open_callback(
            query, request.get_data(cache=False), keys, settings.corp_id, time.time(), settings.callback_max_skew
        )
    except CallbackRejected as rejected:
        # One log line for people (the reason), one answer for the sender (always the same).
        log.warning(
            "rejected %s callback from %s: %s",
            receiver,
            escape_log_text(request.remote_addr or "-"),
            rejected.reason,
        )
        return Response(REJECTED_BODY, status=400, mimetype="text/plain")
    if callback.key_index > 0:
        log.warning("%s callback verified with the second key pair: finish the key rotation", receiver)
    service.store(db.session, receiver, callback)
    return Response(b"", status=200, mimetype="text/plain")


@bp.route("/callback", methods=["GET", "POST"])
def app_receiver():
    return _receive("app")


@bp.route("/callback/contacts", methods=["GET", "POST"])
def contacts_receiver():
    return _receive("contacts")
