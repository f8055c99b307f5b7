"""Delivering an alert through its channels; one job step per channel.

Channels:

* ``log``: an ERROR line is written when the alert is raised (not here), always.
* ``webhook``: ``ALERT_WEBHOOK_URL`` receives :func:`wecom_plugin.services.alerts.webhook_body`
  as JSON. Outside WeCom on purpose: WeCom itself may be what failed.
* ``wecom``: one app message (``message/send``, text, with WeCom's duplicate check on so a retried
  delivery is not shown twice) to ``ALERT_WECOM_USERIDS``. Recipients WeCom rejected (outside the
  app's visible range, unknown) are recorded in the step's detail, not swallowed.

Each channel is a step of the ``alerts.deliver`` job, so a failing webhook is retried without
re-notifying the channels that already succeeded.
"""

from __future__ import annotations

import logging
from typing import Any

import requests

from wecom_plugin.errors import PermanentError, RetryableError
from wecom_plugin.extensions import db
from wecom_plugin.models.ops import Alert
from wecom_plugin.services.alerts import webhook_body

log = logging.getLogger("wecom_plugin.alerts")

WEBHOOK_TIMEOUT = (3.05, 10)


def deliver(ctx, alert_id: int) -> dict[str, Any]:
    alert = db.session.get(Alert, alert_id)
    if alert is None:
        return {"skipped": "alert no longer exists"}
    if alert.state != "open":
        return {"skipped": "alert already acknowledged"}
    body = webhook_body(alert)
    db.session.rollback()
    outcomes: dict[str, Any] = {}
    settings = ctx.settings
    if settings.alert_webhook_url:
        result = ctx.run_step("webhook", lambda: post_webhook(settings.alert_webhook_url, body))
        outcomes["webhook"] = result.outcome.value
    if settings.alert_wecom_userids:
        result = ctx.run_step("wecom", lambda: send_wecom(ctx, settings.alert_wecom_userids, body))
        outcomes["wecom"] = result.outcome.value
        if result.value and result.value.get("invaliduser"):
            outcomes["wecom_rejected"] = result.value["invaliduser"]
    return outcomes


def wecom_text(body: dict[str, Any]) -> str:
    """The alert as people read it in WeCom: Chinese first, then English."""
    severity = {"critical": "严重", "error": "错误", "warning": "警告"}.get(body["severity"], body["severity"])
    lines = [
        f"【企业微信群管理插件告警 · {severity}】",
        body["title_zh"],
        body["title_en"],
        f"编号 #{body['id']} · {body['key']}",
        "处理后请确认 / acknowledge with: wecom-plugin alerts ack " + str(body["id"]) + " --by 姓名",
    ]
    return "\n".join(lines)


def send_wecom(ctx, userids: tuple[str, ...], body: dict[str, Any]) -> dict[str, Any]:
    from wecom_plugin.services.wecom import client_for
    from wecom_plugin.wecom.api import message

    with client_for(ctx.app, guard=ctx.ensure_lease) as client:
        result = message.send(
            client,
            message.text(wecom_text(body)),
            touser=list(userids),
            enable_duplicate_check=True,
            duplicate_check_interval=4 * 3600,
        )
    return {"msgid": result.msgid, "invaliduser": list(result.invaliduser)}


def post_webhook(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST the alert; 2xx is success, 4xx (but 408/429) permanent, anything else retryable."""
    try:
        response = requests.post(url, json=body, timeout=WEBHOOK_TIMEOUT)
    except requests.ConnectionError as exc:
        raise RetryableError(f"alert webhook unreachable: {exc.__class__.__name__}") from None
    except requests.Timeout as exc:
        raise RetryableError(f"alert webhook timed out: {exc.__class__.__name__}") from None
    if 200 <= response.status_code < 300:
        return {"status": response.status_code}
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise RetryableError(f"alert webhook answered HTTP {response.status_code}")
    raise PermanentError(f"alert webhook answered HTTP {response.status_code}")
