"""``wecom-plugin groups ...``: group governance from the command line.

This module defines the ``groups`` command group and the switches (``mode``, ``kill-switch``);
the registry commands (request, approve, show, export...) and the member check commands (audit,
preview, confirm) attach themselves to :data:`groups_group` from their own modules.

Output is Chinese first, English second for people; ``--json`` for scripts. Errors end in one
clear line (exit code 1), never a traceback. Every change names who made it (``--by``), for the
audit log.
"""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext


def register(cli: click.Group) -> None:
    cli.add_command(groups_group)
    # The registry and the member check add their commands to groups_group when imported.
    for module in ("wecom_plugin.cli_groups_registry", "wecom_plugin.cli_groups_check"):
        try:
            __import__(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


@click.group("groups", cls=AppGroup)
def groups_group() -> None:
    """Governed groups (受管群): registry, member checks, the governance mode and kill switch."""


def echo_json(value) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def default_mode() -> str:
    return current_app.extensions["wecom_settings"].governance_mode


def print_switches(state) -> None:
    view = state.as_dict()
    click.echo(f"模式 mode: {view['mode']} — {view['mode_zh']} / {view['mode_en']}")
    click.echo(f"紧急停止 kill switch: {'开 ON — 不会做任何群成员更改' if view['kill_switch'] else '关 off'}")
    if view["mode_source"] == "setting":
        click.echo("（来自 GOVERNANCE_MODE 设置 / from the GOVERNANCE_MODE setting）")


@groups_group.command("mode")
@click.argument("mode", required=False, type=click.Choice(["observe", "dry_run", "enforce"], case_sensitive=False))
@click.option("--by", "actor", help="Who changes it (required to change; recorded in the audit log).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_mode(mode: str | None, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Show the governance mode, or set it: observe -> dry_run -> enforce. Audited."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import governance_switches as switches

    if mode is None:
        state = switches.effective(db.session, default_mode())
    else:
        if not actor:
            raise click.ClickException("更改模式需要 --by 姓名 / changing the mode needs --by NAME")
        state = switches.set_mode(db.session, f"user:{actor}", mode, default_mode(), reason)
        db.session.commit()
    echo_json(state.as_dict()) if as_json else print_switches(state)


@groups_group.command("kill-switch")
@click.argument("position", type=click.Choice(["on", "off", "status"], case_sensitive=False), default="status")
@click.option("--by", "actor", help="Who throws or releases it (required to change; audited).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_kill_switch(position: str, actor: str | None, reason: str | None, as_json: bool) -> None:
    """Stop every membership change at once (on), or let them resume (off). Audited."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import governance_switches as switches

    position = position.lower()
    if position == "status":
        state = switches.effective(db.session, default_mode())
    else:
        if not actor:
            raise click.ClickException("需要 --by 姓名 / needs --by NAME")
        state = switches.set_kill_switch(db.session, f"user:{actor}", position == "on", default_mode(), reason)
        db.session.commit()
    echo_json(state.as_dict()) if as_json else print_switches(state)
