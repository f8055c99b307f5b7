"""The WeCom side of the registry: create an approved group's chat, welcome its members, tell the
general office (备案); post the notice of an archived group; remind of due reviews.

Creation is idempotent: the chatid is ours (``gov<id><random>``, chosen when the group was
approved and carried in the job's payload, contract §3.1), so a retry after a timeout first reads
the chat with ``appchat/get`` and creates it only when WeCom does not have it. No transaction stays
open across a WeCom call. Chats are created only in enforce mode with the kill switch off: observe
and dry-run change nothing in WeCom, so creation waits (:class:`NotCreatingYet`: the job comes back
later without spending an attempt, the reason on the job), like it does for the kill switch.

The welcome (``appchat/send``) and the general office's notice are at-most-once: a mark
(a ``welcome_sent`` / ``office_told`` version of the group) is committed before each is sent, and a
run that finds the mark does not send again (a crash in between loses the message rather than
repeating it). The general office's ``message/send`` also asks WeCom's duplicate check.

``step(target, action)``: a job passes its :meth:`JobContext.run_step`, so a send already made by
an earlier run is not made again; called directly, each action just runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from wecom_plugin.domain.directory import fold
from wecom_plugin.domain.membership import (
    CHAT_MAX_MEMBERS,
    DEFAULT_PLACEHOLDER_PATTERNS,
    REASONS,
    GroupFacts,
    MembershipRule,
    RealNamePolicy,
    desired_members,
)
from wecom_plugin.errors import PermanentError, RateLimitedError
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.services import governance_switches
from wecom_plugin.services.group_registry import (
    CONFIDENTIALITY,
    RegistryError,
    _record_members,
    get_group,
    jsonable,
    mirror_directory,
    record_event,
    review_message,
    update_group,
)
from wecom_plugin.wecom.api import appchat, message
from wecom_plugin.wecom.errors import (
    APPCHAT_INVALID_CHATID,
    APPCHAT_NOT_FOUND,
    CHATID_NOT_FOUND,
    WeComApiError,
    WeComError,
)

log = logging.getLogger("wecom_plugin.groups")

SYSTEM_ACTOR = "system:groups"
KILL_SWITCH_RETRY_SECONDS = 300
TEXT_MAX_BYTES = message.TEXT_MAX_BYTES
Step = Callable[[str, Callable[[], Any]], Any]


class KillSwitchOn(RateLimitedError):
    """The kill switch is on: nothing is created; the job comes back later, attempt not spent."""

    def __init__(self) -> None:
        super().__init__(
            "紧急停止已开启，暂不建群 / the kill switch is on: the chat is not created yet",
            retry_after=KILL_SWITCH_RETRY_SECONDS,
        )


class NotCreatingYet(RateLimitedError):
    """Observe or dry-run mode: no chat is created; the job comes back later, attempt not spent."""

    def __init__(self, mode: str) -> None:
        super().__init__(
            f"模式为 {mode}，仅在 enforce 模式建群 / mode {mode}: chats are created only in enforce mode",
            retry_after=KILL_SWITCH_RETRY_SECONDS,
        )


def _once(session: Any, group_id: int, mark: str, send: Callable[[], Any]) -> tuple[bool, Any]:
    """At-most-once: commit ``mark`` (a group version) before ``send``; a mark already there: skip."""
    from wecom_plugin.models.groups import GroupVersion

    done = session.execute(
        sa.select(GroupVersion.id).where(GroupVersion.group_id == group_id, GroupVersion.action == mark).limit(1)
    ).first()
    if done is not None:
        session.rollback()
        return False, None
    record_event(session, group_id, action=mark, actor=SYSTEM_ACTOR, reason="", detail={}, outcome="success")
    session.commit()
    return True, send()


def _run(step: Step | None, target: str, action: Callable[[], Any]) -> Any:
    return action() if step is None else step(target, action)


def _client(app: Any, guard: Any, client: Any) -> Any:
    if client is not None:
        return client
    from wecom_plugin.services.wecom import client_for

    return client_for(app, guard=guard)


def real_name_policy(settings: Any) -> RealNamePolicy:
    return RealNamePolicy(
        placeholder_patterns=tuple(settings.real_name_patterns or DEFAULT_PLACEHOLDER_PATTERNS),
        name_grace=timedelta(days=settings.real_name_grace_days),
    )


def initial_members(session: Any, group: GovernedGroup, settings: Any) -> list[str]:
    """Who the new chat starts with: the owner, the admins and the rule's required members who are
    active and real-named (spelled as the directory spells them), owner first.

    Raises :class:`RegistryError` when the owner cannot be a member, or the count is outside 2 to
    1,999 (the app takes the 2,000th seat; WeCom answers 86006).
    """
    directory = mirror_directory(session)
    facts = GroupFacts(rule=MembershipRule.from_doc(group.rule), owner=group.owner, admins=tuple(group.admins or ()))
    desired = desired_members(facts, directory, real_name_policy(settings))
    owner = fold(group.owner)
    if owner not in desired.required:
        why = desired.ineligible.get(owner, "not_in_directory")
        zh, en = REASONS.get(why, (why, why))
        raise RegistryError(f"群主 {group.owner} 不能入群：{zh}", f"the owner {group.owner} cannot be a member: {en}")
    spelled = {f: (directory.person(f).userid if directory.person(f) else f) for f in desired.required}
    admins = [fold(a) for a in group.admins or () if fold(a) in desired.required and fold(a) != owner]
    rest = sorted(f for f in desired.required if f != owner and f not in admins)
    userlist = [spelled[f] for f in [owner, *dict.fromkeys(admins), *rest]]
    limit = CHAT_MAX_MEMBERS - 1
    if not 2 <= len(userlist) <= limit:
        raise RegistryError(
            f"群成员人数为 {len(userlist)}，应在 2 到 {limit} 人之间（企业微信 86006，应用本身占一个名额）",
            f"the chat would have {len(userlist)} members; WeCom takes 2 to {limit} (86006; the app takes a seat)",
        )
    return userlist


def _text_fits(build: Callable[[str, str], str], purpose: str, scope: str) -> str:
    """``build(purpose, scope)`` shortened until it fits a text message (2,048 bytes)."""
    text = build(purpose, scope)
    while len(text.encode()) > TEXT_MAX_BYTES and (purpose or scope):
        if len(scope) >= len(purpose):
            scope = scope[: max(len(scope) - 20, 0)].rstrip() + "…" if len(scope) > 20 else ""
        else:
            purpose = purpose[: max(len(purpose) - 20, 0)].rstrip() + "…" if len(purpose) > 20 else ""
        text = build(purpose, scope)
    return text


def welcome_text(group: GovernedGroup) -> str:
    """The welcome posted into a new chat: purpose, content scope, the real-name rule,
    confidentiality and quiet hours; Chinese first, then English."""
    conf_zh, conf_en = CONFIDENTIALITY.get(group.confidentiality, CONFIDENTIALITY["normal"])
    confidential = group.confidentiality == "confidential"
    quiet = "、".join(group.quiet_windows or []) or "无"
    quiet_en = ", ".join(group.quiet_windows or []) or "none"
    admins = "、".join(group.admins or []) or "无"

    def build(purpose: str, scope: str) -> str:
        return (
            f"欢迎加入「{group.name}」\n"
            f"本群用途：{purpose}\n"
            f"内容范围：{scope or '与本群用途相关的工作内容'}\n"
            "群成员一律实名制：请在企业通讯录中使用真实姓名，未实名的成员将被移出本群。\n"
            f"保密等级：{conf_zh}" + ("（本群内容仅限群成员知悉，请勿截图或转发到群外）" if confidential else "") + "\n"
            f"免打扰时段：{quiet}（此时段内不发布群通知）\n"
            f"群主：{group.owner}；群管理员：{admins}\n"
            "本群已在综合办公室备案，成员由系统按规则维护。\n"
            "\n"
            f"Welcome to \"{group.name}\"\n"
            "Purpose and content scope: as above.\n"
            "Real names only: use your real name in the company directory; members without one are removed.\n"
            f"Confidentiality: {conf_en}" + (" (keep this group's content inside the group)" if confidential else "")
            + "\n"
            f"Quiet hours: {quiet_en} (no group notices then)\n"
            "Registered with the general office; membership is kept to the group's rule."
        )  # fmt: skip

    return _text_fits(build, group.purpose or "", group.content_scope or "")


def office_notice(group: GovernedGroup) -> str:
    """The 备案 notice for the general office when a group's chat exists."""
    conf_zh, conf_en = CONFIDENTIALITY.get(group.confidentiality, CONFIDENTIALITY["normal"])

    def build(purpose: str, scope: str) -> str:
        return (
            f"【群聊备案】受管群「{group.name}」（编号 {group.id}，群ID {group.chatid}）已建立。\n"
            f"用途：{purpose}\n内容范围：{scope or '—'}\n"
            f"申请部门：{group.department_id}；申请人：{group.requested_by}；"
            f"审批人：{group.decided_by or group.approver}\n"
            f"群主：{group.owner}；群管理员：{'、'.join(group.admins or []) or '无'}\n"
            f"保密等级：{conf_zh}；免打扰：{'、'.join(group.quiet_windows or []) or '无'}；"
            f"复核日期：{jsonable(group.review_date) or '未设'}\n"
            "\n"
            f'[Registration] Governed group "{group.name}" (#{group.id}, chat {group.chatid}) was created; '
            f"approved by {group.decided_by or group.approver}; confidentiality {conf_en}; review "
            f"{jsonable(group.review_date) or 'not set'}."
        )

    return _text_fits(build, group.purpose or "", group.content_scope or "")


def archive_text(group: GovernedGroup, reason: str | None) -> str:
    return (
        f"【群归档通知】本群「{group.name}」已归档，今后不再由系统管理（企业微信的应用群无法解散）。"
        + (f"原因：{reason}。" if reason else "")
        + "如需继续使用，请联系综合办公室重新申请。\n\n"
        f'[Archived] This group "{group.name}" is archived and no longer governed (WeCom cannot dissolve an app '
        "chat). To use it again, contact the general office."
    )


def _read_chat(client: Any, chatid: str) -> dict[str, Any] | None:
    """The chat as WeCom has it, or None when WeCom has no chat of that id."""
    try:
        return appchat.get(client, chatid)
    except WeComError as exc:
        if exc.errcode in (APPCHAT_NOT_FOUND, CHATID_NOT_FOUND, APPCHAT_INVALID_CHATID):
            return None
        raise


def _fail(group_id: int, why: RegistryError | WeComError) -> PermanentError:
    """Record why the chat could not be created on the group (a version row), commit, and say so."""
    session = db.session
    session.rollback()
    message_text = str(why)
    record_event(
        session, group_id, action="create_failed", actor=SYSTEM_ACTOR, reason=message_text[:2000],
        detail={"errcode": getattr(why, "errcode", None)},
    )  # fmt: skip
    session.commit()
    return PermanentError(f"建群失败 / chat not created: {message_text}")


def create_chat(
    app: Any,
    group_id: int,
    *,
    chatid: str | None = None,
    guard: Any = None,
    client: Any = None,
    step: Step | None = None,
) -> dict[str, Any]:
    """Create an approved group's chat (or find it, after a timeout), activate the group, post the
    welcome and tell the general office. Safe to run again: each part happens once.

    Raises :class:`KillSwitchOn` (retry later) and :class:`PermanentError` (the group cannot have
    its chat as registered: the reason is stored on the group as a ``create_failed`` version).
    """
    settings = app.extensions["wecom_settings"]
    session = db.session
    try:
        group = get_group(session, group_id)
    except RegistryError:
        session.rollback()
        return {"skipped": "no such group"}
    planned = chatid or group.chatid
    result: dict[str, Any] = {"group_id": group.id}
    if group.status == "active":
        if planned and group.chatid != planned:
            session.rollback()
            return {**result, "skipped": f"already active with chat {group.chatid}"}
        planned = group.chatid
        members = [m for m in [group.owner, *(group.admins or [])] if m]
        result["created"] = False
    elif group.status != "approved":
        status = group.status
        session.rollback()
        return {**result, "skipped": f"status {status}"}
    else:
        if not planned:
            from wecom_plugin.services.group_registry import new_chatid

            planned = new_chatid(group.id)
        switches = governance_switches.effective(session, settings.governance_mode)
        if switches.kill_switch:
            session.rollback()
            raise KillSwitchOn()
        if switches.mode != "enforce":
            session.rollback()
            raise NotCreatingYet(switches.mode)
        try:
            members = initial_members(session, group, settings)
        except RegistryError as exc:
            raise _fail(group.id, exc) from None
        name, owner = group.name, group.owner
        session.commit()  # no transaction across the WeCom calls

        client = _client(app, guard, client)
        existing = _read_chat(client, planned)
        if existing is None:
            try:
                appchat.create(client, members, name=name, owner=owner, chatid=planned)
            except WeComApiError as exc:
                existing = _read_chat(client, planned)  # 86001: made by an earlier attempt meanwhile?
                if existing is None:
                    raise _fail(group_id, exc) from None
            result["created"] = existing is None
        else:
            result["created"] = False
        if existing is not None:
            members = list(existing.get("userlist") or members)
        group = get_group(session, group_id)
        if group.status == "approved":
            group = update_group(
                session, group.id, {"status": "active", "chatid": planned}, actor=SYSTEM_ACTOR, action="chat_created"
            )
            _record_members(session, group.id, members)
        session.commit()
    result["chatid"] = planned

    group = get_group(session, group_id)
    welcome = welcome_text(group)
    notice = office_notice(group)
    safe = 1 if group.confidentiality == "confidential" else 0
    office = list(settings.general_office_userids)
    session.commit()
    client = _client(app, guard, client)
    welcomed, _ = _once(
        session,
        group_id,
        "welcome_sent",
        lambda: _run(
            step, "welcome", lambda: appchat.send(client, planned, message.text(welcome), safe=safe, members=members)
        ),
    )
    result["welcome"] = True if welcomed else "already sent"
    if office:
        told, sent = _once(
            session,
            group_id,
            "office_told",
            lambda: _run(
                step,
                "general_office",
                lambda: message.send(client, message.text(notice), touser=office, enable_duplicate_check=True),
            ),
        )
        if not told:
            result["general_office"] = "already told"
            return result
        answer = getattr(sent, "value", sent)  # a job step's result wraps the answer
        rejected = list(getattr(answer, "invaliduser", ()) or ())
        result["general_office"] = {"told": office, "rejected": rejected}
    else:
        log.warning("GENERAL_OFFICE_USERIDS is empty: group %s was not reported to the general office", group_id)
        result["general_office"] = None
    return result


def post_archive_notice(
    app: Any,
    group_id: int,
    *,
    chatid: str | None = None,
    guard: Any = None,
    client: Any = None,
    step: Step | None = None,
) -> dict[str, Any]:
    """Post into an archived group's chat that it is archived and no longer governed."""
    from sqlalchemy import select

    from wecom_plugin.models.groups import GroupVersion

    session = db.session
    group = get_group(session, group_id)
    chatid = chatid or group.chatid
    reason = session.execute(
        select(GroupVersion.reason)
        .where(GroupVersion.group_id == group.id, GroupVersion.action == "archived")
        .order_by(GroupVersion.version.desc())
        .limit(1)
    ).scalar()
    text = archive_text(group, reason)
    session.commit()
    if not chatid:
        return {"skipped": "no chat"}
    client = _client(app, guard, client)
    _run(step, "archive_notice", lambda: appchat.send(client, chatid, message.text(text)))
    return {"group_id": group_id, "chatid": chatid, "posted": True}


def review_recipients(group: GovernedGroup, settings: Any) -> list[str]:
    """The general office and the group's admins (the owner when it has none), once each."""
    people = [*settings.general_office_userids, *(group.admins or [group.owner])]
    out: dict[str, str] = {}
    for userid in people:
        if userid:
            out.setdefault(fold(userid), userid)
    return list(out.values())


def send_review_reminder(
    app: Any, group_id: int, *, guard: Any = None, client: Any = None, step: Step | None = None
) -> dict[str, Any]:
    """Ask the general office and the admins to confirm a group whose review date has come."""
    settings = app.extensions["wecom_settings"]
    session = db.session
    group = get_group(session, group_id)
    if group.status != "active" or group.review_date is None:
        session.rollback()
        return {"skipped": "not due"}
    recipients = review_recipients(group, settings)
    text = review_message(group)
    session.commit()
    client = _client(app, guard, client)
    _run(
        step,
        "remind",
        lambda: message.send(client, message.text(text), touser=recipients, enable_duplicate_check=True),
    )
    return {"group_id": group_id, "told": recipients}
