"""The one-command demo: the plugin against a sandbox tenant seeded with a realistic org.

``wecom-plugin demo`` (what ``./dev start`` runs) starts the sandbox tenant in this process, builds
the app with the tenant's credentials, and runs web, worker and clock together. It grows with every
feature; today it shows:

* the sandbox tenant and its page (the org, chats, messages each member received);
* the plugin's background runtime talking to it: the alert raised at start-up is delivered by the
  worker, through the WeCom transport (shared token, budget), to the heads of 信息技术部 as an
  app message, visible on the tenant's page;
* the tenant's callbacks reaching the plugin's receivers: a directory change made through the
  tenant's admin API (hire, depart...) is verified, stored in the plugin's inbox and dispatched.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask

log = logging.getLogger("wecom_plugin.demo")

DEMO_ORG = "generated:200:7"
IT_DEPARTMENT = "信息技术部"


def it_admins(app: Flask) -> list[str]:
    """The leaders of 信息技术部 in the tenant, read through the plugin's own WeCom client."""
    from wecom_plugin.services.wecom import client_for
    from wecom_plugin.wecom.api import department, user

    with client_for(app) as client:
        departments = department.list_departments(client)
        it = next((d for d in departments if d.get("name") == IT_DEPARTMENT), None)
        if it is None:
            return []
        leaders = [str(u) for u in it.get("department_leader") or []]
        if leaders:
            return leaders
        return [u["userid"] for u in user.list_users(client, it["id"]) if u.get("status") == 1][:1]


def start(
    *, host: str, port: int, sandbox_port: int, org: str = DEMO_ORG, worker_threads: int = 1, extra: dict | None = None
) -> None:
    """Start the sandbox tenant, then the plugin against it; serve until SIGTERM/SIGINT."""
    from wecom_plugin import create_app
    from wecom_plugin.emulator.cli import start_sandbox, stop_sandbox
    from wecom_plugin.extensions import db
    from wecom_plugin.jobs.runner import run_all_in_one
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services.alerts import raise_alert

    plugin = f"http://{host}:{port}"
    # The tenant sends directory changes and app events to the plugin's receivers, as WeCom would. It
    # checks the URLs at once (the plugin is not up yet, so that first check fails and is reported).
    server, thread, creds = start_sandbox(
        org,
        host="127.0.0.1",
        port=sandbox_port,
        callback_url=f"{plugin}/wecom/callback",
        contact_callback_url=f"{plugin}/wecom/callback/contacts",
    )
    try:
        overrides: dict[str, Any] = {**creds.env(), **(extra or {})}
        app = create_app(overrides)
        admins = it_admins(app)
        if admins:
            app = create_app({**overrides, "ALERT_WECOM_USERIDS": ",".join(admins)})
        with app.app_context():
            raise_alert(
                f"demo.started:{creds.corp_id}:{time.time():.0f}",
                severity="warning",
                title_zh="演示已启动：这是一条测试告警，由后台任务通过企业微信应用消息送达",
                title_en="Demo started: a test alert, delivered by the worker as a WeCom app message",
                detail={"recipients": admins},
            )
            # Fill the directory mirror now rather than at the first hourly reconciliation.
            enqueue("directory.sync", {"trigger": "demo"}, dedupe_key=f"demo-sync:{time.time():.0f}")
            db.session.commit()
        print(_banner(host, port, creds, admins), flush=True)
        run_all_in_one(app, host=host, port=port, worker_threads=worker_threads)
    finally:
        stop_sandbox(server, thread)


def _banner(host: str, port: int, creds: Any, admins: list[str]) -> str:
    plugin = f"http://{host}:{port}"
    return "\n".join(
        [
            "",
            "企业微信群管理插件 · 演示 / wecom-plugin demo",
            f"  插件 plugin:            {plugin}  (/healthz  /readyz  /status)",
            f"  沙箱租户页面 tenant UI:  {creds.ui_url}",
            f"  沙箱管理接口 admin API:  {creds.admin_url}",
            f"  告警接收人 alert recipients (信息技术部负责人): {', '.join(admins) or '-'}",
            "  看一看 / look at: the tenant UI shows the alert message each recipient received;",
            "  `WECOM_SANDBOX=true .venv/bin/wecom-plugin alerts list` lists it.",
            f"  目录变更回调 directory callbacks: curl -X POST {creds.admin_url}directory/depart "
            "-H 'Content-Type: application/json' -d '{\"userid\": \"USERID\"}'",
            "    -> the callback reaches the plugin, the worker re-reads the member and the mirror marks them",
            "       departed within seconds: `WECOM_SANDBOX=true .venv/bin/wecom-plugin directory show USERID`.",
            "  目录镜像 directory mirror: `WECOM_SANDBOX=true .venv/bin/wecom-plugin directory status`"
            " (synced at start, reconciled every DIRECTORY_SYNC_MINUTES).",
            "  停止 stop: Ctrl-C",
            "",
        ]
    )
