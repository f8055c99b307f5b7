"""The approver's interactive card (审批卡片): 同意 / 驳回 buttons in WeCom (contract §14.2-§14.4).

1. **Send** (job ``groups.approval_card``, queued by ``request_group``): one ``message/send`` of a
   ``button_interaction`` card to every approver of the request (:func:`group_registry.approvers_of`,
   ``touser`` joined with ``|``). At most once per *content version* of the request (the version of
   the last edit of a field the card shows): an ``approval_card`` version of the group, naming the
   card's ``task_id``, is committed before the send, and a run that finds it does not send again.
   A failure that proves nothing was sent (a refusal, the budget) records ``approval_card_failed``,
   which releases the mark: a retry sends a new card. ``task_id`` = ``grp<id>v<content version>_<random>``
   (``[0-9A-Za-z_-@]``, ≤128 bytes, never reused: WeCom refuses a task_id twice with 42014).
   Texts are clipped to the card's limits (title ≤36, desc ≤44, sub-title ≤160, ≤6 items of
   keyname ≤5 / value ≤30 characters). No ``safe``: WeCom does not document it on template cards.
2. **Click** (``template_card_event``, handled inside ``callbacks.dispatch``; nothing calls WeCom
   there): the card is found by its ``TaskId``, the clicker (``FromUserName``, case-folded) must be an
   approver and the request still ``requested`` and unchanged since the card. Then
   :func:`group_registry.decide` runs with the actor ``wecom:<userid>`` (a rejection's reason is
   ``驳回 (via card)``: a button carries no text) and ``groups.approval_card_update`` is queued, all in
   the transaction that marks the callback handled. Duplicates, a second approver, a click after a
   decision made elsewhere: no second decision, that clicker's card shows the outcome. A stale card
   (the request was edited): no decision, a new card is sent. Anyone else: no decision, audited, and
   one text reply (``groups.approval_card_reply``).
3. **Update** (job ``groups.approval_card_update``): ``message/update_template_card`` with the
   click's ``ResponseCode`` (single use, 72 h) replaces the card, buttons greyed (``replace_text``),
   for every recipient after a decision or for the clicker otherwise. A code already used (42022: an
   earlier attempt of this job) counts as done; an expired or refused code is recorded, not retried.

The send's own ``response_code`` is not kept (the history is shown to people, and the code is a
capability): a decision made with the CLI or the API leaves the cards as they are until someone
clicks one, which then shows the outcome.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import fold
from wecom_plugin.errors import LeaseLostError, PermanentError, PluginError
from wecom_plugin.extensions import db
from wecom_plugin.models.groups import GovernedGroup, GroupVersion
from wecom_plugin.models.inbox import CallbackInbox
from wecom_plugin.runtime.queue import enqueue
from wecom_plugin.services import audit
from wecom_plugin.services.callbacks import register_handler
from wecom_plugin.services.directory_mirror import DEPARTMENT
from wecom_plugin.services.group_registry import (
    CONFIDENTIALITY,
    EDITABLE,
    RegistryError,
    _people,
    approvers_of,
    decide,
    get_group,
    history,
    record_event,
)
from wecom_plugin.wecom.api import message as message_api
from wecom_plugin.wecom.errors import RESPONSE_CODE_USED, WeComApiError
from wecom_plugin.wecom.events import TemplateCardEvent

log = logging.getLogger("wecom_plugin.groups")

SYSTEM_ACTOR = "system:groups"
CARD_MARK, CARD_SENT, CARD_FAILED = "approval_card", "approval_card_sent", "approval_card_failed"
TASK_RE = re.compile(r"^grp([0-9]{1,10})v([0-9]{1,10})_[0-9a-f]{12}$")  # ASCII digits; ids range-checked
APPROVE, REJECT = "approve", "reject"
VIA_CARD = {APPROVE: "同意 (via card)", REJECT: "驳回 (via card)"}
# The card's limits (contract §14.2): characters, not bytes ("建议不超过": WeCom's client cuts longer ones).
TITLE_MAX, DESC_MAX, SUBTITLE_MAX, KEYNAME_MAX, VALUE_MAX, SOURCE_MAX = 36, 44, 160, 5, 30, 20
SOURCE = {"desc": "群聊备案审批", "desc_color": 1}
Step = Callable[[str, Callable[[], Any]], Any]


# --- what the history says about a group's cards ----------------------------------------------------
@dataclass
class Card:
    """One approval card of a group, as its version rows tell it."""

    task_id: str
    content_version: int
    approvers: list[str]
    state: str = "sending"  # sending (or unknown: a crash while sending) | sent | failed (released)
    msgid: str = ""
    rejected: list[str] = field(default_factory=list)


def content_version(rows: Sequence[GroupVersion]) -> int:
    """The version of the request's last edit of a field the card shows (1: as requested)."""
    shown = set(EDITABLE)
    out = 1
    for row in rows:
        if row.version == 1 or (row.before and shown & set(row.after or {})):
            out = max(out, row.version)
    return out


def cards_of(rows: Sequence[GroupVersion]) -> dict[str, Card]:
    """Every card of a group by task_id, in the order sent."""
    out: dict[str, Card] = {}
    for row in rows:
        detail = row.after or {}
        task_id = detail.get("task_id")
        if not isinstance(task_id, str):
            continue
        if row.action == CARD_MARK:
            out[task_id] = Card(task_id, int(detail.get("content_version") or 1), list(detail.get("approvers") or []))
        elif task_id in out and row.action == CARD_SENT:
            card = out[task_id]
            card.state, card.msgid = "sent", str(detail.get("msgid") or "")
            card.rejected = list(detail.get("rejected") or [])
        elif task_id in out and row.action == CARD_FAILED:
            out[task_id].state = "failed"
    return out


def new_task_id(group_id: int, version: int) -> str:
    """``grp<id>v<version>_<12 hex>``: WeCom never takes a task_id twice (42014), across reinstalls too."""
    return f"grp{group_id}v{version}_{secrets.token_hex(6)}"


def queue_card(session: Session, group_id: int, version: int) -> int:
    """Queue the card for content ``version`` of a request (once per version), in the caller's transaction."""
    return enqueue(
        "groups.approval_card", {"group_id": group_id}, dedupe_key=f"groups.approval_card:{group_id}:{version}",
        session=session,
    )  # fmt: skip


# --- texts --------------------------------------------------------------------------------------------
def clip(text: Any, limit: int, *, lines: bool = False) -> str:
    """``text`` in at most ``limit`` characters (an ellipsis marks a cut); one line unless ``lines``."""
    value = str(text or "")
    value = "\n".join(" ".join(line.split()) for line in value.splitlines()) if lines else " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "…"


class _Names:
    """Names from the directory mirror: "姓名（userid）" and department names."""

    def __init__(self, session: Session, userids: Iterable[str], department_ids: Iterable[int | None]) -> None:
        self.people = _people(session, [u for u in userids if u])
        ids = sorted({d for d in department_ids if d is not None})
        self.departments = dict(
            session.execute(sa.select(DEPARTMENT.c.id, DEPARTMENT.c.name).where(DEPARTMENT.c.id.in_(ids))).all()
        ) if ids else {}  # fmt: skip

    def who(self, userid: str | None) -> str:
        if not userid:
            return "—"
        person = self.people.get(fold(userid))
        return f"{person.name}（{person.userid}）" if person is not None and person.name else userid

    def department(self, department_id: int | None) -> str:
        if department_id is None:
            return "—"
        return self.departments.get(department_id) or f"部门 {department_id}"


def _names(session: Session, group: GovernedGroup, *more: str | None) -> _Names:
    users = [group.requested_by, group.owner, group.decided_by, *(group.admins or []), *more]
    return _Names(session, [u for u in users if u], [group.department_id])


def _item(keyname: str, value: str) -> dict[str, Any]:
    return {"keyname": clip(keyname, KEYNAME_MAX), "value": clip(value, VALUE_MAX)}


def _buttons(group_id: int) -> list[message_api.Button]:
    return [
        message_api.Button("同意", key=f"{APPROVE}:{group_id}", style=1),
        message_api.Button("驳回", key=f"{REJECT}:{group_id}", style=4),
    ]


def _title(group: GovernedGroup) -> str:
    return clip(f"申请建群：{group.name}", TITLE_MAX)


def card_message(group: GovernedGroup, names: _Names, task_id: str) -> message_api.Message:
    """The card the approvers get: what the group is for, who asks, who will run it; 同意 / 驳回."""
    conf_zh, _ = CONFIDENTIALITY.get(group.confidentiality, CONFIDENTIALITY["normal"])
    department = names.department(group.department_id)
    admins = "、".join(names.who(a) for a in group.admins or []) or "无"
    return message_api.button_card(
        task_id=task_id,
        title=_title(group),
        desc=clip(f"{department} 申请新建受管群，请审批", DESC_MAX),
        sub_title_text=clip(
            f"用途：{group.purpose or '—'}\n内容范围：{group.content_scope or '—'}", SUBTITLE_MAX, lines=True
        ),  # fmt: skip
        horizontal=[
            _item("申请部门", department),
            _item("申请人", names.who(group.requested_by)),
            _item("群主", names.who(group.owner)),
            _item("群管理员", admins),
            _item("保密等级", conf_zh),
            _item("登记编号", f"#{group.id}"),
        ],
        source={**SOURCE, "desc": clip(SOURCE["desc"], SOURCE_MAX)},
        buttons=_buttons(group.id),
    )


def outcome(group: GovernedGroup) -> str:
    """What the card says once the request is no longer waiting: 已同意 / 已驳回 / 已撤销 / 待审批."""
    if group.status == "rejected":
        return "已驳回"
    if group.decided_by:
        return "已同意"
    return "已撤销" if group.status == "archived" else "待审批"


def outcome_card(group: GovernedGroup, names: _Names, label: str, tz: Any, note: str = "") -> dict[str, Any]:
    """The replacement card (§14.4 B): the outcome and by whom, the buttons greyed (``replace_text``).

    No ``task_id``: whether an update needs the original's is unconfirmed, and a task_id is never reused."""
    decided = group.decided_by and label in ("已同意", "已驳回")
    items = [_item("审批结果", label)]
    if decided:
        items.append(_item("审批人", names.who(group.decided_by)))
        if group.decided_at is not None:
            items.append(_item("审批时间", group.decided_at.astimezone(tz).strftime("%Y-%m-%d %H:%M")))
    items += [_item("申请部门", names.department(group.department_id)), _item("登记编号", f"#{group.id}")]
    desc = note or (f"{label} · {names.who(group.decided_by)}" if decided else label)
    return {
        "card_type": "button_interaction",
        "source": dict(SOURCE),
        "main_title": {"title": _title(group), "desc": clip(desc, DESC_MAX)},
        "horizontal_content_list": items,
        "button_list": [b.as_dict() for b in _buttons(group.id)],
        "replace_text": label,
    }


def not_approver_text(group: GovernedGroup) -> str:
    return (
        f"您不是建群申请「{group.name}」（#{group.id}）的审批人，您的操作未生效，也未改变申请状态。"
        "如有疑问，请联系综合办公室。\n\n"
        f'You are not an approver of the group request "{group.name}" (#{group.id}); your click changed nothing.'
    )


# --- helpers ------------------------------------------------------------------------------------------
def _run(step: Step | None, target: str, action: Callable[[], Any]) -> Any:
    if step is None:
        return action()
    result = step(target, action)
    return getattr(result, "value", result)  # None: an earlier run did it, or the outcome is unknown


def _client(app: Any, guard: Any, client: Any) -> Any:
    if client is not None:
        return client
    from wecom_plugin.services.wecom import client_for

    return client_for(app, guard=guard)


def _record(session: Session, group_id: int, action: str, detail: Mapping[str, Any], outcome: str = "success") -> None:
    """A version row of the group, committed; retried when another writer moved the version meanwhile."""
    for attempt in range(3):
        try:
            record_event(
                session, group_id, action=action, actor=SYSTEM_ACTOR, reason="", detail=detail, outcome=outcome
            )
            session.commit()
            return
        except RegistryError:
            session.rollback()
            if attempt == 2:
                raise


def _wecom_answer(call: Callable[[], Any]) -> dict[str, Any]:
    """WeCom's refusal as a value (a job step records it as done, with the errcode), not an exception."""
    try:
        return {"ok": True, "value": call()}
    except WeComApiError as exc:
        return {"ok": False, "errcode": exc.errcode, "error": str(exc)[:500]}


# --- 1. send --------------------------------------------------------------------------------------------
def send_card(
    app: Any, group_id: int, *, guard: Any = None, client: Any = None, step: Step | None = None
) -> dict[str, Any]:
    """Send the approvers the card for the request as it is now, unless it already has one."""
    session = db.session
    try:
        group = get_group(session, group_id)
    except RegistryError:
        session.rollback()
        return {"skipped": "no such group"}
    if group.status != "requested":
        status = group.status
        session.rollback()
        return {"group_id": group_id, "skipped": f"status {status}"}
    rows = history(session, group.id)
    version = content_version(rows)
    live = [c for c in cards_of(rows).values() if c.content_version == version and c.state != "failed"]
    if live:
        session.rollback()
        return {"group_id": group_id, "skipped": "already sent", "task_id": live[-1].task_id}
    approvers = approvers_of(session, group, app.extensions["wecom_settings"])
    if not approvers:
        session.rollback()
        return {"group_id": group_id, "skipped": "no approver"}
    task_id = new_task_id(group.id, version)
    card = card_message(group, _names(session, group, *approvers), task_id)
    # At most once: the mark is committed before the send (a crash in between loses the card; the
    # CLI and the API still decide).
    record_event(
        session, group.id, action=CARD_MARK, actor=SYSTEM_ACTOR, reason="",
        detail={"task_id": task_id, "content_version": version, "approvers": approvers}, outcome="success",
    )  # fmt: skip
    session.commit()
    client = _client(app, guard, client)

    def send() -> dict[str, Any]:
        answer = _wecom_answer(lambda: message_api.send(client, card, touser=approvers))
        if answer["ok"]:
            sent = answer.pop("value")
            answer.update(msgid=sent.msgid, rejected=list(sent.invaliduser))
        return answer

    try:
        answer = _run(step, f"approval_card:{task_id}", send)
    except LeaseLostError:
        raise  # another worker holds the job now and the mark is its to release
    except PluginError as exc:
        if not exc.side_effect_possible:  # nothing was sent (the budget, a retryable refusal): release the mark
            _record(session, group.id, CARD_FAILED, {"task_id": task_id, "error": str(exc)[:500]}, "failure")
        raise
    if answer is None:
        return {"group_id": group_id, "task_id": task_id, "sent": "unknown"}
    if not answer["ok"]:
        detail = {"task_id": task_id, "errcode": answer["errcode"], "error": answer["error"]}
        _record(session, group.id, CARD_FAILED, detail, "failure")
        raise PermanentError(f"审批卡片未送达 / the approval card was not sent: {answer['error']}")
    rejected = answer["rejected"]
    if rejected:
        log.warning("group %s: WeCom did not deliver the approval card to %s", group_id, ", ".join(rejected))
    _record(session, group.id, CARD_SENT, {"task_id": task_id, "msgid": answer["msgid"], "rejected": rejected})
    return {"group_id": group_id, "task_id": task_id, "approvers": approvers, "rejected": rejected}


# --- 2. click -------------------------------------------------------------------------------------------
def _queue_update(
    session: Session, group_id: int, task_id: str, code: str | None, userids: Sequence[str], kind: str
) -> None:
    if not code:
        log.warning("group %s: a card click without a ResponseCode; the card is not updated", group_id)
        return
    digest = hashlib.sha256(code.encode()).hexdigest()[:32]
    enqueue(
        "groups.approval_card_update",
        {"group_id": group_id, "task_id": task_id, "response_code": code, "userids": list(userids), "kind": kind},
        dedupe_key=f"groups.approval_card_update:{digest}",
        session=session,
    )


def on_card_click(session: Session, event: TemplateCardEvent, row: CallbackInbox) -> None:
    """A ``template_card_event``: decide, or say why not. Writes only (the dispatch job commits them
    with the callback's state); the WeCom calls are the jobs this queues."""
    task_id = (event.task_id or "").strip()
    found = TASK_RE.match(task_id)
    if found is None:
        log.info("callback #%s: a click on a card that is not an approval card (task %r)", row.id, task_id[:128])
        return
    group_id = int(found.group(1))
    clicker = str(event.from_user or "").strip()
    action, _, key_group = (event.event_key or "").partition(":")
    actor = f"wecom:{clicker or '?'}"[:128]
    target = f"group:{group_id}"
    detail: dict[str, Any] = {"task_id": task_id, "key": (event.event_key or "")[:100], "inbox_id": row.id}
    try:
        group = get_group(session, group_id)
    except RegistryError:
        audit.record(actor, "groups.approval_card.click", target=target, reason="no such group", outcome="noop",
                     detail=detail, session=session)  # fmt: skip
        return
    rows = history(session, group.id)
    card = cards_of(rows).get(task_id)
    if card is None or action not in (APPROVE, REJECT) or key_group != str(group.id) or not clicker:
        audit.record(actor, "groups.approval_card.click", target=target, reason="unknown card or button",
                     outcome="noop", detail=detail, session=session)  # fmt: skip
        return
    if fold(clicker) not in {fold(u) for u in approvers_of(session, group, _settings())}:
        audit.record(actor, "groups.approval_card.click", target=target, reason="not an approver of this group",
                     outcome="denied", detail=detail, session=session)  # fmt: skip
        enqueue(
            "groups.approval_card_reply", {"group_id": group.id, "task_id": task_id, "userid": clicker},
            dedupe_key=f"groups.approval_card_reply:{task_id}:{fold(clicker)}"[:255], session=session,
        )  # fmt: skip
        return
    code = event.response_code
    if group.status != "requested":
        audit.record(actor, "groups.approval_card.click", target=target, reason=f"already {group.status}",
                     outcome="noop", detail=detail, session=session)  # fmt: skip
        _queue_update(session, group.id, task_id, code, [clicker], "outcome")
        return
    current = content_version(rows)
    if card.content_version != current:
        audit.record(actor, "groups.approval_card.click", target=target, reason="the request changed after this card",
                     outcome="noop", detail={**detail, "content_version": current}, session=session)  # fmt: skip
        queue_card(session, group.id, current)
        _queue_update(session, group.id, task_id, code, [clicker], "stale")
        return
    decide(session, group.id, approve=action == APPROVE, actor_userid=clicker, reason=VIA_CARD[action], actor=actor)
    audit.record(actor, "groups.approval_card.click", target=target, reason=VIA_CARD[action], detail=detail,
                 session=session)  # fmt: skip
    recipients: dict[str, str] = {}
    for userid in (*card.approvers, clicker):
        recipients.setdefault(fold(userid), userid)
    _queue_update(session, group.id, task_id, code, list(recipients.values()), "outcome")


def _settings() -> Any:
    from flask import current_app

    return current_app.extensions["wecom_settings"]


# --- 3. update, and the reply to anyone else ----------------------------------------------------------
def update_card(
    app: Any,
    group_id: int,
    task_id: str,
    response_code: str,
    userids: Sequence[str],
    kind: str = "outcome",
    *,
    guard: Any = None,
    client: Any = None,
    step: Step | None = None,
) -> dict[str, Any]:
    """Replace the card of ``userids`` with the outcome (or, ``kind="stale"``, with "changed: see the new card")."""
    settings = app.extensions["wecom_settings"]
    session = db.session
    try:
        group = get_group(session, group_id)
    except RegistryError:
        session.rollback()
        return {"skipped": "no such group"}
    names = _names(session, group)
    if kind == "stale":
        body = outcome_card(group, names, "已失效", settings.tz, note="申请内容已修改，已发送新的审批卡片")
    else:
        body = outcome_card(group, names, outcome(group), settings.tz)
    label = body["replace_text"]
    session.rollback()
    client = _client(app, guard, client)
    answer = _run(
        step,
        f"update:{task_id}:{hashlib.sha256(response_code.encode()).hexdigest()[:16]}",
        lambda: _wecom_answer(
            lambda: list(message_api.update_template_card(client, response_code, card=body, userids=userids))
        ),
    )
    result: dict[str, Any] = {"group_id": group_id, "task_id": task_id, "userids": list(userids), "card": label}
    if answer is None:
        return {**result, "updated": "earlier"}
    if not answer["ok"] and answer["errcode"] != RESPONSE_CODE_USED:
        # Expired (72 h), refused: nothing to retry with (the code is single use). Recorded, not raised.
        log.warning("group %s: approval card %s not updated: %s", group_id, task_id, answer["error"])
        outcome_name, result["updated"], result["errcode"] = "failure", False, answer["errcode"]
    else:
        outcome_name, result["updated"] = "success", True
        result["rejected"] = answer.get("value") or []
    audit.record(
        SYSTEM_ACTOR, "groups.approval_card.update", target=f"group:{group_id}", outcome=outcome_name,
        reason=label, detail={k: v for k, v in result.items() if k != "group_id"}, session=session,
    )  # fmt: skip
    session.commit()
    return result


def reply_not_approver(
    app: Any, group_id: int, userid: str, *, guard: Any = None, client: Any = None, step: Step | None = None
) -> dict[str, Any]:
    """Tell someone who clicked without being an approver that nothing happened (a text message)."""
    session = db.session
    try:
        group = get_group(session, group_id)
    except RegistryError:
        session.rollback()
        return {"skipped": "no such group"}
    text = not_approver_text(group)
    session.rollback()
    client = _client(app, guard, client)

    def send() -> dict[str, Any]:
        answer = _wecom_answer(
            lambda: message_api.send(client, message_api.text(text), touser=[userid], enable_duplicate_check=True)
        )
        if answer["ok"]:
            answer["value"] = list(answer["value"].invaliduser)
        return answer

    answer = _run(step, f"reply:{fold(userid)}", send)
    if answer is not None and not answer["ok"]:
        return {"group_id": group_id, "userid": userid, "told": False, "errcode": answer["errcode"]}
    return {"group_id": group_id, "userid": userid, "told": True}


register_handler(TemplateCardEvent, on_card_click)
