"""``wecom-plugin offboard ...``: offboarding (离职处理) from the command line.

* ``wecom-plugin offboard USERID [--at TIME] --by NAME``: take the person out of every governed
  chat (now, or at TIME: ISO 8601 with a UTC offset). Repeats answer the same offboarding.
* ``wecom-plugin offboard status USERID|ID [--json]``: progress and outcome, per chat.
* ``wecom-plugin offboard cancel ID --by NAME``: cancel before it runs.
* ``wecom-plugin offboard employees import FILE.csv [--replace] [--dry-run]``: load the 工号 table
  the HR API resolves ``employee_id`` through (all or nothing); ``employees show EMPLOYEE_ID``.

Chinese first, English second; ``--json`` for scripts; errors end in one line (exit code 1).
"""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

STATE_ZH = {
    "scheduled": "已排期", "pending": "待执行", "running": "执行中", "done": "已完成", "partial": "部分完成（需人工）",
    "cancelled": "已取消", "failed": "失败", "applied": "已移出", "skipped": "已不在群中", "manual": "需人工处理",
}  # fmt: skip


def register(cli: click.Group) -> None:
    cli.add_command(offboard_group)


class _OffboardGroup(click.Group):
    """``offboard USERID`` starts one; ``offboard status|cancel`` are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group("offboard", cls=_OffboardGroup)
def offboard_group() -> None:
    """Offboarding (离职处理): `offboard USERID [--at TIME] --by NAME`, `offboard status USERID`,
    `offboard cancel ID --by NAME`, `offboard employees import FILE.csv` (the 工号 table)."""


def _echo_json(value) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _print(view: dict) -> None:
    state = view["state"]
    click.echo(f"离职处理 offboarding #{view['id']}  {view['userid']}: {STATE_ZH.get(state, state)} / {state}")
    click.echo(f"  来源 source: {view['source']}  发起 by: {view['requested_by']}")
    if view.get("effective_at"):
        click.echo(f"  生效时间 effective at: {view['effective_at']}")
    if view.get("finished_at"):
        click.echo(f"  结束 finished at: {view['finished_at']}")
    counts = ", ".join(f"{k} {v}" for k, v in view["counts"].items()) or "-"
    click.echo(f"  群 chats: {len(view['chats'])} ({counts})")
    for c in view["chats"]:
        extra = f"  ({c['errcode'] or ''} {c['error'] or ''})".rstrip() if c["state"] in ("failed", "manual") else ""
        click.echo(f"    - #{c['group_id']} {c['name']}: {STATE_ZH.get(c['state'], c['state'])} / {c['state']}{extra}")
    for m in view["manual_actions"]:
        click.echo(f"  人工处理 manual action #{m['id']} ({m['kind']}): 负责人 assignee {m['assignee'] or '-'}")


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from None


@offboard_group.command("start", hidden=True)
@click.argument("userid")
@click.option("--at", "at", default=None, help="When (ISO 8601 with a UTC offset); default now.")
@click.option("--by", "actor", required=False, help="Who asks (recorded in the audit log).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def offboard_start(userid: str, at: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Take USERID out of every governed chat (now, or at --at)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import offboarding as service

    if not actor:
        raise click.ClickException("需要 --by 姓名 / needs --by NAME")
    effective_at = None
    if at:
        try:
            effective_at = service.parse_effective_at(at)
        except ValueError as exc:
            raise click.ClickException(f"--at 时间格式不正确（ISO 8601，带时区）/ --at: {exc}") from None
    try:
        started = service.start_offboarding(
            db.session, userid=userid, source="cli", effective_at=effective_at, requested_by=f"user:{actor}",
            reason=reason,
        )  # fmt: skip
    except service.OffboardingError as exc:
        db.session.rollback()
        _fail(exc)
    view = service.view(db.session, started.offboarding_id)
    db.session.commit()
    if as_json:
        _echo_json(view)
        return
    if not started.created:
        click.echo("已有进行中的离职处理，沿用 / an offboarding of this person already exists; reused")
    _print(view)


@offboard_group.command("status")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def offboard_status(ref: str, as_json: bool) -> None:
    """Progress and outcome of the latest offboarding of USERID (or offboarding ID)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import offboarding as service

    view = service.status(db.session, ref)
    db.session.commit()
    if view is None:
        raise click.ClickException(f"没有 {ref} 的离职处理 / no offboarding for {ref!r}")
    _echo_json(view) if as_json else _print(view)


@offboard_group.command("cancel")
@click.argument("offboarding_id", type=int)
@click.option("--by", "actor", required=False, help="Who cancels (recorded in the audit log).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def offboard_cancel(offboarding_id: int, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Cancel an offboarding before it runs."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import offboarding as service

    if not actor:
        raise click.ClickException("需要 --by 姓名 / needs --by NAME")
    try:
        service.cancel(db.session, offboarding_id, f"user:{actor}", reason)
    except service.OffboardingError as exc:
        db.session.rollback()
        _fail(exc)
    view = service.status(db.session, offboarding_id)
    db.session.commit()
    _echo_json(view) if as_json else _print(view)


# --- employee numbers (工号) ---------------------------------------------------------------------
@offboard_group.group("employees")
def employees_group() -> None:
    """Employee numbers (工号) the HR API may offboard by: `employees import FILE.csv`, `employees show ID`."""


@employees_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--replace", is_flag=True, help="Make the table exactly the file (numbers not in it are removed).")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change; store nothing.")
@click.option("--by", "actor", default=None, help="Who imports (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def employees_import(path: str, replace: bool, dry_run: bool, actor: str | None, as_json: bool) -> None:
    """Import the 工号 table from a CSV file with the header employee_id,userid (UTF-8).

    Every row is checked first (blank or duplicate numbers, userids not in the directory mirror):
    one bad row and nothing is stored. Numbers are kept exactly as written, trimmed.
    """
    import getpass
    from pathlib import Path

    from wecom_plugin.extensions import db
    from wecom_plugin.services import employee_numbers as numbers

    file = Path(path)
    try:
        parsed = numbers.parse_csv(file.read_bytes())
        result = numbers.import_rows(
            db.session, parsed, actor=f"user:{actor or getpass.getuser()}", source=f"csv:{file.name}",
            replace=replace, dry_run=dry_run,
        )  # fmt: skip
    except numbers.ImportRefused as exc:
        db.session.rollback()
        for line, problem in exc.problems[: numbers.MAX_REPORTED]:
            click.echo(f"  第 {line} 行 line {line}: {problem}" if line else f"  {problem}", err=True)
        if len(exc.problems) > numbers.MAX_REPORTED:
            more = len(exc.problems) - numbers.MAX_REPORTED
            click.echo(f"  … 另有 {more} 处 / and {more} more", err=True)
        raise click.ClickException(str(exc)) from None
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
    if as_json:
        _echo_json(result.as_dict())
        return
    head = "试运行，未写入 / dry run, nothing stored" if dry_run else "已导入 / imported"
    click.echo(
        f"{head}: {result.rows} 行 rows; 新增 added {result.added}, 更新 updated {result.updated}, "
        f"不变 unchanged {result.unchanged}, 删除 removed {result.removed}"
    )


@employees_group.command("show")
@click.argument("employee_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def employees_show(employee_id: str, as_json: bool) -> None:
    """Who EMPLOYEE_ID names: the imported table, the directory field, and what the HR API would use."""
    from flask import current_app

    from wecom_plugin.extensions import db
    from wecom_plugin.services import employee_numbers as numbers

    field = current_app.extensions["wecom_settings"].employee_id_field
    info = numbers.show(db.session, employee_id, field)
    db.session.rollback()
    if as_json:
        _echo_json(info)
        return
    click.echo(f"工号 employee number {info['employee_id']}")
    mapping = info["mapping"]
    if mapping:
        when = f"导入 imported {mapping['imported_at']}, {mapping['source']}"
        click.echo(f"  对照表 table: {mapping['userid']}  ({when})")
    else:
        click.echo("  对照表 table: -")
    if field:
        members = ", ".join(f"{m['userid']} (status {m['status']})" for m in info["directory_members"]) or "-"
        click.echo(f"  通讯录字段 directory field {field}: {members}")
    else:
        click.echo("  通讯录字段 directory field: 未配置 / off (EMPLOYEE_ID_FIELD)")
    resolved = info["resolves_to"]
    if resolved is None:
        raise click.ClickException(f"无法解析 / does not resolve: {info['problem']}")
    click.echo(f"  → {resolved['userid']} (via {resolved['via']})")
