"""The one-command demo: the plugin against a sandbox tenant seeded with a realistic org.

``wecom-plugin demo`` (what ``./dev start`` runs) starts the sandbox tenant in this process, builds
the app with the tenant's credentials, and runs web, worker and clock together. It grows with every
feature; today it shows:

* the sandbox tenant and its page (the org, chats, messages each member received);
* the plugin's background runtime talking to it: the alert raised at start-up is delivered by the
  worker, through the WeCom transport (shared token, budget), to the heads of 信息技术部 as an
  app message, visible on the tenant's page;
* the tenant's callbacks reaching the plugin's receivers: a directory change made through the
  tenant's admin API (hire, depart...) is verified, stored in the plugin's inbox and dispatched;
* group governance: two registered groups (信息技术部 and 财务部, 备案 with purpose, rule and admins)
  requested and approved by their department leaders, their chats created by the plugin with a
  welcome message, the general office (综合办公室) told, and a member check queued (a new group's
  first check is a dry run). The demo runs in enforce mode against the sandbox; a real install
  starts in observe mode (GOVERNANCE_MODE).
* the approval card: a third request (人力资源部) is left waiting; its leader has the interactive card
  (同意 / 驳回) on the tenant's page, and a click through the tenant's admin API decides it.
* bulletins (通报): once the groups' chats exist, three bulletins are saved. 值班提醒 fires in each of
  the next few minutes into the 信息技术部 chat, through a group robot in it and to the department's
  members (message/send), so the tenant page shows them arriving; 每日安全生产通报 follows China's
  statutory workdays at 09:00; 财务部月结提醒 is confidential (the 财务部 group is registered as
  保密) and fires on the last workday of each month, outside its quiet windows.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from flask import Flask

log = logging.getLogger("wecom_plugin.demo")

DEMO_ORG = "generated:200:7"
IT_DEPARTMENT = "信息技术部"
GENERAL_OFFICE = "综合办公室"
# The demo's governed groups: (department, group name, purpose, content scope, confidentiality, quiet windows).
DEMO_GROUPS = (
    (
        IT_DEPARTMENT, "信息技术部值班群", "部门日常工作沟通与值班通报",
        "系统运维、开发进度、安全通报；不得发布与工作无关内容", "normal", ["12:00-13:30"],
    ),
    (
        "财务部", "财务部工作群", "财务工作安排与报表通报",
        "预算、报销、月结事项；涉密数据不得在群内发送", "confidential", ["12:00-13:30", "18:00-21:00"],
    ),
)  # fmt: skip
# A request left waiting for its approver's click on the card (same shape as DEMO_GROUPS).
DEMO_PENDING = (
    "人力资源部", "人力资源部招聘协作群", "招聘进度沟通与面试安排",
    "招聘需求、面试排期；候选人个人信息不得在群内发送", "confidential", ["12:00-13:30"],
)  # fmt: skip


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


def department_leaders(app: Flask, name: str) -> list[str]:
    """The leaders of the department called ``name`` in the tenant (its first active member if none)."""
    from wecom_plugin.services.wecom import client_for
    from wecom_plugin.wecom.api import department, user

    with client_for(app) as client:
        found = next((d for d in department.list_departments(client) if d.get("name") == name), None)
        if found is None:
            return []
        leaders = [str(u) for u in found.get("department_leader") or []]
        return leaders or [u["userid"] for u in user.list_users(client, found["id"]) if u.get("status") == 1][:1]


def seed_groups(app: Flask) -> list[dict[str, Any]]:
    """Fill the mirror, then request and approve the demo's groups as their department leaders would.

    Approval queues ``groups.create_chat``: the worker creates each chat, posts the welcome and tells
    the general office. A member check is queued a little later (the first one is a dry run).
    Returns what was registered (for the banner); a group that cannot be registered is logged and
    skipped, so the demo still starts.
    """
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.models.directory import Department, Person
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services import governance_switches, group_registry
    from wecom_plugin.services.directory_sync import run_sync

    run_sync(app, trigger="demo")  # a 200-person tenant: well under a second
    seeded: list[dict[str, Any]] = []
    with app.app_context():
        # Enforce mode, stored as an operator's choice (audited), so the CLI in another shell and
        # every process of the demo see the same mode. Sandbox only: a real install starts in observe.
        default_mode = app.extensions["wecom_settings"].governance_mode
        governance_switches.set_mode(db.session, "demo", "enforce", default_mode, reason="沙箱演示 sandbox demo")
        db.session.commit()
        for spec, approve in [*((g, True) for g in DEMO_GROUPS), (DEMO_PENDING, False)]:
            dept_name, name, purpose, scope, confidentiality, quiet = spec
            dept = db.session.execute(sa.select(Department).where(Department.name == dept_name)).scalar_one_or_none()
            if dept is None:
                continue
            leaders = [u for u in dept.leaders or []] or [
                p.userid
                for p in db.session.scalars(sa.select(Person).where(Person.status == 1).order_by(Person.id)).all()
                if dept.id in (p.departments or [])
            ][:1]
            if not leaders:
                continue
            leader = leaders[0]
            try:
                group = group_registry.request_group(
                    db.session, name=name, purpose=purpose, content_scope=scope, department_id=dept.id,
                    requested_by=leader, owner=leader, admins=[leader],
                    rule_doc={"required": {"departments": [{"id": dept.id, "children": True}]}},
                    confidentiality=confidentiality, quiet_windows=quiet, actor="demo",
                )  # fmt: skip
                db.session.flush()
                if approve:  # else its approval card waits for the leader's click
                    group_registry.decide(db.session, group.id, approve=True, actor_userid=leader, reason="演示 demo")
                db.session.commit()
            except group_registry.RegistryError as exc:
                db.session.rollback()
                log.warning("demo group %s not registered: %s", name, exc)
                continue
            seeded.append({"id": group.id, "name": name, "owner": leader, "approved": approve})
        if any(g["approved"] for g in seeded):
            later = timedelta(seconds=15)  # after the worker has created the chats
            enqueue("groups.check", {"trigger": "demo"}, dedupe_key=f"demo-check:{time.time():.0f}", run_after=later)
            db.session.commit()
    return seeded


DEMO_ROBOT_KEY = "demo-duty-robot-0001"
BULLETIN_WAIT_SECONDS = 60


def demo_bulletin_times(app: Flask, count: int = 3) -> list[str]:
    """The next ``count`` whole minutes (at least 40 s away), local time: when 值班提醒 fires."""
    tz = app.extensions["wecom_settings"].tz
    first = (datetime.now(tz) + timedelta(seconds=100)).replace(second=0, microsecond=0)  # 40-100 s away
    return [(first + timedelta(minutes=i)).strftime("%H:%M") for i in range(count)]


def seed_bulletins(app: Flask, admin_url: str, times: list[str]) -> list[int]:
    """Wait for the demo groups' chats, add a robot to the 信息技术部 chat, then save the demo bulletins.

    Runs beside the processes (a thread): chats are created by the worker after approval. A bulletin
    that cannot be saved is logged and skipped."""
    import requests
    import sqlalchemy as sa

    from wecom_plugin.extensions import db
    from wecom_plugin.models.directory import Department
    from wecom_plugin.models.groups import GovernedGroup
    from wecom_plugin.services import bulletins

    names = [g[1] for g in DEMO_GROUPS]
    deadline = time.monotonic() + BULLETIN_WAIT_SECONDS
    with app.app_context():
        while True:
            chats = dict(
                db.session.execute(
                    sa.select(GovernedGroup.name, GovernedGroup.id).where(
                        GovernedGroup.name.in_(names), GovernedGroup.status == "active"
                    )
                ).all()
            )
            db.session.rollback()
            if len(chats) == len(names) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        it_group, finance_group = (db.session.get(GovernedGroup, chats[n]) if n in chats else None for n in names)
        it_dept = db.session.scalars(sa.select(Department.id).where(Department.name == IT_DEPARTMENT)).first()
        docs = []
        if it_group is not None:
            requests.post(
                f"{admin_url}robots", json={"chatid": it_group.chatid, "key": DEMO_ROBOT_KEY, "name": "值班机器人"},
                timeout=5,
            )  # fmt: skip
            docs.append(
                {
                    "name": "值班提醒（演示）",
                    "message": {"msgtype": "text", "title": "{{ time }} 值班提醒",
                                "content": "{{ group_name }}：今天（{{ date_zh }}，{{ weekday }}）请按值班表到岗。"},
                    "targets": {"chats": [it_group.id], "robots": [{"name": "值班机器人", "key": DEMO_ROBOT_KEY,
                                                                "chat": it_group.name}],
                                "departments": [it_dept] if it_dept else []},
                    "schedule": {"times": times, "days": {"rule": "every_day"}},
                    # Sent even inside the group's quiet window (12:00-13:30), and logged as such.
                    "quiet_policy": "urgent",
                }
            )  # fmt: skip
            docs.append(
                {
                    "name": "每日安全生产通报",
                    "message": {"msgtype": "markdown", "title": "{{ date_zh }}（{{ weekday }}）安全生产通报",
                                "content": "请各位于 17:00 前提交**{{ this_week.label }}**安全检查表。"},
                    "targets": {"chats": [it_group.id]},
                    "schedule": {"times": ["09:00"], "days": {"rule": "workdays"}},
                }
            )  # fmt: skip
        if finance_group is not None:
            docs.append(
                {
                    "name": "财务部月结提醒",
                    "message": {"msgtype": "text", "title": "{{ this_month.label }}月结提醒",
                                "content": "今天是本月最后一个工作日，请于 17:00 前完成报销单据提交。"},
                    "targets": {"chats": [finance_group.id]},
                    "schedule": {"times": ["16:00"], "days": {"rule": "days_of_month", "days": ["last_workday"]}},
                    "confidential": True,
                }
            )  # fmt: skip
        saved = []
        for doc in docs:
            try:
                row = bulletins.save(db.session, doc, actor="demo", settings=app.extensions["wecom_settings"])
                db.session.commit()
                saved.append(row.id)
            except bulletins.BulletinError as exc:
                db.session.rollback()
                log.warning("demo bulletin %s not saved: %s", doc["name"], exc)
        return saved


def start(
    *, host: str, port: int, sandbox_port: int, org: str = DEMO_ORG, worker_threads: int = 1, extra: dict | None = None
) -> None:
    """Start the sandbox tenant, then the plugin against it; serve until SIGTERM/SIGINT."""
    from wecom_plugin import create_app
    from wecom_plugin.emulator.cli import start_sandbox, stop_sandbox
    from wecom_plugin.extensions import db
    from wecom_plugin.jobs.runner import run_all_in_one
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
        office = department_leaders(app, GENERAL_OFFICE)
        if admins or office:
            overrides["ALERT_WECOM_USERIDS"] = ",".join(admins)
            overrides["GENERAL_OFFICE_USERIDS"] = ",".join(office)
            app = create_app(overrides)
        with app.app_context():
            raise_alert(
                f"demo.started:{creds.corp_id}:{time.time():.0f}",
                severity="warning",
                title_zh="演示已启动：这是一条测试告警，由后台任务通过企业微信应用消息送达",
                title_en="Demo started: a test alert, delivered by the worker as a WeCom app message",
                detail={"recipients": admins},
            )
            db.session.commit()
        groups = seed_groups(app)
        times = demo_bulletin_times(app)
        threading.Thread(
            target=seed_bulletins, args=(app, creds.admin_url, times), name="demo-bulletins", daemon=True
        ).start()
        print(_banner(host, port, creds, admins, groups, times), flush=True)
        run_all_in_one(app, host=host, port=port, worker_threads=worker_threads)
    finally:
        stop_sandbox(server, thread)


def _banner(
    host: str, port: int, creds: Any, admins: list[str], groups: list[dict[str, Any]] = (), times: list[str] = ()
) -> str:
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
            "  受管群 governed groups (执行模式 enforce mode, sandbox only): "
            + (", ".join(f"#{g['id']} {g['name']} (群主 owner {g['owner']})" for g in groups if g["approved"]) or "-"),
            "    -> chats created on approval, welcome posted, 综合办公室 told; see the tenant UI.",
            *(
                f"  审批卡片 approval card: #{g['id']} {g['name']} waits for {g['owner']}"
                " (同意 / 驳回 on the tenant page; its task_id is shown there)."
                f" Click: curl -X POST {creds.admin_url}callbacks/app/card-click"
                f' -H \'Content-Type: application/json\' -d \'{{"userid": "{g["owner"]}", "key":'
                f' "approve:{g["id"]}", "task_id": "TASK_ID"}}\''
                for g in groups
                if not g["approved"]
            ),
            "    `WECOM_SANDBOX=true .venv/bin/wecom-plugin groups list` · `groups show ID --history` ·"
            " `groups audit --group ID` · `groups changes`",
            f"  通报 bulletins: 值班提醒 fires at {', '.join(times) or '-'} into 信息技术部值班群 (chat, robot and"
            " the department's members); 每日安全生产通报 on statutory workdays at 09:00; 财务部月结提醒 (保密).",
            "    `WECOM_SANDBOX=true .venv/bin/wecom-plugin bulletins list` · `bulletins preview 每日安全生产通报"
            " --next 10` (skipped holidays and 调休 make-up days, with reasons) · `bulletins history 1`",
            "    `WECOM_SANDBOX=true .venv/bin/wecom-plugin calendar status` (the workday calendar; 2027 awaits"
            " the State Council's notice: `calendar import FILE`)",
            "  停止 stop: Ctrl-C",
            "",
        ]
    )
