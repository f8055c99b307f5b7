"""``wecom-plugin offboard ...``: offboarding (离职处理) from the command line.

* ``wecom-plugin offboard USERID [--at TIME] --by NAME``: take the person out of every governed
  chat (now, or at TIME: ISO 8601 with a UTC offset). Repeats answer the same offboarding.
* ``wecom-plugin offboard status USERID|ID [--json]``: progress and outcome, per chat.
* ``wecom-plugin offboard cancel ID --by NAME``: cancel before it runs.

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
    `offboard cancel ID --by NAME`."""


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
