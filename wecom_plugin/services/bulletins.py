"""Bulletin definitions (通报): create, update, pause, resume, list, load from YAML.

A bulletin is saved only when everything decidable at save time holds (all problems are reported at
once, nothing is written otherwise):

* the message: templates compile in Jinja2's sandbox and use only known variables, msgtype and
  mentions suit every target, confidentiality is honourable on every target (the contract's table in
  :mod:`wecom_plugin.domain.bulletin_message`), a trial render fits WeCom's size limits;
* the targets exist: governed groups that are active (the app created their chat), departments and
  tags of the directory mirror, active users; robot webhook keys are stored Fernet-encrypted and
  shown only as their last four characters;
* a governed group registered as confidential (保密) gets confidential bulletins only;
* the schedule is well formed (:mod:`wecom_plugin.domain.bulletin_schedule`);
* the caller may send it: API clients need the scope ``bulletins``, and ``bulletins:broadcast`` for
  ``@all`` or a department larger than BULLETIN_BROADCAST_DEPARTMENT_SIZE active members.

The bulletin's schedule row (key ``bulletin:<id>``) is written in the same transaction, so the clock
sees exactly the saved definitions. Every change is audited. Callers commit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet
from sqlalchemy.orm import Session

from wecom_plugin.domain import bulletin_message as bm
from wecom_plugin.domain import bulletin_schedule
from wecom_plugin.domain import schedules as specs
from wecom_plugin.models.bulletins import Bulletin, BulletinDelivery, BulletinRun
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.directory import Department, Person, Tag, TagMember
from wecom_plugin.models.groups import GovernedGroup
from wecom_plugin.models.jobs import Schedule
from wecom_plugin.services import audit

JOB_NAME = "bulletins.fire"
SEND_JOB_NAME = "bulletins.send"  # the sends of an occurrence prepared ahead, at its time
SCOPE, BROADCAST_SCOPE = "bulletins", "bulletins:broadcast"
QUIET_POLICIES = ("defer", "urgent", "skip")
STATES = ("active", "paused")
NAME_RE = re.compile(r"^\S(.{0,62}\S)?$")
ROBOT_NAME_MAX = 32
MAX_TARGET_ITEMS = 1000
MAX_PARTIES_OR_TAGS = 100
FIELDS = {"name", "message", "targets", "schedule", "timezone", "confidential", "quiet_policy",
          "misfire_grace_minutes", "state", "version"}  # fmt: skip
TARGET_FIELDS = {"chats", "robots", "users", "departments", "tags"}
BULLETIN = Bulletin.__table__
SCHEDULE = Schedule.__table__


class BulletinError(ValueError):
    """A bulletin request that cannot be carried out; nothing was changed.

    ``problems``: ``(path, zh, en)`` triples, every problem found. ``status``: the HTTP status the
    web layer answers (400 invalid, 403 scope, 404 unknown, 409 changed meanwhile).
    """

    def __init__(self, problems: Iterable[tuple[str, str, str]], *, status: int = 400):
        self.problems = list(problems)
        self.status = status
        super().__init__(self._message())

    def _message(self) -> str:
        def one(p: tuple[str, str, str]) -> str:
            return f"{p[0]}: {p[1]} / {p[2]}" if p[0] else f"{p[1]} / {p[2]}"

        if len(self.problems) == 1:
            return one(self.problems[0])
        n = len(self.problems)
        return f"共 {n} 处问题 / {n} problems: " + "; ".join(one(p) for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": {400: "invalid", 403: "forbidden", 404: "not_found", 409: "conflict"}.get(self.status, "invalid"),
            "message": str(self),
            "problems": [{"path": p[0], "zh": p[1], "en": p[2]} for p in self.problems],
        }


def schedule_key(bulletin_id: int) -> str:
    return f"bulletin:{bulletin_id}"


# --- reading --------------------------------------------------------------------------------------
def get(session: Session, bulletin_id: int) -> Bulletin:
    row = session.get(Bulletin, bulletin_id) if 0 < bulletin_id < 2**31 else None
    if row is None:
        raise BulletinError([("", f"通报 {bulletin_id} 不存在", f"bulletin {bulletin_id} does not exist")], status=404)
    return row


def find(session: Session, ref: str | int) -> Bulletin:
    """A bulletin by id or by name."""
    if isinstance(ref, int) or (str(ref).isascii() and str(ref).isdigit()):
        return get(session, int(ref))
    row = session.scalars(sa.select(Bulletin).where(Bulletin.name == str(ref))).first()
    if row is None:
        raise BulletinError([("", f"通报 {ref!r} 不存在", f"bulletin {ref!r} does not exist")], status=404)
    return row


def list_bulletins(session: Session, state: str | None = None) -> list[Bulletin]:
    query = sa.select(Bulletin).order_by(Bulletin.id)
    if state:
        query = query.where(Bulletin.state == state)
    return list(session.scalars(query))


def view(row: Bulletin, session: Session | None = None) -> dict[str, Any]:
    """The bulletin as shown to people and API clients: robot keys appear only as a hint."""
    targets = dict(row.targets or {})
    targets["robots"] = [
        {"name": r["name"], "chat": r.get("chat", ""), "key_hint": r.get("key_hint", "")}
        for r in targets.get("robots", [])
    ]
    out: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        "message": row.message,
        "targets": targets,
        "schedule": row.schedule,
        "timezone": row.timezone,
        "confidential": row.confidential,
        "quiet_policy": row.quiet_policy,
        "misfire_grace_minutes": row.misfire_grace_seconds // 60,
        "owner": row.owner,
        "version": row.version,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }
    if session is not None:
        next_run = session.execute(
            sa.select(SCHEDULE.c.next_run_at, SCHEDULE.c.enabled).where(SCHEDULE.c.key == schedule_key(row.id))
        ).first()
        upcoming = next_run is not None and next_run.enabled and next_run.next_run_at < bulletin_schedule.NEVER
        out["next_run_at"] = next_run.next_run_at.isoformat() if upcoming else None
    return out


# --- saving ---------------------------------------------------------------------------------------
def save(
    session: Session,
    doc: Mapping[str, Any],
    *,
    actor: str,
    settings: Any,
    scopes: frozenset[str] | None = None,
    bulletin_id: int | None = None,
) -> Bulletin:
    """Create (``bulletin_id`` None) or replace a bulletin from ``doc``; returns the row (not committed).

    ``scopes``: the API client's scopes, or None for the operator's CLI (which may do anything).
    An update may carry ``version`` (compare-and-set: 409 if the bulletin changed meanwhile). A robot
    listed without ``key`` keeps the key stored under the same name.
    """
    existing = get(session, bulletin_id) if bulletin_id is not None else None
    if not isinstance(doc, Mapping):
        raise BulletinError([("", "请求内容应为对象", "the request body must be an object")])
    problems: list[tuple[str, str, str]] = []
    bad_text = _unusable_text(doc)
    if bad_text:
        raise BulletinError([(bad_text, "含有无法保存的字符（NUL 或不成对的代理字符）",
                              "contains a character that cannot be stored (NUL or a lone surrogate)")])  # fmt: skip
    unknown = set(doc) - FIELDS
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        problems.append(("", f"未知字段: {names}", f"unknown field(s): {names}"))
    values = _scalars(doc, settings, existing, problems)
    message = _message_spec(doc.get("message", existing.message if existing else None), problems)
    schedule = _schedule(doc.get("schedule", existing.schedule if existing else None), problems)
    old_robots = {r["name"]: r for r in (existing.targets.get("robots", []) if existing else [])}
    targets_doc = doc.get("targets")
    if targets_doc is None and existing is not None:
        targets_doc = _editable_targets(existing)  # unchanged targets, robots keep their stored keys
    targets, paths, groups = _targets(session, targets_doc, settings, old_robots, problems)
    confidential = values.get("confidential", False)
    if message is not None:
        # With no valid target, the message's own problems (templates, msgtype) are still reported.
        for p in bm.check_definition(message, paths, confidential=confidential):
            problems.append((_message_path(p.field), p.zh, p.en))
    for group in groups or []:
        if group.confidentiality == "confidential" and not confidential:
            zh = f"群「{group.name}」登记为保密群，发往该群的通报必须设为保密（confidential: true）"
            en = f"group {group.name!r} is registered as confidential: bulletins to it must be confidential"
            problems.append(("targets.chats", zh, en))
    if problems:
        raise BulletinError(problems)
    if scopes is not None:
        _check_scopes(session, scopes, targets, settings)
    now = db_now(session)
    fields = {**values, "message": message.to_doc(), "schedule": schedule, "targets": targets}
    if existing is None:
        if session.scalars(sa.select(Bulletin.id).where(Bulletin.name == fields["name"])).first() is not None:
            raise BulletinError(
                [("name", f"名称「{fields['name']}」已被使用", f"the name {fields['name']!r} is taken")]
            )
        row = Bulletin(**fields, owner=actor[:128], version=1, created_at=now, updated_at=now)
        session.add(row)
        session.flush()
        action = "bulletins.create"
    else:
        expected = doc.get("version")
        if expected is not None and expected != existing.version:
            raise _conflict(existing, expected)
        clash = session.scalars(
            sa.select(Bulletin.id).where(Bulletin.name == fields["name"], Bulletin.id != existing.id)
        ).first()
        if clash is not None:
            raise BulletinError(
                [("name", f"名称「{fields['name']}」已被使用", f"the name {fields['name']!r} is taken")]
            )
        result = session.execute(
            sa.update(BULLETIN)
            .where(BULLETIN.c.id == existing.id, BULLETIN.c.version == existing.version)
            .values(**fields, version=existing.version + 1, updated_at=now)
        )
        if result.rowcount != 1:
            raise _conflict(existing, existing.version)
        session.refresh(existing)
        row = existing
        action = "bulletins.update"
    _sync_schedule(session, row, now)
    audit.record(actor, action, target=f"bulletin:{row.id}", detail=_audit_view(row), session=session)
    return row


def _unusable_text(value: Any, path: str = "") -> str | None:
    """The path of the first string holding NUL or a lone surrogate (which no database stores), else None."""
    if isinstance(value, str):
        if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return path or "(document)"
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _unusable_text(key, path) or _unusable_text(item, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _unusable_text(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _conflict(row: Bulletin, expected: Any) -> BulletinError:
    return BulletinError(
        [("version", f"通报已被他人修改（现为第 {row.version} 版，请求基于第 {expected} 版），请刷新后重试",
          f"the bulletin changed meanwhile (now version {row.version}, request based on {expected}); "
          "reload and retry")],
        status=409,
    )  # fmt: skip


def _scalars(doc: Mapping[str, Any], settings: Any, existing: Bulletin | None, problems: list) -> dict[str, Any]:
    def pick(key: str, default: Any) -> Any:
        return doc[key] if key in doc else default

    name = pick("name", existing.name if existing else None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(
            ("name", "名称为 1-64 个字符，首尾不能是空白", "name: 1-64 characters, no leading/trailing space")
        )
    timezone = pick("timezone", existing.timezone if existing else settings.timezone)
    try:
        if not isinstance(timezone, str) or not 0 < len(timezone) <= 64:
            raise ValueError
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        problems.append(("timezone", f"未知时区 {timezone!r}", f"unknown time zone {timezone!r}"))
    confidential = pick("confidential", existing.confidential if existing else False)
    if not isinstance(confidential, bool):
        problems.append(("confidential", "应为 true 或 false", "must be true or false"))
    policy = pick("quiet_policy", existing.quiet_policy if existing else "defer")
    if policy not in QUIET_POLICIES:
        problems.append(("quiet_policy", "免打扰时段处理方式应为 defer（顺延）、urgent（照发并记录）或 skip（跳过）",
                         "quiet_policy must be defer, urgent or skip"))  # fmt: skip
    default_grace = existing.misfire_grace_seconds // 60 if existing else settings.bulletin_misfire_grace_minutes
    grace = pick("misfire_grace_minutes", default_grace)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 1 <= grace <= 24 * 60:
        problems.append(("misfire_grace_minutes", "错过宽限应为 1-1440 分钟", "misfire_grace_minutes must be 1-1440"))
        grace = default_grace
    state = pick("state", existing.state if existing else "active")
    if state not in STATES:
        problems.append(("state", "状态应为 active 或 paused", "state must be active or paused"))
    return {
        "name": name,
        "timezone": str(timezone),
        "confidential": confidential is True,
        "quiet_policy": policy,
        "misfire_grace_seconds": grace * 60,
        "state": state,
    }


def _message_spec(doc: Any, problems: list) -> bm.MessageSpec | None:
    if doc is None:
        problems.append(("message", "缺少消息内容（message）", "message is missing"))
        return None
    try:
        return bm.MessageSpec.from_doc(doc)
    except bm.BulletinMessageError as exc:
        for p in exc.problems:
            problems.append((_message_path(p.field), p.zh, p.en))
        return None


def _message_path(field: str) -> str:
    return field if field == "message" or field.startswith("message.") else f"message.{field}" if field else "message"


def _schedule(doc: Any, problems: list) -> dict[str, Any] | None:
    if doc is None:
        problems.append(("schedule", "缺少发送时间（schedule）", "schedule is missing"))
        return None
    try:
        return bulletin_schedule.validate(doc)
    except specs.SpecError as exc:
        problems.append(("schedule", f"发送时间设置有误：{exc}", f"schedule: {exc}"))
        return None


def _editable_targets(row: Bulletin) -> dict[str, Any]:
    targets = dict(row.targets or {})
    targets["robots"] = [{"name": r["name"], "chat": r.get("chat", "")} for r in targets.get("robots", [])]
    return targets


def _targets(
    session: Session, doc: Any, settings: Any, old_robots: Mapping[str, Any], problems: list
) -> tuple[dict[str, Any], set[str], list[GovernedGroup]]:
    """Validate the target document; returns (stored targets, paths used, governed groups)."""
    if not isinstance(doc, Mapping):
        problems.append(("targets", "缺少发送对象（targets）", "targets is missing"))
        return {}, set(), []
    unknown = set(doc) - TARGET_FIELDS
    if unknown:
        names = ", ".join(sorted(map(str, unknown)))
        problems.append(("targets", f"未知的发送对象类型: {names}", f"unknown target kind(s): {names}"))
    lists: dict[str, list[Any]] = {}
    for kind in TARGET_FIELDS:
        value = doc.get(kind) or []
        if not isinstance(value, list) or len(value) > MAX_TARGET_ITEMS:
            problems.append((f"targets.{kind}", f"应为列表（至多 {MAX_TARGET_ITEMS} 项）",
                             f"must be a list of at most {MAX_TARGET_ITEMS} items"))  # fmt: skip
            value = []
        lists[kind] = value
    groups = _chats(session, lists["chats"], problems)
    robots = _robots(lists["robots"], settings, old_robots, problems)
    users = _users(session, lists["users"], problems)
    departments = _ids(session, Department, lists["departments"], "departments", problems)
    tags = _ids(session, Tag, lists["tags"], "tags", problems)
    for kind, ids in (("departments", departments), ("tags", tags)):
        if len(ids) > MAX_PARTIES_OR_TAGS:  # message/send takes at most 100 of each per call (§4)
            problems.append((f"targets.{kind}", f"至多 {MAX_PARTIES_OR_TAGS} 个（企业微信每次发送的上限）",
                             f"at most {MAX_PARTIES_OR_TAGS} (WeCom's limit per message/send)"))  # fmt: skip
    paths: set[str] = set()
    if groups:
        paths.add(bm.PATH_APPCHAT)
    if robots:
        paths.add(bm.PATH_ROBOT)
    if users or departments or tags:
        paths.add(bm.PATH_MESSAGE)
    if not paths and not any(p[0].startswith("targets") for p in problems):
        problems.append(("targets", "至少需要一个发送对象", "at least one target is needed"))
    stored = {
        "chats": [g.id for g in groups],
        "robots": robots,
        "users": users,
        "departments": departments,
        "tags": tags,
    }
    return stored, paths, groups


def _chats(session: Session, refs: list[Any], problems: list) -> list[GovernedGroup]:
    out: list[GovernedGroup] = []
    for ref in refs:
        group = None
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 < ref < 2**31:
            group = session.get(GovernedGroup, ref)
        elif isinstance(ref, str) and ref.strip():
            matches = list(session.scalars(sa.select(GovernedGroup).where(GovernedGroup.name == ref.strip())))
            active = [g for g in matches if g.status == "active"]
            group = (active or matches or [None])[0]
            if len(active) > 1:
                problems.append(
                    (
                        "targets.chats",
                        f"群名「{ref}」不唯一，请用群编号",
                        f"group name {ref!r} is ambiguous; use its id",
                    )
                )
                continue
        if group is None:
            problems.append(("targets.chats", f"已备案的群 {ref!r} 不存在", f"registered group {ref!r} does not exist"))
        elif group.status != "active" or not group.chatid:
            problems.append(("targets.chats",
                             f"群「{group.name}」（{group.id}）未处于使用中（状态 {group.status}），无法发送",
                             f"group {group.name!r} ({group.id}) is not active (status {group.status})"))  # fmt: skip
        elif group.id not in {g.id for g in out}:
            out.append(group)
    return out


def _robots(refs: list[Any], settings: Any, old: Mapping[str, Any], problems: list) -> list[dict[str, str]]:
    from wecom_plugin.wecom.api.robot import webhook_key

    fernet = Fernet(settings.encryption_key)
    out: list[dict[str, str]] = []
    for i, ref in enumerate(refs):
        path = f"targets.robots[{i}]"
        if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref["name"].strip():
            problems.append(
                (path, "机器人需要名称（name）和 webhook 地址或 key（key）", "a robot needs a name and a key")
            )
            continue
        name = ref["name"].strip()
        if len(name) > ROBOT_NAME_MAX:
            problems.append(
                (
                    path,
                    f"机器人名称至多 {ROBOT_NAME_MAX} 个字符",
                    f"a robot name has at most {ROBOT_NAME_MAX} characters",
                )
            )
            continue
        if any(r["name"] == name for r in out):
            problems.append((path, f"机器人名称「{name}」重复", f"duplicate robot name {name!r}"))
            continue
        unknown = set(ref) - {"name", "key", "chat", "key_hint"}
        chat = ref.get("chat", "")
        if unknown or not isinstance(chat, str) or len(chat) > 64:
            zh = "机器人只有 name、key 和 chat（所在群的名称，供 {{ group_name }} 使用）"
            problems.append((path, zh, "a robot has name, key and chat (the name of its chat, for {{ group_name }})"))
            continue
        raw = ref.get("key")
        if raw in (None, "") and name in old:
            out.append({**old[name], "chat": chat.strip() or old[name].get("chat", "")})
            continue
        try:
            key = webhook_key(raw) if isinstance(raw, str) else ""
        except ValueError:
            key = ""
        if not key or len(key) > 200 or any(c.isspace() for c in key):
            problems.append((path, f"机器人「{name}」的 webhook key 无效", f"robot {name!r}: invalid webhook key"))
            continue
        key_enc = fernet.encrypt(key.encode()).decode()
        out.append({"name": name, "chat": chat.strip(), "key_enc": key_enc, "key_hint": "…" + key[-4:]})
    return out


def robot_key(settings: Any, robot: Mapping[str, str]) -> str:
    """The decrypted webhook key of a stored robot target (never log it)."""
    return Fernet(settings.encryption_key).decrypt(robot["key_enc"].encode()).decode()


def _users(session: Session, refs: list[Any], problems: list) -> list[str]:
    if "@all" in refs:
        if len(refs) > 1:
            problems.append(("targets.users", "@all 表示应用可见范围内的全体成员，不能与其他成员并列",
                             "@all means everyone in the app's scope; list nobody else with it"))  # fmt: skip
        return ["@all"]
    wanted = []
    for ref in refs:
        if not isinstance(ref, str) or not ref.strip() or len(ref) > 64:
            problems.append(("targets.users", f"成员账号无效: {ref!r}", f"invalid userid {ref!r}"))
        else:
            wanted.append(ref.strip())
    if not wanted:
        return []
    folded = {u.casefold() for u in wanted}
    found = {p.userid_folded: p for p in session.scalars(sa.select(Person).where(Person.userid_folded.in_(folded)))}
    out: list[str] = []
    for userid in wanted:
        person = found.get(userid.casefold())
        if person is None or person.status != 1:
            problems.append(
                ("targets.users", f"成员 {userid} 不在通讯录中或未在职", f"{userid} is not an active directory member")
            )
        elif person.userid not in out:
            out.append(person.userid)
    return out


def _ids(session: Session, model: Any, refs: list[Any], kind: str, problems: list) -> list[int]:
    ids = []
    for ref in refs:
        if isinstance(ref, bool) or not isinstance(ref, int) or not 0 < ref < 2**32:
            problems.append((f"targets.{kind}", f"编号无效: {ref!r}", f"invalid id {ref!r}"))
        elif ref not in ids:
            ids.append(ref)
    if not ids:
        return []
    known = set(session.scalars(sa.select(model.id).where(model.id.in_(ids), model.deleted_at.is_(None))))
    for ref in ids:
        if ref not in known:
            label = "部门" if kind == "departments" else "标签"
            problems.append(
                (f"targets.{kind}", f"{label} {ref} 不存在于通讯录", f"{kind[:-1]} {ref} is not in the directory")
            )
    return [i for i in ids if i in known]


def reach(session: Session, targets: Mapping[str, Any]) -> set[str]:
    """Who the bulletin's app messages reach, per the mirror: named users, the active members of each
    department's subtree, and each tag's members and tagged departments (their subtrees)."""
    from wecom_plugin.services.bulletin_delivery import department_members

    people = {u for u in targets.get("users", []) if u != "@all"}
    departments = list(targets.get("departments", []))
    tags = list(targets.get("tags", []))
    if tags:
        for tag in session.scalars(sa.select(Tag).where(Tag.id.in_(tags))):
            departments.extend(tag.party_ids or [])
        people.update(
            session.scalars(
                sa.select(Person.userid)
                .join(TagMember, TagMember.person_id == Person.id)
                .where(TagMember.tag_id.in_(tags), Person.status == 1)
            )
        )
    if departments:
        people.update(department_members(session, departments))
    return people


def required_scope(session: Session, targets: Mapping[str, Any], settings: Any) -> str:
    """``bulletins:broadcast`` for @all or when the app messages reach more active members than
    BULLETIN_BROADCAST_DEPARTMENT_SIZE (through departments, tags and named users together), else
    ``bulletins``."""
    if "@all" in targets.get("users", []):
        return BROADCAST_SCOPE
    if len(reach(session, targets)) > settings.bulletin_broadcast_department_size:
        return BROADCAST_SCOPE
    return SCOPE


def _check_scopes(session: Session, scopes: frozenset[str], targets: Mapping[str, Any], settings: Any) -> None:
    needed = required_scope(session, targets, settings)
    if needed in scopes:
        return
    if needed == BROADCAST_SCOPE:
        limit = settings.bulletin_broadcast_department_size
        raise BulletinError(
            [("targets", f"发给 @all 或超过 {limit} 人（部门、标签和成员合计）需要 API 权限 {BROADCAST_SCOPE}",
              f"sending to @all or to more than {limit} members (departments, tags and users together) needs "
              f"the scope {BROADCAST_SCOPE}")],
            status=403,
        )  # fmt: skip
    raise BulletinError([("", f"需要 API 权限 {SCOPE}", f"the scope {SCOPE} is needed")], status=403)


def _sync_schedule(session: Session, row: Bulletin, now: datetime) -> None:
    """Write the bulletin's clock schedule. A changed schedule or zone takes effect from the next
    occurrence after now; an unchanged one keeps its next run (an edit of the text neither skips nor
    repeats an occurrence). Paused bulletins keep their row, disabled."""
    from wecom_plugin.services.workday_calendar import load_calendar

    key = schedule_key(row.id)
    spec = {"kind": bulletin_schedule.KIND, **row.schedule}
    existing = session.execute(sa.select(SCHEDULE).where(SCHEDULE.c.key == key)).first()
    enabled = row.state == "active"
    changed = existing is None or existing.spec != spec or existing.timezone != row.timezone
    # Counts spec changes; the clock copies it into each occurrence's job, so an occurrence
    # materialised before an edit is not sent at a time the schedule no longer has.
    spec_version = ((existing.payload or {}).get("spec_version", 0) if existing is not None else 0) + int(changed)
    values = {
        "job_name": JOB_NAME,
        "payload": {"bulletin_id": row.id, "spec_version": spec_version},
        "misfire_grace_seconds": row.misfire_grace_seconds,
        "coalesce": True,
        "alert_on_miss": True,
        "enabled": enabled,
        "updated_at": now,
    }
    resumed = existing is not None and enabled and not existing.enabled
    if changed or resumed:
        calendar = load_calendar(session.connection(), _settings().calendar_fallback)
        try:
            values["next_run_at"] = specs.next_after(spec, ZoneInfo(row.timezone), now, calendar)
        except specs.SpecError:
            raise BulletinError(
                [
                    (
                        "schedule",
                        "两年内没有任何一次发送时间，请检查日期规则",
                        "no occurrence within two years; check the rule",
                    )
                ]
            ) from None
    if existing is None:
        session.execute(sa.insert(SCHEDULE).values(key=key, origin="data", spec=spec, timezone=row.timezone, **values))
    else:
        session.execute(
            sa.update(SCHEDULE).where(SCHEDULE.c.key == key).values(spec=spec, timezone=row.timezone, **values)
        )


def reschedule_after_calendar_change(session: Session, settings: Any) -> int:
    """The calendar changed (an import): move every enabled bulletin schedule that is not yet due to its
    next occurrence under the new calendar, so a day that became a workday is not skipped and one that
    became a holiday is not waited for. Schedules already due are the clock's. Returns how many moved."""
    from wecom_plugin.services.workday_calendar import load_calendar

    calendar = load_calendar(session.connection(), settings.calendar_fallback)
    now = db_now(session)
    moved = 0
    rows = session.execute(
        sa.select(SCHEDULE.c.id, SCHEDULE.c.spec, SCHEDULE.c.timezone, SCHEDULE.c.next_run_at).where(
            SCHEDULE.c.origin == "data", SCHEDULE.c.enabled.is_(True), SCHEDULE.c.next_run_at > now
        )
    ).all()
    for schedule_id, spec, timezone, current in rows:
        if (spec or {}).get("kind") != bulletin_schedule.KIND:
            continue
        try:
            following = specs.next_after(spec, ZoneInfo(timezone), now, calendar)
        except (specs.SpecError, ValueError):
            continue
        if following != current:
            session.execute(sa.update(SCHEDULE).where(SCHEDULE.c.id == schedule_id).values(next_run_at=following))
            moved += 1
    return moved


def _settings() -> Any:
    from flask import current_app

    return current_app.extensions["wecom_settings"]


def _audit_view(row: Bulletin) -> dict[str, Any]:
    out = view(row)
    out.pop("created_at", None)
    out.pop("updated_at", None)
    return out


def set_state(
    session: Session,
    bulletin_id: int,
    state: str,
    *,
    actor: str,
    reason: str = "",
    scopes: frozenset[str] | None = None,
    settings: Any = None,
) -> Bulletin:
    """Pause or resume. Resuming continues from the next occurrence after now: what fell in the
    pause is not sent afterwards. An API client (``scopes``) resumes only what it may send."""
    row = get(session, bulletin_id)
    if state not in STATES:
        raise BulletinError([("state", "状态应为 active 或 paused", "state must be active or paused")])
    if state == "active" and scopes is not None:
        _check_scopes(session, scopes, row.targets, settings or _settings())
    if row.state == state:
        return row
    now = db_now(session)
    result = session.execute(
        sa.update(BULLETIN)
        .where(BULLETIN.c.id == row.id, BULLETIN.c.version == row.version)
        .values(state=state, version=row.version + 1, updated_at=now)
    )
    if result.rowcount != 1:
        session.refresh(row)
        raise _conflict(row, row.version - 1)
    session.refresh(row)
    _sync_schedule(session, row, now)
    action = "bulletins.resume" if state == "active" else "bulletins.pause"
    audit.record(actor, action, target=f"bulletin:{row.id}", reason=reason or None, session=session)
    return row


def delete(session: Session, bulletin_id: int, *, actor: str) -> None:
    """Remove a bulletin and its schedule; its run and delivery history stays."""
    row = get(session, bulletin_id)
    session.execute(sa.delete(SCHEDULE).where(SCHEDULE.c.key == schedule_key(row.id)))
    audit.record(actor, "bulletins.delete", target=f"bulletin:{row.id}", detail=_audit_view(row), session=session)
    session.delete(row)


# --- history --------------------------------------------------------------------------------------
def history(session: Session, bulletin_id: int, *, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first, each with its deliveries (a deleted bulletin's history too)."""
    if session.get(Bulletin, bulletin_id) is None and not (
        0 < bulletin_id < 2**31
        and session.execute(sa.select(BulletinRun.id).where(BulletinRun.bulletin_id == bulletin_id).limit(1)).first()
    ):
        get(session, bulletin_id)  # 404
    runs = list(
        session.scalars(
            sa.select(BulletinRun)
            .where(BulletinRun.bulletin_id == bulletin_id)
            .order_by(BulletinRun.scheduled_at.desc())
            .limit(max(1, min(limit, 500)))
        )
    )
    deliveries: dict[int, list[BulletinDelivery]] = {}
    if runs:
        for d in session.scalars(
            sa.select(BulletinDelivery)
            .where(BulletinDelivery.run_id.in_([r.id for r in runs]))
            .order_by(BulletinDelivery.id)
        ):
            deliveries.setdefault(d.run_id, []).append(d)
    return [run_view(r, deliveries.get(r.id, [])) for r in runs]


def run_view(run: BulletinRun, deliveries: list[BulletinDelivery]) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "scheduled_at": run.scheduled_at.isoformat(),
        "state": run.state,
        "reason": run.reason,
        "version": run.version,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "deliveries": [delivery_view(d) for d in deliveries],
    }


def delivery_view(d: BulletinDelivery) -> dict[str, Any]:
    return {
        "id": d.id,
        "delivery_id": d.delivery_id,
        "target": d.target,
        "attempt": d.attempt,
        "state": d.state,
        "scheduled_at": d.scheduled_at.isoformat(),
        "due_at": d.due_at.isoformat(),
        "sent_at": d.sent_at.isoformat() if d.sent_at else None,
        "errcode": d.errcode,
        "msgid": d.msgid,
        "reason": d.reason,
        "resend_of": d.resend_of,
    }


# --- policy as code -------------------------------------------------------------------------------
def load_yaml(session: Session, text: str, *, actor: str, settings: Any, dry_run: bool = False) -> list[dict]:
    """Create or update bulletins from a YAML document (one bulletin, or ``bulletins: [...]``), matched
    by name. All or nothing: any problem in any entry refuses the whole file. Returns one line per entry."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"第 {mark.line + 1} 行 / line {mark.line + 1}: " if mark else ""
        raise BulletinError([("", f"{where}YAML 格式错误", f"{where}malformed YAML")]) from None
    if isinstance(doc, dict) and "bulletins" in doc and set(doc) != {"bulletins"}:
        extra = ", ".join(sorted(map(str, set(doc) - {"bulletins"})))
        raise BulletinError(
            [("", f"bulletins: 列表之外不能有其他字段：{extra}", f"unexpected key(s) next to bulletins: {extra}")]
        )
    entries = doc.get("bulletins") if isinstance(doc, dict) and "bulletins" in doc else [doc]
    if not isinstance(entries, list) or not entries:
        raise BulletinError(
            [("", "文件应包含一个通报，或 bulletins: 列表", "the file holds one bulletin or a bulletins: list")]
        )
    problems: list[tuple[str, str, str]] = []
    report: list[dict] = []
    seen: set[str] = set()
    with session.begin_nested() as nested:
        for i, entry in enumerate(entries):
            label = f"bulletins[{i}]" if len(entries) > 1 else ""
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                name = None  # save() reports the bad name; never query with it
            elif name in seen:
                problems.append(
                    (f"{label}.name".strip("."), f"名称「{name}」在文件中重复", f"the name {name!r} appears twice")
                )
                continue
            seen.add(name or "")
            try:
                existing = session.scalars(sa.select(Bulletin).where(Bulletin.name == name)).first() if name else None
                row = save(session, entry, actor=actor, settings=settings,
                           bulletin_id=existing.id if existing else None)  # fmt: skip
                report.append({"name": row.name, "id": row.id, "action": "update" if existing else "create"})
            except BulletinError as exc:
                problems.extend((f"{label}.{p[0]}".strip(".") if label else p[0], p[1], p[2]) for p in exc.problems)
        if problems or dry_run:
            nested.rollback()
    if problems:
        raise BulletinError(problems)
    return report


def defer_window(quiet: Iterable[str], local: datetime) -> tuple[str, datetime] | None:
    """The quiet window (``HH:MM-HH:MM``, may wrap midnight) ``local`` falls in, and its end as a local
    aware datetime; None outside every window. Back-to-back windows chain: the end is where quiet ends."""
    windows = list(quiet)
    found = None
    moment = local
    for _ in range(len(windows) + 1):
        hit = _window_at(windows, moment)
        if hit is None:
            break
        found = (hit[0] if found is None else found[0], hit[1])
        moment = hit[1]
    return found


def _window_at(windows: list[str], local: datetime) -> tuple[str, datetime] | None:
    from wecom_plugin.domain.schedules import parse_wall_time, resolve_local

    tz = local.tzinfo
    minute = local.hour * 60 + local.minute
    for window in windows:
        start_text, _, end_text = window.partition("-")
        start, end = parse_wall_time(start_text), parse_wall_time(end_text)
        s, e = start.hour * 60 + start.minute, end.hour * 60 + end.minute
        inside = s <= minute < e if s < e else (minute >= s or minute < e)
        if inside:
            day = local.date()
            if s > e and minute >= s:
                day += timedelta(days=1)
            return window, resolve_local(tz, day, end).astimezone(tz)  # type: ignore[arg-type]
    return None


# --- preview --------------------------------------------------------------------------------------
def preview_start(value: str | None, tz: ZoneInfo) -> datetime | None:
    """A preview's ``from``: an ISO date (its midnight in the bulletin's zone) or date-time (naive: in
    that zone); None for now. Raises :class:`BulletinError` for anything else."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BulletinError([("from", "应为 ISO 8601 日期或时间", "must be an ISO 8601 date or date-time")]) from None
    if not 1970 <= parsed.year <= 2999:
        raise BulletinError([("from", "应在 1970-2999 年之间", "must be within the years 1970-2999")])
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed - timedelta(microseconds=1)  # an occurrence exactly at the start counts


def preview(session: Session, bulletin_id: int, *, settings: Any, count: int = 10, after: datetime | None = None):
    """The next ``count`` occurrences and the reasons for every day skipped or moved in between, each
    occurrence with the message rendered as each kind of target will receive it.

    Returns ``{"bulletin": view, "days": [...]}``; a day is ``{"date", "weekday", "state": send|hold|skip,
    "reason_zh", "reason_en", "occurrences": [{"at", "targets": [{"target", "action", "at", "reason"}],
    "messages": [{"path", "text"} | {"path", "error"}]}]}``.
    """
    from wecom_plugin.services.bulletin_delivery import targets_of
    from wecom_plugin.services.workday_calendar import load_calendar

    row = get(session, bulletin_id)
    tz = ZoneInfo(row.timezone)
    start = after or db_now(session)
    if not 1970 <= start.year <= 2999:
        raise BulletinError([("from", "预览起点应在 1970-2999 年之间", "the preview start must be within 1970-2999")])
    calendar = load_calendar(session.connection(), settings.calendar_fallback)
    spec = bm.MessageSpec.from_doc(row.message)
    targets = targets_of(session, row, settings)
    names = _target_names(session, row)
    weekday = "一二三四五六日"
    days = []
    for item in bulletin_schedule.explain(row.schedule, tz, start, calendar, count=max(1, min(count, 100))):
        state = {bulletin_schedule.YES: "send", bulletin_schedule.HOLD: "hold"}.get(item.verdict.state, "skip")
        occurrences = []
        for when in item.times:
            local = when.astimezone(tz)
            plan = []
            for target in targets:
                hit = defer_window(target.quiet, local)
                action, at, reason = "send", local, ""
                if hit is not None:
                    window, end = hit
                    action = {"defer": "defer", "skip": "skip", "urgent": "urgent"}[row.quiet_policy]
                    at = end if action == "defer" else local
                    reason = f"免打扰时段 {window} / quiet window {window}"
                plan.append({"target": target.key, "name": names.get(target.key, ""), "action": action,
                             "at": at.isoformat(), "reason": reason})  # fmt: skip
            occurrences.append({"at": local.isoformat(), "targets": plan,
                                "messages": _sample_messages(spec, row, targets, names, local)})  # fmt: skip
        days.append(
            {"date": item.day.isoformat(), "weekday": f"星期{weekday[item.day.weekday()]}", "state": state,
             "reason_zh": item.verdict.zh, "reason_en": item.verdict.en, "occurrences": occurrences}
        )  # fmt: skip
    return {"bulletin": view(row, session), "days": days}


def _target_names(session: Session, row: Bulletin) -> dict[str, str]:
    names: dict[str, str] = {}
    ids = row.targets.get("chats", [])
    if ids:
        for gid, name in session.execute(
            sa.select(GovernedGroup.id, GovernedGroup.name).where(GovernedGroup.id.in_(ids))
        ):
            names[f"chat:{gid}"] = name
    for robot in row.targets.get("robots", []):
        names[f"robot:{robot['name']}"] = robot.get("chat") or robot["name"]
    return names


def _sample_messages(spec, row: Bulletin, targets, names: Mapping[str, str], local: datetime) -> list[dict[str, str]]:
    """One rendering per path (the first target of each kind), as its member will read it."""
    out, seen = [], set()
    for target in targets:
        kind = target.key.split(":", 1)[0]
        path = {"chat": bm.PATH_APPCHAT, "robot": bm.PATH_ROBOT}.get(kind, bm.PATH_MESSAGE)
        if path in seen:
            continue
        seen.add(path)
        context = bm.template_context(local, group_name=names.get(target.key, ""), bulletin_name=row.name)
        try:
            rendered = bm.render(spec, path, context, confidential=row.confidential)
            out.append({"path": path, "target": target.key, "msgtype": rendered.msgtype, "safe": rendered.safe,
                        "text": rendered.text})  # fmt: skip
        except bm.BulletinMessageError as exc:
            out.append({"path": path, "target": target.key, "error": str(exc)})
    return out
