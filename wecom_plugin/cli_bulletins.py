"""``wecom-plugin bulletins ...``: bulletins (通报) from the command line.

list, show, apply (policy as code: a YAML file of bulletins, created or updated by name, all or
nothing), create, update, pause, resume, delete, history, preview, resend, variables. Output is
Chinese first, English second; ``--json`` for scripts. Every change names who made it (``--by``,
default: the operating-system user). A refusal prints every problem, changes nothing and exits
with code 1, never a traceback. Robot webhook keys are never printed (only their last four
characters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from flask import current_app
from flask.cli import with_appcontext

STATE_ZH = {"active": "启用", "paused": "已暂停"}
RUN_STATE_ZH = {
    "running": "发送中", "done": "已完成", "partial": "部分未成功", "missed": "已错过", "held": "暂缓（日历无数据）",
    "skipped": "已跳过",
}  # fmt: skip
DELIVERY_STATE_ZH = {
    "pending": "待发送", "deferred": "已顺延", "sent": "已发送", "failed": "失败", "unknown": "结果未知",
    "missed": "已错过", "skipped": "已跳过", "cancelled": "已取消",
}  # fmt: skip
DAY_STATE = {"send": ("发送", "send"), "hold": ("暂缓", "hold"), "skip": ("跳过", "skip")}
ACTION_ZH = {"send": "发送", "defer": "顺延", "skip": "跳过", "urgent": "照发（紧急）"}
POLICY = {"defer": ("顺延到免打扰结束", "defer"), "urgent": ("照发并记录", "urgent"), "skip": ("跳过", "skip")}
PATH_LABEL = {"appchat": ("群聊", "group chat"), "robot": ("群机器人", "robot"), "message": ("应用消息", "app message")}
RULE_LABEL = {
    "every_day": ("每天", "every day"),
    "weekdays": ("周一至周五", "Monday to Friday"),
    "workdays": ("法定工作日（含调休）", "statutory workdays (make-up days included)"),
    "holidays": ("法定节假日", "statutory holidays"),
}
WEEKDAY_ZH = "一二三四五六日"
# Fields of a shown bulletin (``show --json``) that are not part of the document ``update`` takes.
READ_ONLY = ("owner", "created_at", "updated_at", "next_run_at")


def register(cli: click.Group) -> None:
    """Add the ``bulletins`` command group to ``cli``."""
    cli.add_command(bulletins_group)


@click.group("bulletins")
def bulletins_group() -> None:
    """Bulletins (通报): scheduled messages to governed groups, robots and people.

    `apply FILE` keeps them as code (YAML, matched by name, all or nothing); `preview REF` shows the
    next occurrences day by day with the reasons; `history REF` what was sent; `variables` the
    template variables.
    """


# --- helpers --------------------------------------------------------------------------------------
class Refused(click.ClickException):
    """A bulletin request refused by the service: every problem, one per line; exit code 1."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        lines = [f"{p[0]}: {p[1]} / {p[2]}" if p[0] else f"{p[1]} / {p[2]}" for p in problems]
        if len(lines) == 1:
            message = f"{lines[0]}（未做任何更改 / nothing was changed）"
        else:
            n = len(lines)
            message = f"共 {n} 处问题，未做任何更改 / {n} problems, nothing was changed:\n" + "\n".join(
                f"  - {line}" for line in lines
            )
        super().__init__(message)


@contextmanager
def _use_case() -> Iterator[Any]:
    """One transaction: committed when the block ends; rolled back on any refusal or error."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.bulletins import BulletinError

    try:
        yield db.session
        db.session.commit()
    except BulletinError as exc:
        db.session.rollback()
        raise Refused(exc.problems) from None
    except BaseException:
        db.session.rollback()
        raise


def _settings() -> Any:
    return current_app.extensions["wecom_settings"]


def _actor(by: str | None) -> str:
    """``user:NAME`` from ``--by``, else the operating-system user running the command."""
    import getpass

    name = (by or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError, ImportError):  # no such user in a bare container
            name = ""
    if not name:
        raise click.ClickException("需要 --by 姓名 / needs --by NAME")
    return f"user:{name}"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"无法读取 / cannot read {path}: {exc}") from None


def _read_document(path: str) -> Any:
    import yaml

    text = _read_text(path)
    try:
        return yaml.safe_load(text)  # YAML, and JSON (a subset of YAML)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"第 {mark.line + 1} 行 / line {mark.line + 1}: " if mark else ""
        raise click.ClickException(f"{where}{path} 不是有效的 YAML/JSON / {path} is not valid YAML or JSON") from None


def _local(value: str | None, tz: ZoneInfo) -> str:
    """An ISO instant as local wall time in ``tz`` (``YYYY-MM-DD HH:MM``), ``-`` when absent."""
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone(tz).strftime("%Y-%m-%d %H:%M")


def _target_labels(session: Any, view: Mapping[str, Any]) -> dict[str, str]:
    """Delivery target key (``chat:1``, ``robot:NAME``, ``message:0``) → how people read it."""
    import sqlalchemy as sa

    from wecom_plugin.models.groups import GovernedGroup

    targets = view["targets"]
    labels: dict[str, str] = {}
    ids = list(targets.get("chats", []))
    names = dict(
        session.execute(sa.select(GovernedGroup.id, GovernedGroup.name).where(GovernedGroup.id.in_(ids))).all()
    )
    for gid in ids:
        labels[f"chat:{gid}"] = f"群「{names.get(gid, '?')}」#{gid} / group chat #{gid}"
    for robot in targets.get("robots", []):
        labels[f"robot:{robot['name']}"] = f"机器人「{robot['name']}」 / robot {robot['name']!r}"
    return labels


def _label(labels: Mapping[str, str], key: str) -> str:
    if key in labels:
        return labels[key]
    kind, _, ref = key.partition(":")
    if kind == "message":
        n = int(ref) + 1 if ref.isascii() and ref.isdigit() else ref
        return f"应用消息（第 {n} 批） / app message (batch {n})"
    return key


def _describe_days(days: Mapping[str, Any]) -> str:
    rule = days["rule"]
    if rule in RULE_LABEL:
        zh, en = RULE_LABEL[rule]
        return f"{zh} / {en}"
    if rule == "days_of_week":
        zh = "、".join(f"星期{WEEKDAY_ZH[d]}" for d in days["days"])
        en = ", ".join(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[d] for d in days["days"])
        return f"每周 {zh} / every {en}"
    if rule == "days_of_month":
        words = {"last": ("最后一天", "last day"), "first_workday": ("第一个工作日", "first workday"),
                 "last_workday": ("最后一个工作日", "last workday")}  # fmt: skip
        zh = "、".join(words[d][0] if d in words else f"{d} 日" for d in days["days"])
        en = ", ".join(words[d][1] if d in words else str(d) for d in days["days"])
        return f"每月 {zh} / each month: {en}"
    if rule == "cron":
        return f"cron: {days.get('expr', '')}"
    return rule


def _print_bulletin(view: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    state = view["state"]
    click.echo(f"#{view['id']} {view['name']} — {STATE_ZH.get(state, state)} / {state} (v{view['version']})")
    message = view["message"]
    click.echo(f"  消息 message: {message['msgtype']}")
    for key in ("title", "content", "url", "btntxt", "picurl"):
        if message.get(key):
            text = str(message[key]).replace("\n", "\n      ")
            click.echo(f"    {key}: {text}")
    if message.get("mention_all") or message.get("mentions"):
        mentions = ["@all"] if message.get("mention_all") else []
        click.echo(f"    @提醒 mentions: {', '.join(mentions + list(message.get('mentions', [])))}")
    targets = view["targets"]
    click.echo("  发送对象 targets:")
    for gid in targets.get("chats", []):
        click.echo(f"    - {labels.get(f'chat:{gid}', f'chat:{gid}')}")
    for robot in targets.get("robots", []):
        click.echo(f"    - 机器人「{robot['name']}」 / robot, key {robot.get('key_hint', '')}")
    for kind, zh in (("users", "成员"), ("departments", "部门"), ("tags", "标签")):
        if targets.get(kind):
            click.echo(f"    - {zh} {kind}: {', '.join(map(str, targets[kind]))}")
    schedule = view["schedule"]
    times = ", ".join(schedule.get("times") or []) or "-"
    click.echo(f"  时间 schedule: {_describe_days(schedule['days'])}; {times} ({view['timezone']})")
    for key, zh in (("start", "开始"), ("end", "结束")):
        if schedule.get(key):
            click.echo(f"    {zh} {key}: {schedule[key]}")
    for key, zh in (("skip", "跳过日期"), ("extra", "增加日期")):
        if schedule.get(key):
            click.echo(f"    {zh} {key}: {', '.join(schedule[key])}")
    policy = POLICY.get(view["quiet_policy"], (view["quiet_policy"], view["quiet_policy"]))
    confidential = "是 yes" if view["confidential"] else "否 no"
    click.echo(
        f"  保密 confidential: {confidential}；免打扰时段 quiet windows: {policy[0]} / {policy[1]}；"
        f"错过宽限 misfire grace: {view['misfire_grace_minutes']} 分钟 min"
    )
    tz = ZoneInfo(view["timezone"])
    click.echo(f"  负责人 owner: {view['owner'] or '-'}；更新 updated: {_local(view['updated_at'], tz)}")
    if "next_run_at" in view:
        click.echo(f"  下次发送 next run: {_local(view['next_run_at'], tz)}")


def _view(session: Any, row: Any) -> dict[str, Any]:
    from wecom_plugin.services import bulletins

    return bulletins.view(row, session)


# --- commands -------------------------------------------------------------------------------------
@bulletins_group.command("list")
@click.option("--state", type=click.Choice(["active", "paused"]), default=None, help="Only this state.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_list(state: str | None, as_json: bool) -> None:
    """Every bulletin (or those in one state)."""
    from wecom_plugin.services import bulletins

    with _use_case() as session:
        views = [bulletins.view(row, session) for row in bulletins.list_bulletins(session, state)]
    if as_json:
        _echo_json(views)
        return
    if not views:
        click.echo("没有通报 / no bulletins")
    for v in views:
        tz = ZoneInfo(v["timezone"])
        click.echo(
            f"#{v['id']}\t{STATE_ZH.get(v['state'], v['state'])} {v['state']}\t{v['name']}\t"
            f"{_describe_days(v['schedule']['days'])} {', '.join(v['schedule'].get('times') or [])}\t"
            f"下次 next {_local(v.get('next_run_at'), tz)}\tv{v['version']}"
        )


@bulletins_group.command("show")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_show(ref: str, as_json: bool) -> None:
    """One bulletin, by id or name (robot keys appear only as their last four characters)."""
    from wecom_plugin.services import bulletins

    with _use_case() as session:
        view = _view(session, bulletins.find(session, ref))
        labels = _target_labels(session, view)
    if as_json:
        _echo_json(view)
        return
    _print_bulletin(view, labels)


@bulletins_group.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check everything and say what would change; change nothing.")
@click.option("--by", "by", default=None, help="Who applies (recorded in the audit log; default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_apply(file: str, dry_run: bool, by: str | None, as_json: bool) -> None:
    """Create or update bulletins from a YAML file, matched by name (one bulletin, or `bulletins: [...]`).

    Every entry is checked first: one problem anywhere and nothing is changed.
    """
    from wecom_plugin.services import bulletins

    text = _read_text(file)
    actor = _actor(by)
    with _use_case() as session:
        report = bulletins.load_yaml(session, text, actor=actor, settings=_settings(), dry_run=dry_run)
        if dry_run:
            session.rollback()
    if as_json:
        _echo_json({"dry_run": dry_run, "bulletins": report})
        return
    for item in report:
        if item["action"] == "create":
            ref = "" if dry_run else f" #{item['id']}"
            click.echo(
                f"{'将新建' if dry_run else '已新建'} / {'would create' if dry_run else 'created'}{ref} {item['name']}"
            )
        else:
            done = "将更新 / would update" if dry_run else "已更新 / updated"
            click.echo(f"{done} #{item['id']} {item['name']}")
    if dry_run:
        click.echo("演练，未做任何更改 / dry run, nothing was changed")


@bulletins_group.command("create")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--by", "by", default=None, help="Who creates it (recorded; default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_create(file: str, by: str | None, as_json: bool) -> None:
    """Create one bulletin from a YAML (or JSON) file."""
    from wecom_plugin.services import bulletins

    doc = _read_document(file)
    actor = _actor(by)
    with _use_case() as session:
        view = _view(session, bulletins.save(session, doc, actor=actor, settings=_settings()))
    if as_json:
        _echo_json(view)
        return
    click.echo(f"已新建通报 #{view['id']} {view['name']} / created bulletin #{view['id']}")
    tz = ZoneInfo(view["timezone"])
    click.echo(f"  下次发送 next run: {_local(view.get('next_run_at'), tz)}")


@bulletins_group.command("update")
@click.argument("ref")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--by", "by", default=None, help="Who changes it (recorded; default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_update(ref: str, file: str, by: str | None, as_json: bool) -> None:
    """Change a bulletin: the file's top-level fields replace the stored ones, the others are kept.

    A `version` in the file makes it compare-and-set (refused if the bulletin changed since). The
    output of `show --json` may be edited and given back. A robot listed without `key` keeps its key.
    """
    from wecom_plugin.services import bulletins

    doc = _read_document(file)
    actor = _actor(by)
    with _use_case() as session:
        row = bulletins.find(session, ref)
        doc = _editable(doc, row.id)
        before = row.version
        view = _view(session, bulletins.save(session, doc, actor=actor, settings=_settings(), bulletin_id=row.id))
    if as_json:
        _echo_json(view)
        return
    click.echo(
        f"已更新通报 #{view['id']} {view['name']}，第 {before} 版 → 第 {view['version']} 版 / "
        f"updated bulletin #{view['id']}, version {before} → {view['version']}"
    )


def _editable(doc: Any, bulletin_id: int) -> Any:
    """``doc`` without the read-only fields of a shown bulletin; its ``id``, if any, must match."""
    if not isinstance(doc, dict):
        return doc
    if "id" in doc and doc["id"] != bulletin_id:
        raise click.ClickException(
            f"文件中的 id {doc['id']!r} 与通报 #{bulletin_id} 不符 / the file's id {doc['id']!r} is not #{bulletin_id}"
        )
    return {k: v for k, v in doc.items() if k not in READ_ONLY and k != "id"}


def _set_state(ref: str, state: str, by: str | None, reason: str | None, as_json: bool) -> None:
    from wecom_plugin.services import bulletins

    actor = _actor(by)
    with _use_case() as session:
        row = bulletins.find(session, ref)
        before = row.state
        view = _view(session, bulletins.set_state(session, row.id, state, actor=actor, reason=reason or ""))
    if as_json:
        _echo_json(view)
        return
    if before == state:
        click.echo(f"通报 #{view['id']} 已是{STATE_ZH[state]}状态，未更改 / bulletin #{view['id']} is already {state}")
    elif state == "paused":
        click.echo(f"已暂停通报 #{view['id']} {view['name']} / paused bulletin #{view['id']}")
    else:
        next_run = _local(view.get("next_run_at"), ZoneInfo(view["timezone"]))
        click.echo(
            f"已恢复通报 #{view['id']} {view['name']}，暂停期间的不补发；下次发送 {next_run} / "
            f"resumed bulletin #{view['id']} (nothing from the pause is sent); next run {next_run}"
        )


@bulletins_group.command("pause")
@click.argument("ref")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--by", "by", default=None, help="Who pauses it (recorded; default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_pause(ref: str, reason: str | None, by: str | None, as_json: bool) -> None:
    """Stop sending a bulletin until it is resumed."""
    _set_state(ref, "paused", by, reason, as_json)


@bulletins_group.command("resume")
@click.argument("ref")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--by", "by", default=None, help="Who resumes it (recorded; default: the OS user).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_resume(ref: str, reason: str | None, by: str | None, as_json: bool) -> None:
    """Send a paused bulletin again, from its next occurrence (what fell in the pause is not sent)."""
    _set_state(ref, "active", by, reason, as_json)


@bulletins_group.command("delete")
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Confirm the deletion.")
@click.option("--by", "by", default=None, help="Who deletes it (recorded; default: the OS user).")
@with_appcontext
def bulletins_delete(ref: str, yes: bool, by: str | None) -> None:
    """Delete a bulletin and its schedule (its delivery history stays). Needs --yes."""
    from wecom_plugin.services import bulletins

    actor = _actor(by)
    with _use_case() as session:
        row = bulletins.find(session, ref)
        bulletin_id, name = row.id, row.name
        if not yes:
            raise click.ClickException(
                f"删除通报 #{bulletin_id} {name} 需要加 --yes 确认 / deleting bulletin #{bulletin_id} needs --yes"
            )
        bulletins.delete(session, bulletin_id, actor=actor)
    click.echo(f"已删除通报 #{bulletin_id} {name}，发送记录保留 / deleted bulletin #{bulletin_id}; its history stays")


@bulletins_group.command("history")
@click.argument("ref")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True, help="Latest runs to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_history(ref: str, limit: int, as_json: bool) -> None:
    """What was sent: the latest runs, newest first, each with its deliveries (per target)."""
    from wecom_plugin.services import bulletins

    with _use_case() as session:
        row = bulletins.find(session, ref)
        view = bulletins.view(row)
        runs = bulletins.history(session, row.id, limit=limit)
        labels = _target_labels(session, view)
    if as_json:
        _echo_json({"bulletin_id": view["id"], "name": view["name"], "runs": runs})
        return
    click.echo(f"#{view['id']} {view['name']} 的发送记录 / history")
    if not runs:
        click.echo("  还没有发送记录 / nothing has run yet")
        return
    tz = ZoneInfo(view["timezone"])
    for run in runs:
        state = run["state"]
        reason = f" — {run['reason']}" if run["reason"] else ""
        click.echo(
            f"  {_local(run['scheduled_at'], tz)} 运行 run #{run['run_id']} (v{run['version']}): "
            f"{RUN_STATE_ZH.get(state, state)} / {state}{reason}"
        )
        for d in run["deliveries"]:
            dstate = d["state"]
            attempt = f" 第 {d['attempt']} 次 attempt {d['attempt']}" if d["attempt"] > 1 else ""
            click.echo(
                f"    - {_label(labels, d['target'])}: {DELIVERY_STATE_ZH.get(dstate, dstate)} / {dstate}{attempt}"
            )
            click.echo(
                f"      发送记录 delivery #{d['id']} ({d['delivery_id']})；errcode {_dash(d['errcode'])}；"
                f"msgid {_dash(d['msgid'])}"
            )
            click.echo(
                f"      计划 scheduled {_local(d['scheduled_at'], tz)}；应发 due {_local(d['due_at'], tz)}；"
                f"实际 sent {_local(d['sent_at'], tz)}"
            )
            if d["reason"]:
                click.echo(f"      原因 reason: {d['reason']}")
            if d["resend_of"]:
                click.echo(f"      重发自 resend of delivery #{d['resend_of']}")


def _dash(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


@bulletins_group.command("preview")
@click.argument("ref")
@click.option("--next", "count", type=click.IntRange(1, 100), default=10, show_default=True,
              help="How many occurrences.")  # fmt: skip
@click.option("--from", "start", default=None, help="Start from this date or time (ISO 8601; default now).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def bulletins_preview(ref: str, count: int, start: str | None, as_json: bool) -> None:
    """The next occurrences day by day: send, hold or skip and why; per target: send, defer, skip or
    urgent; and the message as each kind of target will receive it."""
    from wecom_plugin.services import bulletins

    with _use_case() as session:
        row = bulletins.find(session, ref)
        tz = ZoneInfo(row.timezone)
        after = bulletins.preview_start(start, tz)
        result = bulletins.preview(session, row.id, settings=_settings(), count=count, after=after)
        labels = _target_labels(session, result["bulletin"])
        session.rollback()  # a preview changes nothing
    if as_json:
        _echo_json(result)
        return
    view = result["bulletin"]
    click.echo(f"#{view['id']} {view['name']} — 接下来 {count} 次 / next {count} occurrences ({view['timezone']})")
    if view["state"] != "active":
        state = view["state"]
        click.echo(f"  注意：通报{STATE_ZH.get(state, state)}，恢复前不会发送 / note: {state}, nothing is sent")
    if not result["days"]:
        click.echo("  没有即将发送的日期 / no upcoming occurrence")
    for day in result["days"]:
        zh, en = DAY_STATE.get(day["state"], (day["state"], day["state"]))
        click.echo(f"{day['date']} {day['weekday']}  {zh} {en} — {day['reason_zh']} / {day['reason_en']}")
        for occurrence in day["occurrences"]:
            click.echo(f"  {_local(occurrence['at'], tz)[11:]}")
            for t in occurrence["targets"]:
                action = t["action"]
                what = f"{ACTION_ZH.get(action, action)} {action}"
                if action == "defer":
                    at = _local(t["at"], tz)[11:]
                    what = f"顺延至 {at} / defer to {at}"
                reason = f"（{t['reason']}）" if t["reason"] else ""
                click.echo(f"    - {_label(labels, t['target'])}: {what}{reason}")
            for m in occurrence["messages"]:
                path_zh, path_en = PATH_LABEL.get(m["path"], (m["path"], m["path"]))
                if "error" in m:
                    click.echo(f"    [{path_zh} / {path_en}] 无法发送 / cannot be sent: {m['error']}")
                    continue
                safe = "，保密 confidential" if m.get("safe") else ""
                click.echo(f"    [{path_zh} / {path_en}] {m.get('msgtype', '')}{safe}:")
                for line in str(m["text"]).splitlines() or [""]:
                    click.echo(f"      | {line}")


@bulletins_group.command("resend")
@click.argument("delivery_id")
@click.option("--reason", required=True, help="Why it is sent again (recorded in the audit log).")
@click.option("--by", "by", default=None, help="Who decides (recorded; default: the OS user).")
@with_appcontext
def bulletins_resend(delivery_id: str, reason: str, by: str | None) -> None:
    """Send one delivery again whose outcome was unknown, or that failed or was missed.

    DELIVERY_ID: the number shown by `history` (delivery #N), or its 32-character id. An unknown
    outcome may have reached people: check before resending.
    """
    from wecom_plugin.services import bulletin_delivery

    actor = _actor(by)
    with _use_case() as session:
        row_id = _delivery_row(session, delivery_id)
        new = bulletin_delivery.resend(session, row_id, actor=actor, reason=reason)
        new_id, target = new.id, new.target
    click.echo(
        f"已安排重发发送记录 #{row_id}（{target}），新的发送记录 #{new_id} / resend of delivery #{row_id} ({target}) "
        f"queued as delivery #{new_id}"
    )


def _delivery_row(session: Any, ref: str) -> int:
    """The row id of a delivery named by its number or its 32-character ``delivery_id``."""
    import sqlalchemy as sa

    from wecom_plugin.models.bulletins import BulletinDelivery

    ref = ref.strip()
    if ref.isascii() and ref.isdigit():
        return int(ref)
    found = session.scalars(sa.select(BulletinDelivery.id).where(BulletinDelivery.delivery_id == ref.lower())).first()
    if found is None:
        raise click.ClickException(f"发送记录 {ref} 不存在 / delivery {ref!r} does not exist")
    return found


@bulletins_group.command("variables")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bulletins_variables(as_json: bool) -> None:
    """The variables a bulletin's title, content and link may use ({{ name }})."""
    from wecom_plugin.domain.bulletin_message import VARIABLES

    if as_json:
        _echo_json({name: {"zh": zh, "en": en} for name, (zh, en) in VARIABLES.items()})
        return
    click.echo("模板变量，写作 {{ 变量 }} / template variables, written {{ name }}:")
    width = max(_width(name) for name in VARIABLES) + 6
    for name, (zh, en) in VARIABLES.items():
        shown = "{{ " + name + " }}"
        click.echo(f"  {shown}{' ' * (width - _width(shown))} {zh} / {en}")


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal (Chinese characters take two)."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
