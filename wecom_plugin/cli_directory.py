"""``wecom-plugin directory ...``: sync, status, show one member, confirm a braked sync.

Output is Chinese first, English second for people; ``--json`` for scripts. Errors end in one
clear line (exit code 1), never a traceback; a setup problem (60020, 60011, 48009, 48002...)
prints what to change in the WeCom admin console.
"""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext


def register(cli: click.Group) -> None:
    cli.add_command(directory_group)


@click.group("directory", cls=AppGroup)
def directory_group() -> None:
    """The directory mirror (通讯录镜像): sync from WeCom, status, one member, confirm the brake."""


def _echo_json(value) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _run(**options):
    """Run a sync in this process; a busy mirror or a WeCom failure ends in one clear line."""
    from wecom_plugin.errors import PluginError, describe_error
    from wecom_plugin.services.directory_sync import SyncBusy, run_sync

    try:
        return run_sync(current_app._get_current_object(), **options)  # noqa: SLF001
    except SyncBusy as exc:
        raise click.ClickException(f"另一个同步正在运行 / {exc}") from None
    except PluginError as exc:
        raise click.ClickException(f"同步失败 / directory sync failed: {describe_error(exc)}") from None


def _print_report(report, as_json: bool) -> None:

    if as_json:
        _echo_json(report.as_dict())
    else:
        s = report.stats
        click.echo(f"同步 #{report.sync_id}: {report.state}{'（演练，未写入）' if report.dry_run else ''}")
        click.echo(f"sync #{report.sync_id}: {report.state}{' (dry run, nothing written)' if report.dry_run else ''}")
        click.echo(
            f"  departments {s.get('departments', 0)}, members {s.get('members', 0)}, tags {s.get('tags', 0)}, "
            f"API calls {s.get('api_calls', 0)}"
        )
        click.echo(
            f"  hired {s.get('hired', 0)}, updated {s.get('updated', 0)}, renamed {s.get('renamed', 0)}, "
            f"departed {s.get('departed', 0)}, departments changed {s.get('departments_changed', 0)}, "
            f"tags changed {s.get('tags_changed', 0)}"
        )
        if report.planned_departures:
            click.echo(
                f"  已暂停：{len(report.planned_departures)} 人将被判定离职，超过上限。确认请运行 "
                "`wecom-plugin directory confirm --by 姓名`"
            )
            click.echo(
                f"  braked: {len(report.planned_departures)} members would depart, over the limit; if that is "
                "real, run `wecom-plugin directory confirm --by NAME`"
            )
        if report.error:
            click.echo(f"  {report.error}")
    if report.state == "failed":
        raise click.ClickException(report.error or "directory sync failed")


@directory_group.command("sync")
@click.option("--full", is_flag=True, help="Also walk tags (tag/list + tag/get), as reconciliation does.")
@click.option("--dry-run", is_flag=True, help="Read everything, change nothing; report what would change.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@with_appcontext
def directory_sync(full: bool, dry_run: bool, as_json: bool) -> None:
    """Sync the mirror from WeCom now (departments and members; --full adds tags).

    Exit status: 0 done, 1 failed (the message says what to change), 3 braked or incomplete.
    """
    report = _run(dry_run=dry_run, trigger="cli", include_tags=full)
    _print_report(report, as_json)
    if report.state in ("braked", "incomplete"):
        raise SystemExit(3)  # not an error in the tool, but not done either: scripts must notice


@directory_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable status.")
@with_appcontext
def directory_status(as_json: bool) -> None:
    """Last sync, members by status, the pending brake and drift."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.directory_status import status

    info = status(db.session)
    db.session.rollback()
    if as_json:
        _echo_json(info)
        return
    members = ", ".join(f"{k} {v}" for k, v in info["members"].items()) or "none"
    click.echo(f"成员 members: {members}; 部门 departments {info['departments']}; 标签 tags {info['tags']}")
    for label, key in (("最近同步 last sync", "last_sync"), ("最近完整同步 last complete sync", "last_complete_sync")):
        sync = info[key]
        if sync is None:
            click.echo(f"{label}: never")
        else:
            when = sync["finished_at"] or sync["started_at"]
            click.echo(f"{label}: #{sync['id']} {sync['state']} ({sync['trigger']}) at {when}")
    brake = info["pending_brake"]
    if brake:
        click.echo(
            f"待确认 pending brake: sync #{brake['id']} would mark {brake['planned_departures']} members departed; "
            "`wecom-plugin directory confirm --by NAME`"
        )
    else:
        click.echo("待确认 pending brake: none")
    drift = ", ".join(f"{k} {v}" for k, v in info["drift"].items())
    click.echo(f"漂移 drift (fixed by the last complete sync): {drift}")
    click.echo(f"待处理离职/调动记录 outbox pending: {info['outbox_pending']}")


@directory_group.command("show")
@click.argument("userid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable.")
@with_appcontext
def directory_show(userid: str, as_json: bool) -> None:
    """One member: status, departments, tags and recent history."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.directory_status import DirectoryError, show

    try:
        info = show(db.session, userid)
    except DirectoryError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        db.session.rollback()
    if as_json:
        _echo_json(info)
        return
    click.echo(f"{info['name']} ({info['userid']}) #{info['id']}: {info['status_zh']} / {info['status_name']}")
    for d in info["departments"]:
        lead = " 负责人 leader" if d["leader"] else ""
        main = " 主部门 main" if d["id"] == info["main_department"] else ""
        click.echo(f"  部门 department {d['id']} {d['name']}{main}{lead}")
    if info["position"]:
        click.echo(f"  职务 position: {info['position']}")
    if info["direct_leaders"]:
        click.echo(f"  直属上级 direct leaders: {', '.join(info['direct_leaders'])}")
    if info["tags"]:
        click.echo(f"  标签 tags: {', '.join(info['tags'])}")
    if info["departed_at"]:
        click.echo(f"  离职时间 departed at: {info['departed_at']}")
    click.echo("  历史 history:")
    for h in info["history"]:
        click.echo(f"    {h['at']} {h['kind']} ({h['source']}) {json.dumps(h['detail'], ensure_ascii=False)}")


@directory_group.command("confirm")
@click.argument("sync_id", required=False, type=click.IntRange(1))
@click.option("--by", "actor", required=True, help="Who confirms (recorded in the audit log).")
@click.option("--reason", default=None, help="Why (recorded in the audit log).")
@click.option("--no-sync", is_flag=True, help="Only record the confirmation; the next scheduled sync applies it.")
@with_appcontext
def directory_confirm(sync_id: int | None, actor: str, reason: str | None, no_sync: bool) -> None:
    """Confirm a braked sync: its departures are real. Audited; then runs the sync that applies them."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services.directory_status import DirectoryError, confirm_brake

    try:
        view = confirm_brake(db.session, f"user:{actor}", sync_id, reason)
    except DirectoryError as exc:
        db.session.rollback()
        raise click.ClickException(str(exc)) from None
    if no_sync:
        enqueue("directory.sync", {"trigger": "confirm", "confirmed_sync": view["id"]}, session=db.session)
    db.session.commit()
    click.echo(f"已确认 confirmed: sync #{view['id']} ({view['planned_departures']} departures) by {actor}")
    if not no_sync:
        _print_report(_run(trigger="confirm", confirmed_sync=view["id"]), as_json=False)
