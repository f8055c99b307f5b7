"""The group registry (备案): requests, approvals, edits, archiving, exemptions, adoption, review
reminders and the YAML export/import.

Every function takes the caller's SQLAlchemy session and never commits: one use case, one
transaction, so a refused change leaves nothing behind. :func:`update_group` is the single writer
of registry fields: it validates, compare-and-sets on ``version``, and writes a ``group_version``
row with the before and after of the fields that changed (plus an audit row).

Errors are :class:`RegistryError` (a ``ValueError``): Chinese first, then English, with every
problem found in ``.problems`` (:class:`~wecom_plugin.domain.membership.Problem`). A
``RegistryError`` with ``keep_audit`` set (an approval by someone who may not approve) wrote only
its audit row: the caller commits that and nothing else was changed.

Settings are read from the current Flask app (``GENERAL_OFFICE_USERIDS``, ``GROUP_APPROVERS``,
``EXEMPTION_MAX_DAYS``, ``WECOM_TIMEZONE``).
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import ACTIVE, STATUS_ZH, fold
from wecom_plugin.domain.membership import InMemoryDirectory, MembershipRule, Problem, RuleError, check_rule
from wecom_plugin.domain.membership import Person as RulePerson
from wecom_plugin.models.dbtime import db_now
from wecom_plugin.models.groups import GROUP_STATUSES, GovernedGroup, GroupExemption, GroupVersion
from wecom_plugin.services import audit
from wecom_plugin.services.directory_mirror import DEPARTMENT, PERSON, TAG, TAG_MEMBER

GROUP = GovernedGroup.__table__

NAME_MAX_CHARS = 50  # WeCom truncates longer chat names (contract §3.1): refused here instead
TEXT_MAX_CHARS = 300  # purpose and content scope: they go into the welcome (≤2,048 bytes)
MAX_ADMINS = 20
CHATID_RE = re.compile(r"^[0-9a-zA-Z]{1,32}$")
QUIET_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
EXPORT_FORMAT = 1

CONFIDENTIALITY: dict[str, tuple[str, str]] = {"normal": ("普通", "normal"), "confidential": ("保密", "confidential")}
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "requested": ("待审批", "requested"),
    "approved": ("已批准，待建群", "approved, chat not created yet"),
    "rejected": ("已驳回", "rejected"),
    "active": ("受管中", "active"),
    "archived": ("已归档", "archived"),
}
# Status changes update_group accepts (the workflow's only paths).
TRANSITIONS: dict[str, frozenset[str]] = {
    "requested": frozenset({"approved", "rejected", "archived"}),
    "approved": frozenset({"active", "archived"}),
    "active": frozenset({"archived"}),
    "rejected": frozenset(),
    "archived": frozenset(),
}
# Fields people edit (`groups edit`, import) and fields the workflow sets.
EDITABLE = (
    "name", "purpose", "content_scope", "department_id", "owner", "admins", "rule", "confidentiality",
    "quiet_windows", "review_date",
)  # fmt: skip
SYSTEM = ("requested_by", "approver", "decided_by", "decided_at", "status", "chatid", "first_check_at")
WRITABLE = EDITABLE + SYSTEM
# The YAML export: one mapping per group, keys in this order.
EXPORT_KEYS = (
    "id", "name", "status", "chatid", "purpose", "content_scope", "department_id", "requested_by", "approver",
    "decided_by", "decided_at", "owner", "admins", "confidentiality", "quiet_windows", "review_date", "rule",
    "exemptions",
)  # fmt: skip
FIELD_LABELS: dict[str, str] = {
    "name": "群名称", "purpose": "用途", "content_scope": "内容范围", "department_id": "申请部门",
    "requested_by": "申请人", "approver": "审批人", "decided_by": "审批决定人", "decided_at": "审批时间",
    "owner": "群主", "admins": "群管理员", "rule": "成员规则", "confidentiality": "保密等级",
    "quiet_windows": "免打扰时段", "review_date": "复核日期", "status": "状态", "chatid": "群ID",
    "first_check_at": "首次检查时间",
}  # fmt: skip


log = logging.getLogger("wecom_plugin.group_registry")
MAX_DEPARTMENT_ID = 2**32 - 1
MAX_GROUP_ID = 2**31 - 1  # governed_group.id is a 32-bit integer on PostgreSQL


class RegistryError(ValueError):
    """A registry request that cannot be carried out; nothing was changed (see ``keep_audit``).

    ``problems``: every problem found (errors only); ``keep_audit``: an audit row of the refusal was
    added to the session and the caller should commit it (nothing else was written).
    """

    def __init__(self, problems: Iterable[Problem] | str, en: str | None = None, *, keep_audit: bool = False):
        if isinstance(problems, str):
            problems = [Problem("", problems, en or problems)]
        self.problems: list[Problem] = list(problems)
        self.keep_audit = keep_audit
        super().__init__(self._message())

    def _message(self) -> str:
        def one(p: Problem) -> str:
            return f"{p.path}: {p.zh} / {p.en}" if p.path else f"{p.zh} / {p.en}"

        if len(self.problems) == 1:
            return one(self.problems[0])
        n = len(self.problems)
        return f"共 {n} 处问题 / {n} problems: " + "; ".join(one(p) for p in self.problems)

    def as_dict(self) -> dict[str, Any]:
        return {
            "error": "invalid",
            "message": str(self),
            "problems": [problem_dict(p) for p in self.problems],
        }


def problem_dict(p: Problem) -> dict[str, str]:
    return {"path": p.path, "zh": p.zh, "en": p.en, "severity": p.severity}


def _settings() -> Any:
    from flask import current_app

    return current_app.extensions["wecom_settings"]


def _today(session: Session, settings: Any) -> date:
    """Today in the configured time zone, by the database clock."""
    return db_now(session).astimezone(settings.tz).date()


# --- values ---------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """A field value as it is stored in version rows and exported: dates and times as ISO text."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def snapshot(group: GovernedGroup) -> dict[str, Any]:
    """Every writable field of a group, JSON-friendly."""
    return {k: jsonable(getattr(group, k)) for k in WRITABLE}


def view(group: GovernedGroup) -> dict[str, Any]:
    """What the CLI and the API show of a group."""
    out = {"id": group.id, **snapshot(group), "version": group.version}
    out["created_at"] = jsonable(group.created_at)
    out["updated_at"] = jsonable(group.updated_at)
    out["status_zh"], out["status_en"] = STATUS_LABELS.get(group.status, (group.status, group.status))
    warnings = getattr(group, "warnings", None)
    if warnings:
        out["warnings"] = [problem_dict(p) for p in warnings]
    return out


def new_chatid(group_id: int) -> str:
    """A chatid chosen by us (contract §3.1: ≤32 of [0-9a-zA-Z]): a retry finds the chat with appchat/get."""
    alphabet = string.ascii_letters + string.digits
    prefix = f"gov{group_id}"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(min(16, 32 - len(prefix))))


# --- the directory mirror -------------------------------------------------------------------------
def mirror_directory(session: Session) -> InMemoryDirectory:
    """The directory mirror as membership rules read it (every person, whatever the status).

    A person's tags are the tags they hold directly plus those of departments tagged as a whole
    (WeCom's ``party_ids``), including the tagged departments' sub-departments.
    """
    parents = dict(
        session.execute(
            sa.select(DEPARTMENT.c.id, DEPARTMENT.c.parent_id).where(DEPARTMENT.c.deleted_at.is_(None))
        ).all()
    )
    children: dict[int, list[int]] = {}
    for dep, parent in parents.items():
        if dep != parent:
            children.setdefault(parent, []).append(dep)
    live_tags = dict(session.execute(sa.select(TAG.c.id, TAG.c.party_ids).where(TAG.c.deleted_at.is_(None))).all())
    tags_of_department: dict[int, set[int]] = {}
    for tag_id, party_ids in live_tags.items():
        for top in party_ids or ():
            stack, seen = [top], {top}
            while stack:
                dep = stack.pop()
                tags_of_department.setdefault(dep, set()).add(tag_id)
                for child in children.get(dep, ()):
                    if child not in seen:
                        seen.add(child)
                        stack.append(child)
    direct: dict[int, set[int]] = {}
    for tag_id, person_id in session.execute(sa.select(TAG_MEMBER.c.tag_id, TAG_MEMBER.c.person_id)):
        if tag_id in live_tags:
            direct.setdefault(person_id, set()).add(tag_id)
    people = []
    rows = session.execute(
        sa.select(PERSON.c.id, PERSON.c.userid, PERSON.c.name, PERSON.c.status, PERSON.c.departments, PERSON.c.position)
    )
    for row in rows:
        departments = tuple(int(d) for d in row.departments or ())
        tags = set(direct.get(row.id, ()))
        for dep in departments:
            tags |= tags_of_department.get(dep, set())
        people.append(
            RulePerson(row.userid, row.name or "", int(row.status), departments, row.position or "", frozenset(tags))
        )
    return InMemoryDirectory(people, parents, live_tags)


def _people(session: Session, userids: Iterable[str]) -> dict[str, Any]:
    folded = {fold(u) for u in userids if isinstance(u, str) and u.strip()}
    if not folded:
        return {}
    rows = session.execute(
        sa.select(PERSON.c.userid, PERSON.c.userid_folded, PERSON.c.status, PERSON.c.name, PERSON.c.main_department)
        .where(PERSON.c.userid_folded.in_(sorted(folded)))
    ).all()  # fmt: skip
    return {r.userid_folded: r for r in rows}


def eligible_approvers(session: Session, department_id: int | None, settings: Any) -> list[str]:
    """Who may approve a request from ``department_id``: its leaders (active, from the mirror) first,
    then the configured GROUP_APPROVERS."""
    out: list[str] = []
    if department_id is not None:
        leaders = session.execute(sa.select(DEPARTMENT.c.leaders).where(DEPARTMENT.c.id == department_id)).scalar()
        people = _people(session, leaders or [])
        for leader in leaders or []:
            person = people.get(fold(leader))
            if person is not None and person.status == ACTIVE:
                out.append(person.userid)
    configured = _people(session, settings.group_approvers)
    for userid in settings.group_approvers:
        person = configured.get(fold(userid))
        if person is not None and person.status != ACTIVE:
            continue  # a configured approver who left or is disabled decides nothing
        if fold(userid) not in {fold(u) for u in out}:
            out.append(userid)
    return out


# --- validation -----------------------------------------------------------------------------------
@dataclass
class _Check:
    session: Session
    settings: Any
    today: date
    current: Mapping[str, Any] | None = None  # the group's snapshot: unchanged values are not re-checked
    strict_review: bool = True  # a review date not in the future: error (else a warning)
    group_id: int | None = None
    directory: InMemoryDirectory | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, path: str, zh: str, en: str) -> None:
        self.problems.append(Problem(path, zh, en))

    def warn(self, path: str, zh: str, en: str) -> None:
        self.warnings.append(Problem(path, zh, en, "warning"))

    def unchanged(self, key: str, value: Any) -> bool:
        return self.current is not None and key in self.current and jsonable(value) == self.current[key]

    def dir(self) -> InMemoryDirectory:
        if self.directory is None:
            self.directory = mirror_directory(self.session)
        return self.directory

    # --- per field
    def run(self, values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        people = _people(self.session, self._userids(values))
        for key, raw in values.items():
            if key not in WRITABLE:
                self.error(key, f"未知字段“{key}”，可用：{'、'.join(WRITABLE)}", f"unknown field {key!r}")
                continue
            try:
                value = getattr(self, f"_{key}")(raw, people)
            except _Skip:
                continue
            out[key] = value
        return out

    @staticmethod
    def _userids(values: Mapping[str, Any]) -> list[str]:
        found: list[str] = []
        for key in ("owner", "requested_by", "approver", "decided_by"):
            if isinstance(values.get(key), str):
                found.append(values[key])
        admins = values.get("admins")
        if isinstance(admins, list | tuple):
            found.extend(a for a in admins if isinstance(a, str))
        elif isinstance(admins, str):
            found.extend(a.strip() for a in admins.split(","))
        return found

    def _text(self, key: str, raw: Any, *, required: bool, limit: int) -> str:
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            self.error(key, f"{FIELD_LABELS[key]}应为文字", f"{key} must be text")
            raise _Skip
        text = raw.strip()
        if required and not text:
            self.error(key, f"{FIELD_LABELS[key]}不能为空", f"{key} is required")
        elif len(text) > limit:
            self.error(
                key,
                f"{FIELD_LABELS[key]}最长 {limit} 个字，实际 {len(text)} 个",
                f"{key} is at most {limit} characters, got {len(text)}",
            )
        return text

    def _name(self, raw: Any, people: Any) -> str:
        if isinstance(raw, str) and len(raw.strip()) > NAME_MAX_CHARS:
            self.error(
                "name",
                f"群名称最长 {NAME_MAX_CHARS} 个字（企业微信会截断更长的名称），实际 {len(raw.strip())} 个",
                f"a group name is at most {NAME_MAX_CHARS} characters (WeCom truncates longer ones), "
                f"got {len(raw.strip())}",
            )
            raise _Skip
        return self._text("name", raw, required=True, limit=NAME_MAX_CHARS)

    def _purpose(self, raw: Any, people: Any) -> str:
        return self._text("purpose", raw, required=True, limit=TEXT_MAX_CHARS)

    def _content_scope(self, raw: Any, people: Any) -> str:
        return self._text("content_scope", raw, required=False, limit=TEXT_MAX_CHARS)

    def _person(self, key: str, raw: Any, people: Mapping[str, Any], *, active: bool = True, path: str = "") -> str:
        path = path or key
        if not isinstance(raw, str) or not raw.strip():
            self.error(path, f"{FIELD_LABELS[key]}应为成员账号（userid）", f"{key} must be a userid")
            raise _Skip
        userid = raw.strip()
        person = people.get(fold(userid))
        spelled = person.userid if person is not None else userid
        if self.unchanged(key, spelled) or not active:
            return spelled
        if person is None:
            self.error(path, f"通讯录中没有成员 {userid}", f"{userid} is not in the directory")
        elif person.status != ACTIVE:
            status = STATUS_ZH.get(person.status, str(person.status))
            self.error(path, f"成员 {userid} 不是在职成员（{status}）", f"{userid} is not an active member")
        return spelled

    def _owner(self, raw: Any, people: Any) -> str:
        return self._person("owner", raw, people)

    def _requested_by(self, raw: Any, people: Any) -> str:
        return self._person("requested_by", raw, people)

    def _optional_person(self, key: str, raw: Any, people: Any) -> str | None:
        if raw is None or raw == "":
            return None
        return self._person(key, raw, people, active=False)

    def _approver(self, raw: Any, people: Any) -> str | None:
        return self._optional_person("approver", raw, people)

    def _decided_by(self, raw: Any, people: Any) -> str | None:
        return self._optional_person("decided_by", raw, people)

    def _admins(self, raw: Any, people: Any) -> list[str]:
        if raw is None:
            raw = []
        if isinstance(raw, str):
            raw = [a.strip() for a in raw.split(",") if a.strip()]
        if not isinstance(raw, list | tuple):
            self.error("admins", "群管理员应为成员账号列表", "admins must be a list of userids")
            raise _Skip
        if len(raw) > MAX_ADMINS:
            self.error("admins", f"群管理员最多 {MAX_ADMINS} 人", f"at most {MAX_ADMINS} admins")
            raise _Skip
        out: list[str] = []
        seen: set[str] = set()
        current = {fold(a) for a in (self.current or {}).get("admins") or []}
        for i, item in enumerate(raw):
            path = f"admins[{i}]"
            if not isinstance(item, str) or not item.strip():
                self.error(path, "应为成员账号（userid）", "must be a userid")
                continue
            person = people.get(fold(item.strip()))
            userid = person.userid if person is not None else item.strip()
            if fold(userid) in seen:
                self.error(path, f"群管理员 {userid} 重复", f"admin {userid} is listed twice")
                continue
            seen.add(fold(userid))
            out.append(userid)
            if fold(userid) in current:
                continue  # already an admin: a later departure is the member check's business
            if person is None:
                self.error(path, f"通讯录中没有成员 {userid}", f"{userid} is not in the directory")
            elif person.status != ACTIVE:
                self.error(path, f"成员 {userid} 不是在职成员", f"{userid} is not an active member")
        return out

    def _department_id(self, raw: Any, people: Any) -> int:
        if type(raw) is str and raw.strip().isdigit():
            raw = int(raw.strip())
        # bool is not a department; WeCom's department ids are 32-bit (and a bigger int overflows the column)
        if type(raw) is not int or not 1 <= raw <= MAX_DEPARTMENT_ID:  # noqa: E721
            self.error(
                "department_id",
                f"申请部门应为部门编号（1 到 {MAX_DEPARTMENT_ID} 的整数）",
                f"department_id must be an integer from 1 to {MAX_DEPARTMENT_ID}",
            )
            raise _Skip
        if self.unchanged("department_id", raw):
            return raw
        exists = self.session.execute(
            sa.select(DEPARTMENT.c.id).where(DEPARTMENT.c.id == raw, DEPARTMENT.c.deleted_at.is_(None))
        ).scalar()
        if exists is None:
            self.error("department_id", f"通讯录中没有部门 {raw}", f"no department {raw} in the directory")
        return raw

    def _rule(self, raw: Any, people: Any) -> dict[str, Any]:
        try:
            rule = MembershipRule.from_doc(raw)
        except RuleError as exc:
            for p in exc.problems:
                self.error(f"rule.{p.path}" if p.path else "rule", p.zh, p.en)
            raise _Skip from None
        doc = rule.to_doc()
        if self.unchanged("rule", doc):
            return doc
        for p in check_rule(rule, self.dir()):
            path = f"rule.{p.path}" if p.path else "rule"
            (self.problems if p.severity == "error" else self.warnings).append(Problem(path, p.zh, p.en, p.severity))
        return doc

    def _confidentiality(self, raw: Any, people: Any) -> str:
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in CONFIDENTIALITY:
            self.error(
                "confidentiality",
                f"保密等级应为 normal（普通）或 confidential（保密），实际为 {raw!r}",
                f"confidentiality is normal or confidential, got {raw!r}",
            )
            raise _Skip
        return value

    def _quiet_windows(self, raw: Any, people: Any) -> list[str]:
        if raw is None:
            return []
        if isinstance(raw, str):
            raw = [w for w in raw.split(",") if w.strip()]
        if not isinstance(raw, list | tuple):
            self.error(
                "quiet_windows", "免打扰时段应为列表，如 22:00-07:00", "quiet_windows is a list like 22:00-07:00"
            )
            raise _Skip
        spans: list[tuple[int, int, str, str]] = []
        for i, item in enumerate(raw):
            path = f"quiet_windows[{i}]"
            match = QUIET_RE.match(item) if isinstance(item, str) else None
            if match is None:
                self.error(path, f"时段格式应为 HH:MM-HH:MM，实际为 {item!r}", f"a window is HH:MM-HH:MM, got {item!r}")
                continue
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
                self.error(path, f"时间无效：{item}", f"not a valid time: {item}")
                continue
            start, end = h1 * 60 + m1, h2 * 60 + m2
            if start == end:
                self.error(path, f"时段起止相同：{item}", f"a window starts and ends at the same time: {item}")
                continue
            spans.append((start, end, f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}", path))

        def minutes(start: int, end: int) -> set[int]:
            return set(range(start, end)) if start < end else set(range(start, 1440)) | set(range(0, end))

        for i, (s1, e1, text1, _) in enumerate(spans):
            for s2, e2, text2, path2 in spans[i + 1 :]:
                if minutes(s1, e1) & minutes(s2, e2):
                    self.error(path2, f"时段 {text2} 与 {text1} 重叠", f"window {text2} overlaps {text1}")
        return sorted(text for _, _, text, _ in spans)

    def _review_date(self, raw: Any, people: Any) -> date | None:
        if raw is None or raw == "":
            return None
        value = raw
        if isinstance(raw, datetime):
            value = raw.date()
        elif isinstance(raw, str):
            try:
                value = date.fromisoformat(raw.strip())
            except ValueError:
                self.error(
                    "review_date", f"复核日期应为 YYYY-MM-DD，实际为 {raw!r}", f"review_date is YYYY-MM-DD, got {raw!r}"
                )
                raise _Skip from None
        if not isinstance(value, date):
            self.error("review_date", "复核日期应为 YYYY-MM-DD", "review_date is YYYY-MM-DD")
            raise _Skip
        if value <= self.today and not self.unchanged("review_date", value):
            zh, en = (
                f"复核日期 {value} 不在今天（{self.today}）之后",
                f"review date {value} is not after today ({self.today})",
            )
            self.error("review_date", zh, en) if self.strict_review else self.warn("review_date", zh, en)
        return value

    def _status(self, raw: Any, people: Any) -> str:
        if raw not in GROUP_STATUSES:
            choices = ", ".join(GROUP_STATUSES)
            self.error("status", f"状态应为 {choices} 之一", f"status is one of {choices}, got {raw!r}")
            raise _Skip
        return raw

    def _chatid(self, raw: Any, people: Any) -> str | None:
        if raw is None or raw == "":
            return None
        if not isinstance(raw, str) or not CHATID_RE.match(raw):
            self.error("chatid", "群ID应为 1 到 32 位字母或数字", "a chatid is 1-32 letters or digits")
            raise _Skip
        other = self.session.execute(sa.select(GROUP.c.id).where(GROUP.c.chatid == raw)).scalar()
        if other is not None and other != self.group_id:
            self.error(
                "chatid", f"群ID {raw} 已登记在群 #{other}", f"chatid {raw} is already registered to group #{other}"
            )
        return raw

    def _moment(self, key: str, raw: Any) -> datetime | None:
        if raw is None or raw == "":
            return None
        value = raw
        if isinstance(raw, str):
            try:
                value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
            except ValueError:
                value = None
        if not isinstance(value, datetime) or value.tzinfo is None:
            self.error(key, f"{FIELD_LABELS[key]}应为带时区的 ISO 时间", f"{key} is an ISO time with a zone")
            raise _Skip
        return value.astimezone(UTC)

    def _decided_at(self, raw: Any, people: Any) -> datetime | None:
        return self._moment("decided_at", raw)

    def _first_check_at(self, raw: Any, people: Any) -> datetime | None:
        return self._moment("first_check_at", raw)


class _Skip(Exception):
    """A field too malformed to check further (its problem is recorded)."""


# --- reading ----------------------------------------------------------------------------------------
def get_group(session: Session, group_id: int) -> GovernedGroup:
    valid = str(group_id).isascii() and str(group_id).isdigit() and 1 <= int(group_id) <= MAX_GROUP_ID
    group = session.get(GovernedGroup, int(group_id)) if valid else None
    if group is None:
        raise RegistryError(f"没有编号为 {group_id} 的登记群", f"no registered group {group_id}")
    return group


def list_groups(session: Session, status: str | None = None) -> list[GovernedGroup]:
    stmt = sa.select(GovernedGroup).order_by(GovernedGroup.id)
    if status:
        stmt = stmt.where(GovernedGroup.status == status)
    return list(session.scalars(stmt))


def history(session: Session, group_id: int) -> list[GroupVersion]:
    return list(
        session.scalars(sa.select(GroupVersion).where(GroupVersion.group_id == group_id).order_by(GroupVersion.version))
    )


def version_view(row: GroupVersion) -> dict[str, Any]:
    return {
        "version": row.version,
        "action": row.action,
        "actor": row.actor,
        "reason": row.reason,
        "changed_at": jsonable(row.changed_at),
        "before": row.before,
        "after": row.after,
    }


def approvers_of(session: Session, group: GovernedGroup, settings: Any | None = None) -> list[str]:
    """Who may decide on ``group`` now: the active leaders of its department as the mirror shows them
    today, then GROUP_APPROVERS (unless the mirror shows them gone); each once (case-folded), as first
    spelled. Asked at decision time, not when the request was made: a leader who left or was replaced,
    or the leader of the department the request was moved away from, decides nothing. :func:`decide`
    and the approval card (``services/approval_card.py``) both ask this."""
    settings = settings or _settings()
    out: dict[str, str] = {}
    for userid in eligible_approvers(session, group.department_id, settings):
        if isinstance(userid, str) and userid.strip():
            out.setdefault(fold(userid.strip()), userid.strip())
    return list(out.values())


# --- use cases --------------------------------------------------------------------------------------
def request_group(
    session: Session,
    *,
    name: str,
    purpose: str,
    content_scope: str,
    department_id: int | None,
    requested_by: str,
    owner: str,
    admins: Sequence[str],
    rule_doc: Mapping[str, Any] | None,
    confidentiality: str = "normal",
    quiet_windows: Sequence[str] = (),
    review_date: date | str | None = None,
    actor: str,
) -> GovernedGroup:
    """Register a request (status ``requested``) and pick its approver.

    Everything is validated and every problem reported at once (:class:`RegistryError`); rule
    warnings (a position nobody holds...) are kept on the returned group as ``group.warnings``
    and in the version row. The approver is the requesting department's first active leader, else
    the first of GROUP_APPROVERS; all of them may decide (the list is kept in the version row).
    ``department_id`` None: the requester's main department. The eligible approvers get an
    interactive card (the ``groups.approval_card`` job, queued in this transaction).
    """
    settings = _settings()
    check = _Check(session, settings, _today(session, settings))
    if department_id is None and isinstance(requested_by, str):
        person = _people(session, [requested_by]).get(fold(requested_by))
        department_id = person.main_department if person is not None else None
        if department_id is None and person is not None:
            check.error("department_id", "请指定申请部门", "department_id is required")
    values = {
        "name": name,
        "purpose": purpose,
        "content_scope": content_scope,
        "requested_by": requested_by,
        "owner": owner,
        "admins": list(admins or []),
        "rule": rule_doc,
        "confidentiality": confidentiality,
        "quiet_windows": list(quiet_windows or []),
        "review_date": review_date,
    }
    if department_id is not None:
        values["department_id"] = department_id
    clean = check.run(values)
    eligible: list[str] = []
    if "department_id" in clean and not any(p.path == "department_id" for p in check.problems):
        eligible = eligible_approvers(session, clean["department_id"], settings)
        if not eligible:
            check.error(
                "approver",
                "没有审批人：申请部门没有在职负责人，也没有配置 GROUP_APPROVERS",
                "no approver: the requesting department has no active leader and GROUP_APPROVERS is empty",
            )
    if check.problems:
        raise RegistryError(check.problems)
    now = db_now(session)
    group = GovernedGroup(**clean, status="requested", approver=eligible[0], version=1, created_at=now, updated_at=now)
    session.add(group)
    session.flush()
    after = {
        **snapshot(group),
        "eligible_approvers": eligible,
        "warnings": [problem_dict(p) for p in check.warnings],
    }
    session.add(
        GroupVersion(
            group_id=group.id, version=1, action="requested", actor=actor[:128], before={}, after=after, changed_at=now
        )
    )
    audit.record(
        actor, "groups.requested", target=f"group:{group.id}",
        detail={"name": group.name, "approver": group.approver, "warnings": len(check.warnings)}, session=session,
    )  # fmt: skip
    # The approvers' interactive card (同意 / 驳回), sent by a job: no WeCom call in this transaction.
    from wecom_plugin.services.approval_card import queue_card

    queue_card(session, group.id, 1)
    group.warnings = check.warnings  # type: ignore[attr-defined]
    return group


def update_group(
    session: Session,
    group_id: int,
    changes: Mapping[str, Any],
    *,
    actor: str,
    action: str = "updated",
    reason: str | None = None,
    expected_version: int | None = None,
) -> GovernedGroup:
    """The single writer of registry fields: validate ``changes``, compare-and-set on ``version``,
    record the before and after of the fields that changed (``group_version``) and audit it.

    Values equal to the current ones are accepted without re-checking (an admin who has since left
    does not block an unrelated edit). Nothing changed: no version. ``expected_version``: the
    version the caller read; another change since then refuses the update.
    """
    settings = _settings()
    group = get_group(session, group_id)
    version = group.version
    if expected_version is not None and expected_version != version:
        raise _changed_meanwhile(group.id, expected_version, version)
    current = snapshot(group)
    check = _Check(session, settings, _today(session, settings), current=current, group_id=group.id)
    clean = check.run(changes)
    if "status" in clean and clean["status"] != group.status and clean["status"] not in TRANSITIONS[group.status]:
        check.error(
            "status",
            f"状态不能从 {group.status} 变为 {clean['status']}",
            f"status cannot change from {group.status} to {clean['status']}",
        )
    if check.problems:
        raise RegistryError(check.problems)
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for key, value in clean.items():
        if jsonable(value) != current[key]:
            before[key], after[key] = current[key], jsonable(value)
    group.warnings = check.warnings  # type: ignore[attr-defined]
    if not after:
        return group
    now = db_now(session)
    result = session.execute(
        sa.update(GROUP)
        .where(GROUP.c.id == group.id, GROUP.c.version == version)
        .values(**{k: clean[k] for k in after}, version=version + 1, updated_at=now)
    )
    if result.rowcount != 1:
        raise _changed_meanwhile(group.id, version, None)
    session.add(
        GroupVersion(
            group_id=group.id, version=version + 1, action=action[:32], actor=actor[:128], reason=reason,
            before=before, after=after, changed_at=now,
        )
    )  # fmt: skip
    audit.record(
        actor, f"groups.{action}", target=f"group:{group.id}", reason=reason,
        detail={"version": version + 1, "fields": sorted(after)}, session=session,
    )  # fmt: skip
    _cancel_stale_changes(session, group.id, after)
    session.flush()
    session.refresh(group)
    if group.status == "requested" and set(after) & set(EDITABLE):
        # An edited request (another department, so other approvers; another purpose): the cards out
        # there are stale, and the approvers as they are now get a new one.
        from wecom_plugin.services.approval_card import queue_card

        queue_card(session, group.id, version + 1)
    group.warnings = check.warnings  # type: ignore[attr-defined]
    return group


def _cancel_stale_changes(session: Session, group_id: int, after: Mapping[str, Any]) -> None:
    """In the same transaction as the edit: a group no longer active has nothing pending; a rule
    edit makes a check's pending changes stale (the next check plans from the new rule)."""
    from wecom_plugin.services.chat_changes import cancel_pending

    if "status" in after and after["status"] != "active":
        cancel_pending(session, group_id, f"the group is {after['status']}: no longer governed", sources=None)
    elif "rule" in after:
        cancel_pending(session, group_id, "the membership rule changed", sources=("check",))


def record_event(
    session: Session,
    group_id: int,
    *,
    action: str,
    actor: str,
    reason: str,
    detail: Mapping[str, Any] | None = None,
    outcome: str = "failure",
) -> GovernedGroup:
    """A versioned event that changes no field (the chat could not be created...): who, when, why.

    ``after`` holds ``detail``; ``before`` is empty."""
    group = get_group(session, group_id)
    version = group.version
    now = db_now(session)
    result = session.execute(
        sa.update(GROUP).where(GROUP.c.id == group.id, GROUP.c.version == version).values(version=version + 1)
    )
    if result.rowcount != 1:
        raise _changed_meanwhile(group.id, version, None)
    session.add(
        GroupVersion(
            group_id=group.id, version=version + 1, action=action[:32], actor=actor[:128], reason=reason,
            before={}, after=dict(detail or {}), changed_at=now,
        )
    )  # fmt: skip
    audit.record(
        actor, f"groups.{action}", target=f"group:{group.id}", reason=reason, outcome=outcome,
        detail=dict(detail or {}), session=session,
    )  # fmt: skip
    session.flush()
    session.refresh(group)
    return group


def _changed_meanwhile(group_id: int, expected: int, found: int | None) -> RegistryError:
    found_text = f"（现为第 {found} 版）" if found is not None else ""
    return RegistryError(
        f"群 #{group_id} 在此期间已被修改{found_text}，请重新读取后再改",
        f"group #{group_id} changed meanwhile (expected version {expected}); read it again and retry",
    )


def decide(
    session: Session,
    group_id: int,
    *,
    approve: bool,
    actor_userid: str,
    reason: str | None = None,
    actor: str | None = None,
) -> GovernedGroup:
    """Approve or reject a request. Only the recorded approver, the other eligible approvers or
    GROUP_APPROVERS may (:func:`approvers_of`); anyone else is refused and the refusal audited
    (``keep_audit``). Approval enqueues ``groups.create_chat`` in the same transaction.
    ``actor``: who the history names (default ``user:<actor_userid>``; the card says ``wecom:<userid>``)."""
    from wecom_plugin.runtime.queue import enqueue

    settings = _settings()
    group = get_group(session, group_id)
    actor = actor or f"user:{actor_userid}"
    if group.status != "requested":
        zh, en = STATUS_LABELS.get(group.status, (group.status, group.status))
        raise RegistryError(
            f"群 #{group.id} 不在待审批状态（{zh}）", f"group #{group.id} is not awaiting a decision ({en})"
        )
    allowed = {fold(u) for u in approvers_of(session, group, settings)}
    if not isinstance(actor_userid, str) or fold(actor_userid.strip()) not in allowed:
        audit.record(
            actor, "groups.decide", target=f"group:{group.id}", reason="not an approver of this group",
            outcome="denied", detail={"approve": bool(approve)}, session=session,
        )  # fmt: skip
        raise RegistryError(
            f"{actor_userid} 不是群 #{group.id} 的审批人（审批人：{group.approver}）",
            f"{actor_userid} may not decide on group #{group.id} (approver: {group.approver})",
            keep_audit=True,
        )
    if not approve and not (reason or "").strip():
        raise RegistryError("驳回需要说明理由（--reason）", "a rejection needs a reason (--reason)")
    decided_by = _people(session, [actor_userid]).get(fold(actor_userid))
    changes: dict[str, Any] = {
        "status": "approved" if approve else "rejected",
        "decided_by": decided_by.userid if decided_by is not None else actor_userid.strip(),
        "decided_at": db_now(session),
    }
    group = update_group(
        session, group.id, changes, actor=actor, action="approved" if approve else "rejected", reason=reason
    )
    if approve:
        # An adopted chat (chatid recorded at request time) is not created again: the job only
        # activates it, posts the welcome and tells the general office.
        enqueue(
            "groups.create_chat",
            {"group_id": group.id, "chatid": group.chatid or new_chatid(group.id)},
            dedupe_key=f"groups.create_chat:{group.id}",
            session=session,
        )
    return group


def archive(session: Session, group_id: int, *, actor: str, reason: str) -> GovernedGroup:
    """Stop governing a group (WeCom cannot dissolve an app chat): archived, versioned, audited;
    a chat that exists gets a notice (``groups.archive_notice``)."""
    from wecom_plugin.runtime.queue import enqueue

    if not (reason or "").strip():
        raise RegistryError("归档需要说明理由（--reason）", "archiving needs a reason (--reason)")
    group = get_group(session, group_id)
    if group.status in ("archived", "rejected"):
        zh, en = STATUS_LABELS[group.status]
        raise RegistryError(f"群 #{group.id} 已{zh}，不能归档", f"group #{group.id} is {en}: nothing to archive")
    group = update_group(session, group.id, {"status": "archived"}, actor=actor, action="archived", reason=reason)
    if group.chatid:
        enqueue(
            "groups.archive_notice",
            {"group_id": group.id, "chatid": group.chatid},
            dedupe_key=f"groups.archive_notice:{group.id}:{group.version}",
            session=session,
        )
    return group


# --- exemptions ---------------------------------------------------------------------------------------
def add_exemption(
    session: Session, group_id: int, userid: str, *, reason: str, expires_at: datetime | date | str, actor: str
) -> GroupExemption:
    """Let ``userid`` stay in a group whatever the rule says, for ``reason``, until ``expires_at``
    (at most EXEMPTION_MAX_DAYS ahead; a date means the end of that day, local time). An active
    exemption of the same person is replaced."""
    settings = _settings()
    group = get_group(session, group_id)
    problems: list[Problem] = []
    if group.status in ("rejected", "archived"):
        problems.append(
            Problem("", f"群 #{group.id} 已{STATUS_LABELS[group.status][0]}", f"group #{group.id} is {group.status}")
        )
    if not (reason or "").strip():
        problems.append(Problem("reason", "豁免需要说明理由", "an exemption needs a reason"))
    person = _people(session, [userid]).get(fold(userid)) if isinstance(userid, str) and userid.strip() else None
    if person is None:
        problems.append(Problem("userid", f"通讯录中没有成员 {userid}", f"{userid} is not in the directory"))
    now = db_now(session)
    until = _expiry(expires_at, settings)
    if until is None:
        problems.append(Problem("expires_at", "需要到期日期（YYYY-MM-DD）", "an expiry date is required (YYYY-MM-DD)"))
    elif until <= now:
        problems.append(Problem("expires_at", "到期时间必须在将来", "the expiry must be in the future"))
    elif until > now + timedelta(days=settings.exemption_max_days, hours=24):
        days = settings.exemption_max_days
        problems.append(
            Problem(
                "expires_at", f"豁免最长 {days} 天（EXEMPTION_MAX_DAYS）", f"an exemption lasts at most {days} days"
            )
        )
    if problems:
        raise RegistryError(problems)
    replaced = _active_exemptions(session, group.id, person.userid_folded, now)
    for old in replaced:
        old.revoked_at = now
    row = GroupExemption(
        group_id=group.id, userid=person.userid, userid_folded=person.userid_folded, reason=reason.strip(),
        expires_at=until, created_by=actor[:128], created_at=now,
    )  # fmt: skip
    session.add(row)
    session.flush()
    from wecom_plugin.services.chat_changes import cancel_pending

    cancel_pending(session, group.id, "exempted: may stay in the chat", sources=("check",), userid=person.userid)
    audit.record(
        actor, "groups.exemption_added", target=f"group:{group.id}", reason=reason.strip(),
        detail={"userid": person.userid, "expires_at": jsonable(until), "replaced": [o.id for o in replaced]},
        session=session,
    )  # fmt: skip
    return row


def _expiry(value: Any, settings: Any) -> datetime | None:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text)
        except ValueError:
            try:
                value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=settings.tz)).astimezone(UTC)
    if isinstance(value, date):
        end = datetime(value.year, value.month, value.day, 23, 59, 59, tzinfo=settings.tz)
        return end.astimezone(UTC)
    return None


def _active_exemptions(session: Session, group_id: int, folded: str | None, now: datetime) -> list[GroupExemption]:
    stmt = sa.select(GroupExemption).where(
        GroupExemption.group_id == group_id, GroupExemption.revoked_at.is_(None), GroupExemption.expires_at > now
    )
    if folded is not None:
        stmt = stmt.where(GroupExemption.userid_folded == folded)
    return list(session.scalars(stmt.order_by(GroupExemption.id)))


def revoke_exemption(
    session: Session, group_id: int, userid: str, *, actor: str, reason: str | None = None
) -> list[GroupExemption]:
    """End a person's active exemption now (audited)."""
    group = get_group(session, group_id)
    now = db_now(session)
    rows = _active_exemptions(session, group.id, fold(userid or ""), now)
    if not rows:
        raise RegistryError(
            f"{userid} 在群 #{group.id} 没有有效的豁免", f"{userid} has no active exemption in group #{group.id}"
        )
    for row in rows:
        row.revoked_at = now
    audit.record(
        actor, "groups.exemption_revoked", target=f"group:{group.id}", reason=reason,
        detail={"userid": rows[0].userid, "ids": [r.id for r in rows]}, session=session,
    )  # fmt: skip
    return rows


def list_exemptions(session: Session, group_id: int, *, include_inactive: bool = False) -> list[GroupExemption]:
    group = get_group(session, group_id)
    if include_inactive:
        stmt = sa.select(GroupExemption).where(GroupExemption.group_id == group.id).order_by(GroupExemption.id)
        return list(session.scalars(stmt))
    return _active_exemptions(session, group.id, None, db_now(session))


def exemption_view(row: GroupExemption) -> dict[str, Any]:
    return {
        "id": row.id,
        "userid": row.userid,
        "reason": row.reason,
        "expires_at": jsonable(row.expires_at),
        "created_by": row.created_by,
        "created_at": jsonable(row.created_at),
        "revoked_at": jsonable(row.revoked_at),
    }


# --- adoption and migration -------------------------------------------------------------------------
NOT_OURS_ZH = (
    "企业微信只允许应用管理由它自己创建的群聊（错误码 86008）：群 {chatid} 不是本应用创建的，无法纳入管理。"
    "请走迁移流程：通过申请流程建立受管替代群，再请原群群主在旧群发布迁移通知"
    "（`wecom-plugin groups migration-notice ID`）。"
)
NOT_OURS_EN = (
    "WeCom lets an app manage only the chats it created (errcode 86008): chat {chatid} was not created by this "
    "app, so it cannot be governed. Use the migration path: request a governed replacement through the workflow, "
    "then ask the old group's owner to post the migration notice (`wecom-plugin groups migration-notice ID`)."
)


def adopt(session: Session, group_id: int, chatid: str, *, actor: str, client: Any = None) -> GovernedGroup:
    """Bring an existing chat this app created under a registry entry.

    Reads ``appchat/get`` first, before the session is used (no transaction may stay open across
    a WeCom call: the caller must not have one open). 86008 (another app's, or a hand-made chat):
    :class:`RegistryError` pointing to the migration path, nothing changed. An approved group
    becomes active; a requested one keeps the chatid and becomes active when approved. Either
    way ``first_check_at`` stays None: the first member check is a dry run.
    """
    from wecom_plugin.wecom.api import appchat
    from wecom_plugin.wecom.errors import (
        APPCHAT_INVALID_CHATID,
        APPCHAT_NOT_CREATOR,
        APPCHAT_NOT_FOUND,
        CHATID_NOT_FOUND,
        WeComError,
    )

    chatid = (chatid or "").strip()
    if not CHATID_RE.match(chatid):
        raise RegistryError("群ID应为 1 到 32 位字母或数字", "a chatid is 1-32 letters or digits")
    if (session if isinstance(session, Session) else session()).in_transaction():
        raise RuntimeError("adopt() calls WeCom: end the session's transaction first")
    if client is None:
        from flask import current_app

        from wecom_plugin.services.wecom import client_for

        client = client_for(current_app._get_current_object())  # noqa: SLF001
    try:
        info = appchat.get(client, chatid)
    except WeComError as exc:
        if exc.errcode == APPCHAT_NOT_CREATOR:
            raise RegistryError(NOT_OURS_ZH.format(chatid=chatid), NOT_OURS_EN.format(chatid=chatid)) from None
        if exc.errcode in (APPCHAT_NOT_FOUND, CHATID_NOT_FOUND, APPCHAT_INVALID_CHATID):
            raise RegistryError(f"企业微信中没有群 {chatid}", f"WeCom has no chat {chatid}") from None
        raise
    group = get_group(session, group_id)
    if group.status not in ("requested", "approved"):
        zh, en = STATUS_LABELS[group.status]
        raise RegistryError(
            f"只有待审批或已批准的群可以接管现有群聊（群 #{group.id}：{zh}）",
            f"only a requested or approved group can adopt a chat (group #{group.id} is {en})",
        )
    changes: dict[str, Any] = {"chatid": chatid}
    if group.status == "approved":
        changes["status"] = "active"
    group = update_group(session, group.id, changes, actor=actor, action="adopted")
    _record_members(session, group.id, info.get("userlist") or [])
    return group


def _record_members(session: Session, group_id: int, userlist: Iterable[str]) -> None:
    """Remember who the chat holds (chat_member: a hint for offboarding)."""
    from wecom_plugin.models.groups import ChatMember

    now = db_now(session)
    session.execute(sa.delete(ChatMember).where(ChatMember.group_id == group_id))
    seen: set[str] = set()
    for userid in userlist:
        if userid and fold(userid) not in seen:
            seen.add(fold(userid))
            session.add(ChatMember(group_id=group_id, userid_folded=fold(userid), userid=userid, seen_at=now))


def rename_member(session: Session, old: str, new: str, *, actor: str) -> list[int]:
    """A member's userid changed in WeCom (a rename keeps the person): every registry entry naming the
    old id (owner, admins, the rule's users, exemptions) names the new one, each change versioned and
    audited, so the daily check does not take the renamed person for a stranger. Returns the groups
    changed. The caller commits."""
    old_f = fold(old)
    if not old_f or old_f == fold(new):
        return []

    def swap(users: Any) -> Any:
        if not isinstance(users, list):
            return users
        return [new if isinstance(u, str) and fold(u) == old_f else u for u in users]

    changed: list[int] = []
    groups = session.scalars(sa.select(GovernedGroup).where(GovernedGroup.status != "archived")).all()
    for group in groups:
        values: dict[str, Any] = {}
        if fold(group.owner or "") == old_f:
            values["owner"] = new
        if any(fold(a or "") == old_f for a in (group.admins or ())):
            values["admins"] = swap(list(group.admins or ()))
        rule = group.rule if isinstance(group.rule, dict) else None
        if rule is not None:
            renamed = {
                k: ({**v, "users": swap(v.get("users"))} if isinstance(v, dict) and "users" in v else v)
                for k, v in rule.items()
            }
            if renamed != rule:
                values["rule"] = renamed
        if values:
            try:
                with session.begin_nested():
                    update_group(session, group.id, values, actor=actor, action="member_renamed",
                                 reason=f"成员账号 {old} 改为 {new} / userid {old} renamed to {new}")  # fmt: skip
                changed.append(group.id)
            except RegistryError as exc:  # recorded for a person: the check then reports the difference
                log.warning("group %s: could not follow the rename %s -> %s: %s", group.id, old, new, exc)
    exemptions = session.execute(
        sa.update(GroupExemption)
        .where(GroupExemption.userid_folded == old_f)
        .values(userid=new, userid_folded=fold(new))
    ).rowcount
    if changed or exemptions:
        audit.record(actor, "groups.member_renamed", target=f"user:{new}",
                     detail={"from": old, "to": new, "groups": changed, "exemptions": exemptions},
                     session=session)  # fmt: skip
    return changed


def migration_notice(group: GovernedGroup) -> str:
    """The notice the owner of an old, hand-made group is asked to post there (Chinese first)."""
    purpose = group.purpose or "—"
    return (
        "【群迁移通知】\n"
        f"本群为手动创建，无法纳入公司统一的群聊管理。公司已建立受管替代群「{group.name}」"
        f"（用途：{purpose}；群主：{group.owner}），由综合办公室备案。\n"
        "请各位成员移步新群继续沟通，本群今后不再使用。未收到新群邀请的同事，请联系新群群主或综合办公室。\n"
        "\n"
        "[Group migration]\n"
        f'This group was created by hand and cannot be governed. Its governed replacement is "{group.name}" '
        f"(owner: {group.owner}), registered with the general office.\n"
        "Please continue in the new group; this one will no longer be used. If you were not invited, contact the "
        "new group's owner or the general office."
    )


# --- reviews ---------------------------------------------------------------------------------------
def due_reviews(session: Session, today: date) -> list[GovernedGroup]:
    """Active groups whose review date has come."""
    stmt = (
        sa.select(GovernedGroup)
        .where(GovernedGroup.status == "active", GovernedGroup.review_date.is_not(None))
        .where(GovernedGroup.review_date <= today)
        .order_by(GovernedGroup.id)
    )
    return list(session.scalars(stmt))


def confirm_review(
    session: Session, group_id: int, *, actor: str, next_review_date: date | str, reason: str | None = None
) -> GovernedGroup:
    """The group is still needed: record it and set the next review date (in the future)."""
    group = get_group(session, group_id)
    if group.status != "active":
        raise RegistryError(f"群 #{group.id} 不是受管中的群", f"group #{group.id} is not active")
    if next_review_date in (None, ""):
        raise RegistryError("需要下次复核日期（--next）", "the next review date is required (--next)")
    return update_group(
        session, group.id, {"review_date": next_review_date}, actor=actor, action="review_confirmed", reason=reason
    )


def review_message(group: GovernedGroup) -> str:
    """The reminder the general office and the group's admins receive (Chinese first)."""
    return (
        f"【群聊复核提醒】受管群「{group.name}」（编号 {group.id}）已到复核日期 {jsonable(group.review_date)}。\n"
        f"用途：{group.purpose or '—'}\n"
        "请综合办公室与群管理员确认该群是否仍有需要：仍需要请运行 "
        f"`wecom-plugin groups review {group.id} --next YYYY-MM-DD --by 账号`；不再需要请归档"
        f"（`wecom-plugin groups archive {group.id} --by 账号 --reason 原因`）。\n"
        "\n"
        f'[Review reminder] The governed group "{group.name}" (#{group.id}) reached its review date '
        f"{jsonable(group.review_date)}. General office and group admins: please confirm it is still needed "
        f"(groups review {group.id} --next DATE) or archive it."
    )


# --- YAML export / import ---------------------------------------------------------------------------
@dataclass
class ImportReport:
    dry_run: bool
    created: list[dict[str, Any]] = field(default_factory=list)  # {"index", "name"}
    updated: list[dict[str, Any]] = field(default_factory=list)  # {"index", "id", "name", "fields"}
    unchanged: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    applied: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "applied": self.applied,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "warnings": self.warnings,
        }


def export_doc(session: Session) -> dict[str, Any]:
    now = db_now(session)
    groups = []
    for group in list_groups(session):
        entry: dict[str, Any] = {"id": group.id}
        snap = snapshot(group)
        for key in EXPORT_KEYS[1:]:
            if key == "exemptions":
                entry[key] = [
                    {"userid": e.userid, "reason": e.reason, "expires_at": jsonable(e.expires_at)}
                    for e in _active_exemptions(session, group.id, None, now)
                ]
            elif key == "rule":
                entry[key] = _canonical_rule(snap[key])
            else:
                entry[key] = snap[key]
        groups.append(entry)
    return {"format": EXPORT_FORMAT, "groups": groups}


def _canonical_rule(doc: Any) -> Any:
    """The rule in its canonical key order (PostgreSQL's JSONB does not keep the order written)."""
    try:
        return MembershipRule.from_doc(doc).to_doc()
    except RuleError:
        return doc


def export_yaml(session: Session) -> str:
    """Every group as YAML (stable key order, the rule as its canonical document, dates ISO)."""
    return yaml.safe_dump(export_doc(session), allow_unicode=True, sort_keys=False, default_flow_style=False, width=120)


def _entry_label(index: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return f"groups[{index}]" + (f"（{name}）" if isinstance(name, str) and name else "")


def import_yaml(session: Session, text: str, *, actor: str, dry_run: bool = False) -> ImportReport:
    """Create or update groups from a YAML export; all or nothing.

    Every entry is validated first; any problem refuses the whole import (:class:`RegistryError`
    naming each entry). An entry matching a group by ``chatid``, else by ``id``, updates it through
    :func:`update_group` (versioned); others are created (keeping their ``id`` when it is free) in
    the status given. Exemptions listed are added when missing. ``dry_run``: report only.
    """
    settings = _settings()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"第 {where.line + 1} 行 / line {where.line + 1}: " if where is not None else ""
        raise RegistryError(f"{line}不是有效的 YAML", f"{line}not valid YAML") from None
    if isinstance(doc, Mapping):
        entries = doc.get("groups")
        unknown = [k for k in doc if k not in ("format", "groups")]
        if unknown:
            raise RegistryError(f"未知的顶层字段：{unknown}", f"unknown top-level keys: {unknown}")
    elif isinstance(doc, list):
        entries = doc
    else:
        raise RegistryError("应为包含 groups 列表的 YAML 文档", "expected a YAML document with a groups list")
    if not isinstance(entries, list):
        raise RegistryError("groups 应为列表", "groups must be a list")

    today = _today(session, settings)
    directory = mirror_directory(session)
    report = ImportReport(dry_run=dry_run)
    problems: list[Problem] = []
    plans: list[tuple[str, int, Any, dict[str, Any], list[dict[str, Any]]]] = []
    seen_ids: dict[int, int] = {}
    seen_chatids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = _entry_label(index, entry)

        def add(p: Problem, label: str = label) -> None:
            problems.append(Problem(f"{label}.{p.path}" if p.path else label, p.zh, p.en, p.severity))

        if not isinstance(entry, Mapping):
            add(Problem("", "应为一个对象", "must be a mapping"))
            continue
        unknown = [k for k in entry if k not in EXPORT_KEYS]
        for key in unknown:
            add(Problem(str(key), f"未知字段“{key}”", f"unknown field {key!r}"))
        values = {k: v for k, v in entry.items() if k in WRITABLE}
        group = _match(session, entry, add)
        if group is None and entry.get("id") is not None:
            if entry["id"] in seen_ids:
                add(Problem("id", f"编号与 groups[{seen_ids[entry['id']]}] 重复", "duplicate id"))
            seen_ids.setdefault(entry["id"], index)
        chatid = entry.get("chatid")
        if isinstance(chatid, str) and chatid:
            if chatid in seen_chatids:
                add(Problem("chatid", f"群ID与 groups[{seen_chatids[chatid]}] 重复", "duplicate chatid"))
            seen_chatids.setdefault(chatid, index)
        exemptions = _check_exemptions(session, entry.get("exemptions"), settings, add)
        if group is None:
            for key in ("name", "purpose", "owner", "requested_by", "status"):
                if entry.get(key) in (None, ""):
                    add(Problem(key, f"缺少{FIELD_LABELS[key]}", f"{key} is required"))
            check = _Check(session, settings, today, strict_review=False, directory=directory)
            values.setdefault("rule", None)
            clean = check.run(values)
            if clean.get("status") in ("archived", "rejected"):
                # A closed group restored from a backup: people and departments may be gone since.
                lenient = ("owner", "admins", "requested_by", "department_id", "rule")
                moved = [p for p in check.problems if p.path.split("[")[0].split(".")[0] in lenient]
                check.problems = [p for p in check.problems if p not in moved]
                check.warnings += [Problem(p.path, p.zh, p.en, "warning") for p in moved]
            for p in check.problems:
                add(p)
            for p in check.warnings:
                report.warnings.append({"entry": label, **problem_dict(p)})
            plans.append(("create", index, entry.get("id"), clean, exemptions))
        else:
            current = snapshot(group)
            check = _Check(
                session, settings, today, current=current, strict_review=False, group_id=group.id, directory=directory
            )
            clean = check.run(values)
            status = clean.get("status", group.status)
            if status != group.status and status not in TRANSITIONS[group.status]:
                add(
                    Problem(
                        "status",
                        f"状态不能从 {group.status} 变为 {status}",
                        f"status cannot change from {group.status} to {status}",
                    )
                )
            for p in check.problems:
                add(p)
            changed = {k: v for k, v in clean.items() if jsonable(v) != current[k]}
            if "review_date" in changed and changed["review_date"] is not None and changed["review_date"] <= today:
                add(Problem("review_date", "复核日期不在今天之后", "the review date is not after today"))
            plans.append(("update", index, group, changed, exemptions))
    if problems:
        raise RegistryError(problems)

    for kind, index, target, values, exemptions in plans:
        label = {"index": index, "name": values.get("name") if kind == "create" else target.name}
        if kind == "create":
            report.created.append(label)
            if not dry_run:
                group = _create_imported(session, target, values, actor)
                _import_exemptions(session, group.id, exemptions, actor)
        else:
            now = db_now(session)
            have = {
                (e.userid_folded, jsonable(e.expires_at)) for e in _active_exemptions(session, target.id, None, now)
            }
            missing = [e for e in exemptions if (fold(e["userid"]), jsonable(e["expires_at"])) not in have]
            if values or missing:
                report.updated.append(
                    {**label, "id": target.id, "fields": sorted(values) + (["exemptions"] if missing else [])}
                )
                if not dry_run:
                    if values:
                        update_group(session, target.id, values, actor=actor, action="imported")
                    _import_exemptions(session, target.id, missing, actor)
            else:
                report.unchanged.append({**label, "id": target.id})
    if not dry_run:
        audit.record(
            actor, "groups.import", target="registry",
            detail={"created": len(report.created), "updated": len(report.updated)}, session=session,
        )  # fmt: skip
        report.applied = True
    return report


def _match(session: Session, entry: Mapping[str, Any], add: Any) -> GovernedGroup | None:
    chatid, group_id = entry.get("chatid"), entry.get("id")
    by_chat = None
    if isinstance(chatid, str) and chatid:
        by_chat = session.scalars(sa.select(GovernedGroup).where(GovernedGroup.chatid == chatid)).first()
    if group_id is not None and (type(group_id) is not int or group_id < 1):  # noqa: E721
        add(Problem("id", "编号应为正整数", "id must be a positive integer"))
        return by_chat
    by_id = session.get(GovernedGroup, group_id) if group_id is not None else None
    if by_chat is not None:
        if group_id is not None and by_id is not None and by_id.id != by_chat.id:
            add(
                Problem(
                    "id",
                    f"群ID {chatid} 属于群 #{by_chat.id}，与编号 {group_id} 不符",
                    "id and chatid name different groups",
                )
            )
        return by_chat
    if by_id is not None and by_id.chatid and chatid and by_id.chatid != chatid:
        add(
            Problem("chatid", f"群 #{group_id} 的群ID是 {by_id.chatid}", f"group #{group_id} has chatid {by_id.chatid}")
        )
    return by_id


def _check_exemptions(session: Session, raw: Any, settings: Any, add: Any) -> list[dict[str, Any]]:
    if raw in (None, []):
        return []
    if not isinstance(raw, list):
        add(Problem("exemptions", "豁免应为列表", "exemptions must be a list"))
        return []
    out = []
    people = _people(
        session, [e.get("userid") for e in raw if isinstance(e, Mapping) and isinstance(e.get("userid"), str)]
    )
    now = db_now(session)
    for i, item in enumerate(raw):
        path = f"exemptions[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"userid", "reason", "expires_at"}:
            add(Problem(path, "豁免应含 userid、reason、expires_at", "an exemption has userid, reason, expires_at"))
            continue
        person = people.get(fold(item.get("userid") or "")) if isinstance(item.get("userid"), str) else None
        until = _expiry(item.get("expires_at"), settings)
        if person is None:
            add(Problem(f"{path}.userid", f"通讯录中没有成员 {item.get('userid')}", "not in the directory"))
        elif not (isinstance(item.get("reason"), str) and item["reason"].strip()):
            add(Problem(f"{path}.reason", "豁免需要说明理由", "an exemption needs a reason"))
        elif until is None or until <= now or until > now + timedelta(days=settings.exemption_max_days, hours=24):
            add(
                Problem(f"{path}.expires_at", "到期时间无效或超出上限", "the expiry is invalid, past or beyond the cap")
            )
        else:
            out.append({"userid": person.userid, "reason": item["reason"].strip(), "expires_at": until})
    return out


def _import_exemptions(session: Session, group_id: int, exemptions: list[dict[str, Any]], actor: str) -> None:
    for e in exemptions:
        add_exemption(session, group_id, e["userid"], reason=e["reason"], expires_at=e["expires_at"], actor=actor)


def _create_imported(session: Session, group_id: int | None, values: dict[str, Any], actor: str) -> GovernedGroup:
    now = db_now(session)
    if group_id is not None and session.get(GovernedGroup, group_id) is not None:
        group_id = None  # taken: a new id
    group = GovernedGroup(**values, version=1, created_at=now, updated_at=now)
    if group_id is not None:
        group.id = group_id
    session.add(group)
    session.flush()
    if group_id is not None and session.get_bind().dialect.name == "postgresql":
        # An explicit id does not advance the serial: move it past the largest id.
        session.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('governed_group', 'id'), "
                "(SELECT COALESCE(MAX(id), 1) FROM governed_group))"
            )
        )
    session.add(
        GroupVersion(
            group_id=group.id, version=1, action="imported", actor=actor[:128], before={},
            after={**snapshot(group), "eligible_approvers": [group.approver] if group.approver else []},
            changed_at=now,
        )
    )  # fmt: skip
    audit.record(actor, "groups.imported", target=f"group:{group.id}", detail={"name": group.name}, session=session)
    return group
