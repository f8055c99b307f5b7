"""``wecom-plugin groups ...``: the registry (备案) from the command line.

request, approve, reject, list, show, edit, archive, adopt, exempt, exemptions, unexempt, export,
import, review, migration-notice. Output is Chinese first, English second; ``--json`` for scripts.
Every change names who made it (``--by``). Errors end in one line (exit code 1), never a
traceback, and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext

from wecom_plugin.cli_groups import echo_json, groups_group

LIST_FIELDS = ("admins", "quiet_windows")


@contextmanager
def _use_case() -> Iterator[Any]:
    """One transaction: committed when the block ends, rolled back on any refusal (one clear line)."""
    from wecom_plugin.errors import PluginError, describe_error
    from wecom_plugin.extensions import db
    from wecom_plugin.services.group_registry import RegistryError

    try:
        yield db.session
        db.session.commit()
    except RegistryError as exc:
        if exc.keep_audit:
            db.session.commit()  # only the refusal's audit row
        else:
            db.session.rollback()
        raise click.ClickException(str(exc)) from None
    except PluginError as exc:
        db.session.rollback()
        raise click.ClickException(f"企业微信调用失败 / WeCom call failed: {describe_error(exc)}") from None


def _actor(by: str) -> str:
    if not by or not by.strip():
        raise click.ClickException("需要 --by 账号 / needs --by USERID")
    return f"user:{by.strip()}"


def _read_rule(path: str | None) -> Any:
    if path is None:
        return None
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"无法读取规则文件 / cannot read the rule file {path}: {exc}") from None
    try:
        return yaml.safe_load(text)  # YAML, and JSON (a subset of YAML)
    except yaml.YAMLError:
        raise click.ClickException(f"规则文件不是有效的 YAML/JSON / {path} is not valid YAML or JSON") from None


def _print_group(view: dict[str, Any]) -> None:
    click.echo(f"#{view['id']} {view['name']} — {view['status_zh']} / {view['status_en']} (v{view['version']})")
    click.echo(f"  用途 purpose: {view['purpose']}")
    if view["content_scope"]:
        click.echo(f"  内容范围 content scope: {view['content_scope']}")
    click.echo(f"  申请部门 department: {view['department_id']}；申请人 requested by: {view['requested_by']}")
    click.echo(
        f"  审批人 approver: {view['approver']}；决定 decided: {view['decided_by'] or '-'} {view['decided_at'] or ''}"
    )
    click.echo(f"  群主 owner: {view['owner']}；群管理员 admins: {'、'.join(view['admins']) or '-'}")
    click.echo(
        f"  保密 confidentiality: {view['confidentiality']}；免打扰 quiet: {', '.join(view['quiet_windows']) or '-'}；"
        f"复核 review: {view['review_date'] or '-'}"
    )
    click.echo(f"  群ID chatid: {view['chatid'] or '-'}")
    for w in view.get("warnings", []):
        click.echo(f"  提醒 warning: {w['path'] or '(rule)'}: {w['zh']} / {w['en']}")


@groups_group.command("request")
@click.option("--name", required=True, help="Group name (1-50 characters).")
@click.option("--purpose", required=True, help="What the group is for.")
@click.option("--scope", "content_scope", default="", help="Content scope.")
@click.option("--department", "department_id", type=int, default=None, help="Requesting department id.")
@click.option("--owner", required=True, help="Owner userid.")
@click.option("--admin", "admins", multiple=True, help="Group admin userid (repeatable, or comma-separated).")
@click.option("--rule", "rule_file", type=click.Path(dir_okay=False), help="Membership rule (YAML or JSON file).")
@click.option("--confidentiality", type=click.Choice(["normal", "confidential"]), default="normal")
@click.option("--quiet", "quiet_windows", multiple=True, help="Quiet window HH:MM-HH:MM (repeatable).")
@click.option("--review", "review_date", default=None, help="Review date YYYY-MM-DD.")
@click.option("--by", "by", required=True, help="Requester's userid (recorded).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@with_appcontext
def groups_request(**opts: Any) -> None:
    """Request a governed group (备案申请); an approver is picked and told nothing yet."""
    from wecom_plugin.services import group_registry as registry

    admins = [a.strip() for item in opts["admins"] for a in item.split(",") if a.strip()]
    rule_doc = _read_rule(opts["rule_file"])
    with _use_case() as session:
        group = registry.request_group(
            session,
            name=opts["name"],
            purpose=opts["purpose"],
            content_scope=opts["content_scope"],
            department_id=opts["department_id"],
            requested_by=opts["by"],
            owner=opts["owner"],
            admins=admins,
            rule_doc=rule_doc,
            confidentiality=opts["confidentiality"],
            quiet_windows=list(opts["quiet_windows"]),
            review_date=opts["review_date"],
            actor=_actor(opts["by"]),
        )
        view = registry.view(group)
    if opts["as_json"]:
        echo_json(view)
        return
    click.echo(
        f"已提交申请 #{view['id']}，审批人：{view['approver']} / requested #{view['id']}, approver {view['approver']}"
    )
    _print_group(view)


def _decide(group_id: int, by: str, reason: str | None, approve: bool, as_json: bool) -> None:
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        view = registry.view(registry.decide(session, group_id, approve=approve, actor_userid=by, reason=reason))
    if as_json:
        echo_json(view)
    elif approve:
        click.echo(f"已批准 #{group_id}，将创建群聊 / approved #{group_id}; the chat will be created")
    else:
        click.echo(f"已驳回 #{group_id} / rejected #{group_id}")


@groups_group.command("approve")
@click.argument("group_id", type=int)
@click.option("--by", "by", required=True, help="Approver's userid.")
@click.option("--reason", default=None)
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_approve(group_id: int, by: str, reason: str | None, as_json: bool) -> None:
    """Approve a request (only its approver); the chat is then created by the worker."""
    _decide(group_id, by, reason, True, as_json)


@groups_group.command("reject")
@click.argument("group_id", type=int)
@click.option("--by", "by", required=True, help="Approver's userid.")
@click.option("--reason", required=True)
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_reject(group_id: int, by: str, reason: str, as_json: bool) -> None:
    """Reject a request (only its approver), with a reason."""
    _decide(group_id, by, reason, False, as_json)


@groups_group.command("list")
@click.option("--status", type=click.Choice(["requested", "approved", "rejected", "active", "archived"]))
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_list(status: str | None, as_json: bool) -> None:
    """Registered groups."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        views = [registry.view(g) for g in registry.list_groups(session, status)]
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo("没有登记的群 / no registered groups")
    for v in views:
        click.echo(
            f"#{v['id']}\t{v['status_zh']} {v['status']}\t{v['name']}\t群主 owner {v['owner']}\t{v['chatid'] or '-'}"
        )


@groups_group.command("show")
@click.argument("group_id", type=int)
@click.option("--history", is_flag=True, help="Also list every version: who, when, before and after.")
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_show(group_id: int, history: bool, as_json: bool) -> None:
    """One group, optionally with its history."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        view = registry.view(registry.get_group(session, group_id))
        if history:
            view["history"] = [registry.version_view(v) for v in registry.history(session, group_id)]
    if as_json:
        echo_json(view)
        return
    _print_group(view)
    for v in view.get("history", []):
        click.echo(
            f"  v{v['version']} {v['changed_at']} {v['action']} by {v['actor']}"
            + (f" — {v['reason']}" if v["reason"] else "")
        )
        for key in sorted(v["after"]):
            if key in ("eligible_approvers", "warnings") or key not in v["before"]:
                continue
            click.echo(f"      {key}: {v['before'][key]!r} → {v['after'][key]!r}")


def _parse_set(items: tuple[str, ...]) -> dict[str, Any]:
    from wecom_plugin.services.group_registry import EDITABLE

    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise click.ClickException(f"--set 应为 字段=值 / --set takes field=value, got {item!r}")
        if key not in EDITABLE or key == "rule":
            raise click.ClickException(
                f"不能用 --set 修改“{key}”（规则请用 --rule）；可改：{', '.join(k for k in EDITABLE if k != 'rule')} / "
                f"cannot --set {key!r} (use --rule for the rule)"
            )
        if key in LIST_FIELDS:
            changes[key] = [v.strip() for v in value.split(",") if v.strip()]
        elif key == "review_date":
            changes[key] = value.strip() or None
        else:
            changes[key] = value
    return changes


@groups_group.command("edit")
@click.argument("group_id", type=int)
@click.option("--set", "sets", multiple=True, help="field=value (admins and quiet_windows comma-separated).")
@click.option("--rule", "rule_file", type=click.Path(dir_okay=False), help="New membership rule (YAML/JSON).")
@click.option("--by", "by", required=True)
@click.option("--reason", default=None)
@click.option("--expect-version", "expected_version", type=int, default=None, help="Refuse if changed since.")
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_edit(group_id: int, sets: tuple[str, ...], rule_file: str | None, by: str, reason: str | None,
                expected_version: int | None, as_json: bool) -> None:  # fmt: skip
    """Change registry fields (versioned: who, when, before and after)."""
    from wecom_plugin.services import group_registry as registry

    changes = _parse_set(sets)
    if rule_file:
        changes["rule"] = _read_rule(rule_file)
    if not changes:
        raise click.ClickException("没有要修改的内容（--set 或 --rule） / nothing to change (--set or --rule)")
    with _use_case() as session:
        before = registry.get_group(session, group_id).version
        group = registry.update_group(
            session, group_id, changes, actor=_actor(by), reason=reason, expected_version=expected_version
        )
        view = registry.view(group)
    if as_json:
        echo_json(view)
        return
    if view["version"] == before:
        click.echo("没有变化 / nothing changed")
    else:
        click.echo(f"已更新 #{group_id}，第 {view['version']} 版 / updated #{group_id}, version {view['version']}")
    for w in view.get("warnings", []):
        click.echo(f"  提醒 warning: {w['path']}: {w['zh']} / {w['en']}")


@groups_group.command("archive")
@click.argument("group_id", type=int)
@click.option("--by", "by", required=True)
@click.option("--reason", required=True)
@with_appcontext
def groups_archive(group_id: int, by: str, reason: str) -> None:
    """Stop governing a group; a notice is posted in its chat (WeCom cannot dissolve an app chat)."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        registry.archive(session, group_id, actor=_actor(by), reason=reason)
    click.echo(f"已归档 #{group_id}，将在群内发布通知 / archived #{group_id}; a notice will be posted")


@groups_group.command("adopt")
@click.argument("group_id", type=int)
@click.argument("chatid")
@click.option("--by", "by", required=True)
@with_appcontext
def groups_adopt(group_id: int, chatid: str, by: str) -> None:
    """Govern an existing chat this app created (others' chats: see migration-notice)."""
    from wecom_plugin.services import group_registry as registry

    actor = _actor(by)
    with _use_case() as session:
        group = registry.adopt(session, group_id, chatid, actor=actor)
        status = group.status
    if status == "active":
        click.echo(f"已接管群 {chatid}，首次检查为演练 / adopted {chatid}; the first check is a dry run")
    else:
        click.echo(f"已关联群 {chatid}，批准后生效 / chat {chatid} recorded; governed once approved")


@groups_group.command("exempt")
@click.argument("group_id", type=int)
@click.argument("userid")
@click.option("--reason", required=True)
@click.option("--until", "until", required=True, help="Expiry date YYYY-MM-DD (at most EXEMPTION_MAX_DAYS).")
@click.option("--by", "by", required=True)
@with_appcontext
def groups_exempt(group_id: int, userid: str, reason: str, until: str, by: str) -> None:
    """Let a person stay in a group whatever its rule says, until a date."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        row = registry.add_exemption(session, group_id, userid, reason=reason, expires_at=until, actor=_actor(by))
        expires = registry.jsonable(row.expires_at)
    click.echo(f"已豁免 {userid}，至 {expires} / {userid} exempt until {expires}")


@groups_group.command("exemptions")
@click.argument("group_id", type=int)
@click.option("--all", "include_inactive", is_flag=True, help="Include expired and revoked ones.")
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_exemptions(group_id: int, include_inactive: bool, as_json: bool) -> None:
    """A group's exemptions."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        rows = [
            registry.exemption_view(r)
            for r in registry.list_exemptions(session, group_id, include_inactive=include_inactive)
        ]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("没有豁免 / no exemptions")
    for r in rows:
        revoked = f"（已撤销 revoked {r['revoked_at']}）" if r["revoked_at"] else ""
        click.echo(f"{r['userid']}\t至 until {r['expires_at']}\t{r['reason']}\t{r['created_by']}{revoked}")


@groups_group.command("unexempt")
@click.argument("group_id", type=int)
@click.argument("userid")
@click.option("--by", "by", required=True)
@click.option("--reason", default=None)
@with_appcontext
def groups_unexempt(group_id: int, userid: str, by: str, reason: str | None) -> None:
    """End a person's exemption now."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        registry.revoke_exemption(session, group_id, userid, actor=_actor(by), reason=reason)
    click.echo(f"已撤销 {userid} 的豁免 / {userid}'s exemption revoked")


@groups_group.command("export")
@click.argument("file", required=False, type=click.Path(dir_okay=False, writable=True))
@with_appcontext
def groups_export(file: str | None) -> None:
    """The whole registry as YAML (stdout, or FILE)."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        text = registry.export_yaml(session)
    if file is None:
        click.echo(text, nl=False)
        return
    try:
        Path(file).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"无法写入 / cannot write {file}: {exc}") from None
    click.echo(f"已导出到 {file} / exported to {file}")


@groups_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option("--by", "by", required=True)
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def groups_import(file: str, dry_run: bool, by: str, as_json: bool) -> None:
    """Create or update groups from a YAML export: all entries are checked first; all or nothing."""
    from wecom_plugin.services import group_registry as registry

    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"无法读取 / cannot read {file}: {exc}") from None
    with _use_case() as session:
        report = registry.import_yaml(session, text, actor=_actor(by), dry_run=dry_run)
        if dry_run:
            session.rollback()
    if as_json:
        echo_json(report.as_dict())
        return
    head = "演练（未做任何更改）/ dry run (nothing changed)" if dry_run else "已导入 / imported"
    click.echo(f"{head}: 新建 created {len(report.created)}, 更新 updated {len(report.updated)}, "
               f"不变 unchanged {len(report.unchanged)}")  # fmt: skip
    for item in report.updated:
        click.echo(f"  #{item['id']} {item['name']}: {', '.join(item['fields'])}")
    for w in report.warnings:
        click.echo(f"  提醒 warning: {w['entry']}.{w['path']}: {w['zh']} / {w['en']}")


@groups_group.command("review")
@click.argument("group_id", type=int)
@click.option("--next", "next_review", required=True, help="Next review date YYYY-MM-DD.")
@click.option("--by", "by", required=True)
@click.option("--reason", default=None)
@with_appcontext
def groups_review(group_id: int, next_review: str, by: str, reason: str | None) -> None:
    """Confirm a group is still needed and set its next review date."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        registry.confirm_review(session, group_id, actor=_actor(by), next_review_date=next_review, reason=reason)
    click.echo(f"已确认 #{group_id} 仍需保留，下次复核 {next_review} / confirmed; next review {next_review}")


@groups_group.command("migration-notice")
@click.argument("group_id", type=int)
@with_appcontext
def groups_migration_notice(group_id: int) -> None:
    """The notice the owner of an old, hand-made group is asked to post, naming this governed group."""
    from wecom_plugin.services import group_registry as registry

    with _use_case() as session:
        group = registry.get_group(session, group_id)
        text = registry.migration_notice(group)
        status = group.status
    if status != "active":
        click.echo(f"注意：#{group_id} 尚未建群（{status}） / note: #{group_id} has no chat yet ({status})", err=True)
    click.echo(text)
