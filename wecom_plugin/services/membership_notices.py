"""What the member check tells people, Chinese first: removed members, members flagged by the
real-name rule, and one digest per admin per run.

WeCom silently drops more than 30 app messages a minute (1,000 an hour) to one person, so an admin
gets **one** digest per run listing all their chats, never a message per chat; a long digest is cut
into as few messages as fit WeCom's 2,048-byte text limit. Messages are built here from the
database (the job payload carries only ids) and sent by the ``groups.notify`` job, one
at-most-once step per recipient, with WeCom's duplicate check on: a retried job never sends twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain.directory import DISABLED, LEFT, fold
from wecom_plugin.domain.membership import REAL_NAME_FAILURES, REASONS
from wecom_plugin.services.directory_view import people_status
from wecom_plugin.services.membership_check import CHANGE, CHECK, GROUP, MANUAL

TEXT_LIMIT = 2000  # bytes; WeCom's text limit is 2,048
ACTION_ZH = {"remove": "移出", "add": "加入", "owner": "改任群主"}


@dataclass(frozen=True)
class Notice:
    key: str  # the step target: unique per message of one job
    userid: str
    content: str


def _reason(code: str) -> tuple[str, str]:
    if code == "owner_gone":
        return ("原群主已不能担任群主", "the previous owner is gone")
    if code == "offboarding":
        return ("离职交接", "offboarding")
    return REASONS.get(code, (code, code))


def _names(people: dict[str, tuple[str, str, int]], userids: Iterable[str]) -> str:
    out = []
    for u in userids:
        person = people.get(fold(u))
        out.append(f"{person[1]}（{u}）" if person and person[1] else u)
    return "、".join(out)


def _contacts(group: Any) -> list[str]:
    return [a for a in (group.admins or ()) if a] or ([group.owner] if group.owner else [])


def _reachable(people: dict[str, tuple[str, str, int]], userid: str) -> bool:
    person = people.get(fold(userid))
    return person is not None and person[2] not in (LEFT, DISABLED)


def removed_notices(conn: Any, change_ids: list[int]) -> list[Notice]:
    """One message per removed member who is still in the company: which group, why, how to get back.
    Only a check's removals: an offboarded person left (HR tells them, not the plugin)."""
    rows = list(conn.execute(sa.select(CHANGE).where(CHANGE.c.id.in_(change_ids), CHANGE.c.action == "remove")))
    groups = _groups(conn, {r.group_id for r in rows})
    people = people_status(conn, [r.userid for r in rows] + [u for g in groups.values() for u in _contacts(g)])
    out = []
    for row in rows:
        group = groups.get(row.group_id)
        if group is None or row.state != "applied" or row.source != "check" or not _reachable(people, row.userid):
            continue
        zh, en = _reason(row.reason)
        contacts = _contacts(group)
        who = _names(people, contacts) or "群管理员"
        content = (
            f"【群成员调整】您已被移出群聊「{group.name}」。\n原因：{zh}。\n"
            f"如果这是误操作，请联系群管理员 {who} 申请重新加入。\n\n"
            f'You were removed from the group chat "{group.name}". Reason: {en}. '
            f"If this is a mistake, contact the group admin {', '.join(contacts) or ''} to be added back."
        )
        out.append(Notice(f"removed:{row.id}", row.userid, _fit(content)))
    return out


def warn_notices(conn: Any, change_ids: list[int], grace_days: int) -> list[Notice]:
    """One message per member flagged by the real-name rule (told once, at the start of the grace)."""
    rows = list(conn.execute(sa.select(CHANGE).where(CHANGE.c.id.in_(change_ids), CHANGE.c.action == "warn")))
    groups = _groups(conn, {r.group_id for r in rows})
    people = people_status(conn, [r.userid for r in rows] + [u for g in groups.values() for u in _contacts(g)])
    out = []
    for row in rows:
        group = groups.get(row.group_id)
        if group is None or row.state != "observed" or not _reachable(people, row.userid):
            continue
        zh, en = REAL_NAME_FAILURES.get(
            row.detail or "", ("通讯录姓名不是真实姓名", "the directory name is not a real name")
        )
        contacts = _contacts(group)
        content = (
            f"【实名提醒】您在群聊「{group.name}」中，但{zh}。"
            f"请在 {grace_days} 天内让通讯录管理员改为真实姓名，否则将被移出该群。"
            f"如有疑问请联系群管理员 {_names(people, contacts) or '群管理员'}。\n\n"
            f'Real-name reminder: you are in the group chat "{group.name}" but {en}. Please have the directory '
            f"admin set your real name within {grace_days} days, or you will be removed from the chat."
        )
        out.append(Notice(f"warn:{row.id}", row.userid, _fit(content)))
    return out


def digest_notices(conn: Any, check_id: int) -> list[Notice]:
    """One digest per admin for one run: every chat of theirs with changes, in as few messages as fit."""
    check = conn.execute(sa.select(CHECK).where(CHECK.c.id == check_id)).first()
    if check is None:
        return []
    per_admin: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}
    entries = [
        g
        for g in (check.report or {}).get("groups", [])
        if g.get("planned") in ("pending", "dry_run")
        and (g.get("removals") or g.get("additions") or (g.get("owner") or {}).get("new"))
    ]
    contacts_of = {}
    for entry in entries:
        contacts = [a for a in entry.get("admins") or () if a] or (
            [entry["owner_registered"]] if entry.get("owner_registered") else []
        )
        contacts_of[entry["group_id"]] = contacts
    people = people_status(conn, [u for c in contacts_of.values() for u in c])
    for entry in entries:
        block = _digest_block(entry)
        for admin in contacts_of[entry["group_id"]]:
            if not _reachable(people, admin):
                continue
            spelled.setdefault(fold(admin), admin)
            per_admin.setdefault(fold(admin), []).append(block)
    out = []
    for folded, blocks in per_admin.items():
        header = (
            f"【群成员检查 #{check_id}】您管理的 {len(blocks)} 个群有成员调整 / "
            f"member check: {len(blocks)} of your chats change\n"
        )
        parts = _pack(header, blocks)
        for i, text in enumerate(parts, 1):
            suffix = f"（{i}/{len(parts)}）" if len(parts) > 1 else ""
            out.append(Notice(f"digest:{check_id}:{folded}:{i}", spelled[folded], _fit(text + suffix)))
    return out


def _digest_block(entry: dict[str, Any]) -> str:
    dry = entry.get("planned") == "dry_run"
    lines = [f"■ {entry.get('name')}{'（首次检查，仅演练，未执行 / first check: dry run）' if dry else ''}"]
    for key, verb in (("removals", "移出"), ("additions", "加入")):
        for f in entry.get(key) or ():
            who = f"{f.get('name')}（{f['userid']}）" if f.get("name") and f.get("name") != f["userid"] else f["userid"]
            lines.append(f"  {verb} {who}：{f.get('reason_zh') or _reason(f.get('reason', ''))[0]}")
    owner = entry.get("owner") or {}
    if owner.get("new"):
        lines.append(f"  群主改为 {owner['new']}（原群主 {owner.get('registered') or '-'} 已不能担任）")
    if entry.get("warnings"):
        lines.append(f"  实名提醒 {len(entry['warnings'])} 人")
    return "\n".join(lines)


def _pack(header: str, blocks: list[str]) -> list[str]:
    parts: list[str] = []
    current = header
    for block in blocks:
        candidate = f"{current}\n{block}"
        if len(candidate.encode()) > TEXT_LIMIT - 40 and current != header:
            parts.append(current)
            current = f"{header}\n{block}"
        else:
            current = candidate
    parts.append(current)
    return parts


def _fit(text: str) -> str:
    data = text.encode()
    if len(data) <= TEXT_LIMIT:
        return text
    return data[: TEXT_LIMIT - 3].decode("utf-8", "ignore") + "…"


def _groups(conn: Any, ids: set[int]) -> dict[int, Any]:
    if not ids:
        return {}
    return {g.id: g for g in conn.execute(sa.select(GROUP).where(GROUP.c.id.in_(sorted(ids))))}


MANUAL_TITLES = {
    "offboarding_remove": ("请人工移出离职人员", "remove a leaver by hand"),
    "not_app_chat": ("群成员需人工调整", "change the chat's members by hand"),
    "owner_needed": ("请指定新群主", "choose a new chat owner"),
    "admin_needed": ("请指定新的群管理员", "designate a new chat admin"),
}


def queue_manual_notice(session: Any, action_id: int) -> None:
    """Tell a manual action's assignee, once (the dedupe key: one job per action; the job's step is
    at-most-once). Joins the caller's transaction."""
    from wecom_plugin.runtime.queue import enqueue

    enqueue("groups.notify", {"kind": "manual", "action_id": int(action_id)},
            dedupe_key=f"groups.notify:manual:{int(action_id)}", session=session)  # fmt: skip


def manual_notices(conn: Any, action_id: int) -> list[Notice]:
    """The one message to a manual action's assignee (none when nobody is assigned or they left):
    what to do and why, Chinese first."""
    action = conn.execute(sa.select(MANUAL).where(MANUAL.c.id == action_id)).first()
    if action is None or not action.assignee or action.state != "open":
        return []
    people = people_status(conn, [action.assignee])
    if not _reachable(people, action.assignee):
        return []
    detail = action.detail or {}
    title_zh, title_en = MANUAL_TITLES.get(action.kind, ("需要人工处理", "a person must act"))
    zh = detail.get("zh") or title_zh
    en = detail.get("en") or title_en
    content = (
        f"【群治理待办 #{action.id}】{title_zh}\n{zh}。\n"
        "接口无法自动完成，需要您处理；处理后请告知管理员关闭此待办。\n\n"
        f"[Group governance to-do #{action.id}] {title_en}: {en}. "
        "The API cannot do this, so it needs you; tell the administrator once done so the to-do is closed."
    )
    return [Notice(f"manual:{action.id}", action.assignee, _fit(content))]


def build(conn: Any, payload: dict[str, Any], settings: Any) -> list[Notice]:
    kind = payload.get("kind")
    if kind == "manual":
        return manual_notices(conn, int(payload["action_id"]))
    if kind == "removed":
        return removed_notices(conn, [int(i) for i in payload.get("change_ids") or ()])
    if kind == "warn":
        return warn_notices(conn, [int(i) for i in payload.get("change_ids") or ()], settings.real_name_grace_days)
    if kind == "digest":
        return digest_notices(conn, int(payload["check_id"]))
    raise ValueError(f"unknown notice kind {kind!r}")


def send(client: Any, notice: Notice) -> dict[str, Any]:
    """message/send one notice, with WeCom's duplicate check (a resend within 4 h is not shown twice)."""
    from wecom_plugin.wecom.api import message

    result = message.send(
        client,
        message.text(notice.content),
        touser=[notice.userid],
        enable_duplicate_check=True,
        duplicate_check_interval=4 * 3600,
    )
    return {"msgid": result.msgid, "rejected": list(result.invaliduser)}
