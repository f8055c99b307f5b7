"""``wecom-plugin groups audit | preview | confirm | changes | apply``: the member check by hand.

* ``audit [--group ID] [--dry-run] [--json]``: run the check now, in this process; prints the
  report, Chinese first. Exit code 3 when the brake stopped it (confirm with ``groups confirm``).
* ``preview ID [--json]``: who the rule would put in the chat and the difference from the chat now.
  Read-only, in every mode.
* ``confirm CHECK_ID --by NAME [--reason]``: a person confirms a braked run (audited); the next run
  applies it (one is queued now).
* ``changes [--group ID] [--state pending] [--json]``: planned and applied changes.
* ``apply [--group ID]``: apply pending changes now, respecting the switches and the budget.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext

from wecom_plugin.cli_groups import echo_json, groups_group

BRAKED_EXIT = 3
MODE_ZH = {"observe": "观察", "dry_run": "演练", "enforce": "执行"}
STATUS_ZH = {
    "ok": "已检查",
    "manual": "需人工处理（非本应用创建的群）",
    "chat_gone": "群已不存在",
    "error": "读取失败",
    "rule_error": "规则无效",
    "pending": "未检查",
}


def _print_findings(label: str, findings: list[dict]) -> None:
    if not findings:
        return
    click.echo(f"    {label} ({len(findings)}):")
    for f in findings:
        name = f.get("name")
        who = f"{name}（{f['userid']}）" if name and name != f["userid"] else f["userid"]
        click.echo(f"      - {who}: {f.get('reason_zh', f['reason'])} / {f.get('reason_en', f['reason'])}")


def print_report(report: dict) -> None:
    stats = report.get("stats") or {}
    mode = report["mode"]
    click.echo(
        f"群成员检查 #{report['check_id']} member check — 状态 state: {report['state']}, "
        f"模式 mode: {MODE_ZH.get(mode, mode)} / {mode}"
    )
    click.echo(
        f"  群 groups: {stats.get('groups', 0)}，已读取 read: {stats.get('chats_read', 0)}，"
        f"有差异 with differences: {stats.get('with_differences', 0)}，移出 removals: {stats.get('removals', 0)}，"
        f"加入 additions: {stats.get('additions', 0)}，实名提醒 warnings: {stats.get('warnings', 0)}，"
        f"待执行 pending: {stats.get('pending', 0)}，错误 errors: {stats.get('errors', 0)}"
    )
    for g in report.get("groups") or ():
        status = g.get("status", "")
        extra = f" — {g['error']}" if g.get("error") else ""
        planned = g.get("planned")
        planned_text = f"，计划 planned: {planned}" if planned else ""
        click.echo(
            f"  [{g['group_id']}] {g.get('name')}: {STATUS_ZH.get(status, status)} / {status}{planned_text}{extra}"
        )
        if status != "ok":
            continue
        click.echo(f"    成员 members: {g.get('members', 0)}，刹车上限 brake limit: {g.get('brake_limit')}")
        _print_findings("移出 remove", g.get("removals") or [])
        _print_findings("加入 add", g.get("additions") or [])
        _print_findings("实名提醒 warn", g.get("warnings") or [])
        _print_findings("豁免保留 kept by exemption", g.get("exempted") or [])
        owner = g.get("owner") or {}
        if owner.get("gone"):
            new = owner.get("new") or "（无合适人选，需人工指定 / none eligible: a person must choose）"
            click.echo(f"    群主已不能担任 owner gone: {owner.get('registered') or '-'} → {new}")
    if report["state"] == "braked":
        click.echo(
            f"已刹车 BRAKED：移出人数超过上限，未做任何更改。核实后执行 / nothing changed; if right, run: "
            f"wecom-plugin groups confirm {report['check_id']} --by 姓名"
        )
    if report.get("error"):
        click.echo(f"错误 error: {report['error']}")


@contextlib.contextmanager
def _one_line() -> Iterator[None]:
    """Any refusal or WeCom/runtime failure ends in one line (exit code 1), never a traceback."""
    from wecom_plugin.errors import PluginError, describe_error
    from wecom_plugin.services.membership_check import CheckBusy, CheckError

    try:
        yield
    except CheckBusy as exc:
        raise click.ClickException(f"另一个检查正在运行 / {exc}") from None
    except CheckError as exc:
        raise click.ClickException(str(exc)) from None
    except PluginError as exc:
        raise click.ClickException(f"企业微信调用失败 / WeCom call failed: {describe_error(exc)}") from None


@groups_group.command("audit")
@click.option("--group", "group_id", type=int, default=None, help="Only this group.")
@click.option("--dry-run", is_flag=True, help="Record what would change, change nothing (even in enforce mode).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_audit(group_id: int | None, dry_run: bool, as_json: bool) -> None:
    """Run the member check now (每日检查): compare every governed chat with its rule and plan changes."""
    from wecom_plugin.services.membership_check import run_check

    with _one_line():
        report = run_check(current_app._get_current_object(), trigger="cli", group_id=group_id, dry_run=dry_run)
    view = report.as_dict()
    echo_json(view) if as_json else print_report(view)
    if report.braked:
        sys.exit(BRAKED_EXIT)


@groups_group.command("preview")
@click.argument("group_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_preview(group_id: int, as_json: bool) -> None:
    """Who the group's rule puts in the chat, and the difference from the chat now (read-only)."""
    from wecom_plugin.services.membership_check import preview

    with _one_line():
        view = preview(current_app._get_current_object(), group_id)
    if as_json:
        echo_json(view)
        return
    desired = view["desired"]
    click.echo(f"[{view['group_id']}] {view['name']} — 规则预览 rule preview（只读 read-only）")
    click.echo(
        f"  规则应在群内 required: {len(desired['required'])}，允许 permitted: {len(desired['permitted'])}，"
        f"不符合条件 ineligible: {len(desired['ineligible'])}"
    )
    for p in desired["required"]:
        click.echo(f"    + {p['name'] or ''}（{p['userid']}）")
    if view.get("chat_error"):
        click.echo(f"  读取群失败 could not read the chat: {view['chat_error']}")
    elif not view.get("chat_read"):
        click.echo("  群尚未创建：与空群比较 / no chat yet: compared with an empty chat")
    click.echo(f"  当前群成员 current members: {view['current']}")
    _print_findings("将移出 would remove", view["removals"])
    _print_findings("将加入 would add", view["additions"])
    _print_findings("实名提醒 would warn", view["warnings"])
    if view.get("owner_gone"):
        click.echo("  群主已不能担任群主 the owner is gone")


@groups_group.command("confirm")
@click.argument("check_id", type=int)
@click.option("--by", "actor", required=True, help="Who confirms (recorded in the audit log).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_confirm(check_id: int, actor: str, reason: str | None, as_json: bool) -> None:
    """Confirm a braked member check: the next run applies its plan (one is queued now). Audited."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services.membership_check import CheckError, confirm_check

    try:
        view = confirm_check(db.session, check_id, f"user:{actor}", reason)
    except CheckError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    view["job_id"] = enqueue(
        "groups.check",
        {"trigger": "confirm", "confirmed_check": check_id},
        dedupe_key=f"groups.check:confirm:{check_id}",
        session=db.session,
    )
    db.session.commit()
    if as_json:
        echo_json(view)
    else:
        click.echo(
            f"已确认检查 #{check_id}，已排队重新检查并执行 / check #{check_id} confirmed by {actor}; "
            f"a new check is queued (job #{view['job_id']}) and will apply the plan"
        )


@groups_group.command("changes")
@click.option("--group", "group_id", type=int, default=None, help="Only this group.")
@click.option("--state", default=None, help="pending, applied, failed, cancelled, skipped, manual, observed, dry_run.")
@click.option("--limit", type=int, default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_changes(group_id: int | None, state: str | None, limit: int, as_json: bool) -> None:
    """Membership changes planned and made, newest first."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.membership_check import CHANGE

    query = sa.select(CHANGE).order_by(CHANGE.c.id.desc()).limit(limit)
    if group_id is not None:
        query = query.where(CHANGE.c.group_id == group_id)
    if state:
        query = query.where(CHANGE.c.state == state)
    rows = db.session.execute(query).all()
    db.session.rollback()
    items = [
        {
            "id": r.id, "group_id": r.group_id, "userid": r.userid, "action": r.action, "reason": r.reason,
            "detail": r.detail, "source": r.source, "priority": r.priority, "state": r.state, "errcode": r.errcode,
            "error": r.error, "run_id": r.run_id, "created_at": r.created_at, "applied_at": r.applied_at,
        }
        for r in rows
    ]  # fmt: skip
    if as_json:
        echo_json(items)
        return
    if not items:
        click.echo("没有记录 / no changes")
    for i in items:
        err = f" errcode={i['errcode']}" if i["errcode"] else ""
        click.echo(
            f"#{i['id']} 群 group {i['group_id']} {i['action']} {i['userid']} ({i['reason']}) "
            f"[{i['state']}]{err} {i['created_at']:%Y-%m-%d %H:%M}Z"
        )


@groups_group.command("apply")
@click.option("--group", "group_id", type=int, default=None, help="Only this group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_apply(group_id: int | None, as_json: bool) -> None:
    """Apply pending membership changes now (respects the mode, the kill switch and the budget)."""
    from wecom_plugin.services.chat_changes import apply_pending

    with _one_line():
        result = apply_pending(current_app._get_current_object(), group_id=group_id)
    if as_json:
        echo_json(result)
        return
    labels = {"done": "完成 done", "held": "已暂停 held", "deferred": "预算用完，稍后继续 budget spent: deferred"}
    click.echo(f"{labels.get(result['state'], result['state'])}：{len(result['chats'])} 个群 chats")
    if result.get("reason"):
        click.echo(f"  原因 reason: {result['reason']}")
    for c in result["chats"]:
        click.echo(f"  群 group {c['group_id']}: {c.get('state')} {c.get('outcomes', '')}")
