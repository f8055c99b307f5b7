"""The membership rules of a governed group: who must be in the chat, who may stay, who may not.

Policy as data. A :class:`MembershipRule` is a document (YAML/JSON friendly, versioned by the
service through :meth:`MembershipRule.to_doc`) of three selectors:

* ``required``: added when missing;
* ``permitted``: may stay, but are not re-added after leaving on their own;
* ``exclude``: never members, whatever the includes say (excludes beat includes).

A selector names departments (with or without their sub-departments), tags, positions and
explicit users; ``exclude`` takes no positions (a position is free text any admin can type into
anyone's profile, too weak a key to take people out of chats by). The group's admins and its owner
are always required and never excluded; they are still removed when they depart, are disabled,
vanish from the directory or are not real-named (and the owner then needs re-homing).

Real-name rules (:class:`RealNamePolicy`): status active (not 4, "not activated"), and a directory
name that is present and not a placeholder ("测试1", "user1", a bare mobile number...). A member
failing only the name rule is told first and removed after a grace period; someone who would be
removed anyway (outside the rule) gets no grace.

Everything here is pure: the directory comes in through the :class:`Directory` protocol (the
service implements it over the mirror; :class:`InMemoryDirectory` over plain values), the clock
comes in as ``now``.

WeCom's facts these rules encode (contract §2, §3):

* userids compare case-insensitively (:func:`~wecom_plugin.domain.directory.fold`); a chat's
  ``userlist`` may spell an id differently from the directory.
* member ``status`` 1 active, 2 disabled, 4 not activated, 5 left.
* an app chat holds 2 to 2,000 members; the app itself is not in ``userlist``.
* department ids are 32-bit positive ints, the root is 1; "with sub-departments" covers the whole
  subtree. Tag ids are positive ints.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from wecom_plugin.domain.directory import ACTIVE, DISABLED, GONE, LEFT, NOT_ACTIVATED, MemberRecord, fold

MAX_ENTRIES = 1000  # per list in a rule document: a rule naming more is a mistake, not a policy
MAX_ID = 2**32 - 1  # WeCom department and tag ids are 32-bit
MAX_USERID_LENGTH = 64  # WeCom: a userid is 1 to 64 bytes
MAX_POSITION_LENGTH = 128  # WeCom: a position is at most 128 characters
CHAT_MAX_MEMBERS = 2000  # WeCom: an app chat holds at most 2,000 members

# The removal brake: more removals than this in one chat stop the run until a person confirms.
BRAKE_MIN_REMOVALS = 5
BRAKE_PERCENT = 10

SECTIONS = ("required", "permitted", "exclude")
SELECTOR_KEYS = ("departments", "tags", "positions", "users")
EXCLUDE_KEYS = ("departments", "tags", "users")

# Stable reason codes (stored in chat_change.reason) and their labels, Chinese first.
REASONS: dict[str, tuple[str, str]] = {
    "departed": ("已离职", "left the company"),
    "disabled": ("账号已禁用", "account disabled"),
    "not_in_directory": ("不在通讯录中", "not in the directory"),
    "not_real_name": ("未实名", "not real-named"),
    "outside_rule": ("不在本群成员范围内", "outside the group's membership rule"),
    "required_missing": ("应在群内但未在群中", "required but missing"),
}

# What RealNamePolicy.check answers, and labels for the detail of a not_real_name finding.
REAL_NAME_FAILURES: dict[str, tuple[str, str]] = {
    "not_activated": ("账号未激活", "account not activated"),
    "name_missing": ("通讯录中没有姓名", "no name in the directory"),
    "name_placeholder": ("通讯录姓名不是真实姓名", "the directory name is a placeholder"),
}

ACTIONS = ("remove", "add", "warn", "keep_exempt")


# --- problems ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rule document, or worth knowing about it."""

    path: str  # where in the document, e.g. "required.departments[2]"; "" for the whole document
    zh: str
    en: str
    severity: str = "error"  # "error" refuses the save; "warning" is reported


class RuleError(ValueError):
    """A rule document (or a real-name policy) that cannot be saved. ``.problems``: every problem found."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(f"{p.path or '(rule)'}: {p.en}" for p in self.problems) or "invalid rule")


# --- the rule ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DepartmentRef:
    id: int
    children: bool = True  # include the subtree


def _user_key(userid: str) -> tuple[str, str]:
    return (fold(userid), userid)


@dataclass(frozen=True)
class Selector:
    """Departments, tags, positions and users; a person matches when any entry names them.

    Canonical on construction (sorted, deduplicated, positions and userids stripped, bare ints read
    as departments with sub-departments), so equal selectors compare equal however they were written
    and :meth:`MembershipRule.to_doc` is stable. Validation is :meth:`MembershipRule.from_doc`'s job.
    """

    departments: tuple[DepartmentRef, ...] = ()
    tags: tuple[int, ...] = ()
    positions: tuple[str, ...] = ()  # exact match on the directory position, stripped
    users: tuple[str, ...] = ()  # userids as written (matched folded)

    def __post_init__(self) -> None:
        refs: dict[int, DepartmentRef] = {}
        for d in self.departments:
            ref = d if isinstance(d, DepartmentRef) else DepartmentRef(int(d))
            # The same department twice: the broader entry wins (it covers the narrower one).
            if ref.id not in refs or ref.children:
                refs[ref.id] = ref
        users: dict[str, str] = {}
        for u in sorted((u.strip() for u in self.users), key=_user_key):
            if u:
                users.setdefault(fold(u), u)
        object.__setattr__(self, "departments", tuple(refs[k] for k in sorted(refs)))
        object.__setattr__(self, "tags", tuple(sorted(set(self.tags))))
        object.__setattr__(self, "positions", tuple(sorted({p.strip() for p in self.positions} - {""})))
        object.__setattr__(self, "users", tuple(users.values()))

    def __bool__(self) -> bool:
        return bool(self.departments or self.tags or self.positions or self.users)

    def to_doc(self, keys: tuple[str, ...] = SELECTOR_KEYS) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "departments": [{"id": d.id, "children": d.children} for d in self.departments],
            "tags": list(self.tags),
            "positions": list(self.positions),
            "users": list(self.users),
        }
        return {k: doc[k] for k in keys}


@dataclass(frozen=True)
class MembershipRule:
    required: Selector = Selector()
    permitted: Selector = Selector()
    exclude: Selector = Selector()  # no positions (see the module docstring)

    def __post_init__(self) -> None:
        if self.exclude.positions:
            raise RuleError([_EXCLUDE_POSITIONS])

    @property
    def is_empty(self) -> bool:
        """No required and no permitted entries: only the admins and the owner belong."""
        return not (self.required or self.permitted)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> MembershipRule:
        """A rule from its document; :class:`RuleError` listing every problem when it is malformed.

        Shape: ``{"required": {"departments": [12, {"id": 15, "children": false}], "tags": [3],
        "positions": ["经理"], "users": ["zhangsan"]}, "permitted": {...}, "exclude": {"departments":
        [...], "tags": [...], "users": [...]}}``. Missing or null keys are empty; a bare department
        id includes its sub-departments.
        """
        problems: list[Problem] = []
        if doc is None:
            return cls()
        if not isinstance(doc, Mapping):
            raise RuleError([Problem("", "成员规则必须是一个对象", "a membership rule is an object (a mapping)")])
        for key in doc:
            if key not in SECTIONS:
                problems.append(
                    Problem(
                        str(key),
                        f"未知的字段“{key}”，可用：required、permitted、exclude",
                        f"unknown key {key!r}; known: required, permitted, exclude",
                    )
                )
        selectors = {s: _parse_selector(doc.get(s), s, problems) for s in SECTIONS}
        if problems:
            raise RuleError(problems)
        return cls(**selectors)

    def to_doc(self) -> dict[str, Any]:
        """The canonical document: every key present, departments as ``{"id", "children"}``, lists
        sorted. ``from_doc(rule.to_doc()) == rule``; equal rules give equal documents."""
        return {
            "required": self.required.to_doc(),
            "permitted": self.permitted.to_doc(),
            "exclude": self.exclude.to_doc(EXCLUDE_KEYS),
        }


_EXCLUDE_POSITIONS = Problem(
    "exclude.positions",
    "排除条件不支持职务（职务是任何管理员都能随意填写的文字），请改用部门、标签或成员",
    "exclude takes no positions (a position is free text anyone can be given); use departments, tags or users",
)


def _problem(problems: list[Problem], path: str, zh: str, en: str) -> None:
    problems.append(Problem(path, zh, en))


def _parse_selector(value: Any, path: str, problems: list[Problem]) -> Selector:
    if value is None:
        return Selector()
    if not isinstance(value, Mapping):
        _problem(
            problems,
            path,
            "应为一个对象（部门、标签、职务、成员）",
            "must be an object (departments, tags, positions, users)",
        )
        return Selector()
    allowed = EXCLUDE_KEYS if path == "exclude" else SELECTOR_KEYS
    for key in value:
        if key == "positions" and path == "exclude":
            if value[key]:  # an empty list is what a form sends for "none": harmless
                problems.append(_EXCLUDE_POSITIONS)
        elif key not in allowed:
            _problem(
                problems,
                f"{path}.{key}",
                f"未知的字段“{key}”，可用：{'、'.join(allowed)}",
                f"unknown key {key!r}; known: {', '.join(allowed)}",
            )
    return Selector(
        departments=_parse_departments(value.get("departments"), f"{path}.departments", problems),
        tags=_parse_ids(value.get("tags"), f"{path}.tags", problems, "标签", "tag"),
        positions=_parse_strings(value.get("positions"), f"{path}.positions", problems, _position_problem, str),
        users=_parse_strings(value.get("users"), f"{path}.users", problems, _userid_problem, fold),
    )


def _entries(value: Any, path: str, problems: list[Problem]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        _problem(problems, path, "应为列表", "must be a list")
        return []
    if len(value) > MAX_ENTRIES:
        # One problem, not one per entry: a thousand-line error helps no one.
        _problem(
            problems,
            path,
            f"最多 {MAX_ENTRIES} 项，实际 {len(value)} 项",
            f"at most {MAX_ENTRIES} entries, got {len(value)}",
        )
        return []
    return list(value)


def _id_problem(value: Any, zh_what: str, en_what: str) -> tuple[str, str] | None:
    # bool is an int in Python; ``true`` in a YAML list is a typo, not department 1.
    if type(value) is not int:  # noqa: E721 - exact type on purpose
        return (f"{zh_what}编号应为整数，实际为 {value!r}", f"a {en_what} id is an integer, got {value!r}")
    if not 1 <= value <= MAX_ID:
        return (
            f"{zh_what}编号应在 1 到 {MAX_ID} 之间，实际为 {value}",
            f"a {en_what} id is between 1 and {MAX_ID}, got {value}",
        )
    return None


def _duplicate(problems: list[Problem], path: str, first: str) -> None:
    _problem(problems, path, f"与 {first} 重复", f"duplicates {first}")


def _parse_ids(value: Any, path: str, problems: list[Problem], zh_what: str, en_what: str) -> tuple[int, ...]:
    seen: dict[int, str] = {}
    for i, item in enumerate(_entries(value, path, problems)):
        where = f"{path}[{i}]"
        bad = _id_problem(item, zh_what, en_what)
        if bad:
            _problem(problems, where, *bad)
        elif item in seen:
            _duplicate(problems, where, seen[item])
        else:
            seen[item] = where
    return tuple(seen)


def _parse_departments(value: Any, path: str, problems: list[Problem]) -> tuple[DepartmentRef, ...]:
    seen: dict[int, str] = {}
    refs: list[DepartmentRef] = []
    for i, item in enumerate(_entries(value, path, problems)):
        where = f"{path}[{i}]"
        if isinstance(item, Mapping):
            for key in item:
                if key not in ("id", "children"):
                    _problem(
                        problems,
                        f"{where}.{key}",
                        f"未知的字段“{key}”，可用：id、children",
                        f"unknown key {key!r}; known: id, children",
                    )
            dep_id, children = item.get("id"), item.get("children", True)
            ok = True
            if "id" not in item:
                _problem(problems, f"{where}.id", "缺少部门编号", "missing the department id")
                ok = False
            elif bad := _id_problem(dep_id, "部门", "department"):
                _problem(problems, f"{where}.id", *bad)
                ok = False
            if not isinstance(children, bool):
                _problem(
                    problems,
                    f"{where}.children",
                    f"children 应为 true 或 false，实际为 {children!r}",
                    f"children is true or false, got {children!r}",
                )
                ok = False
            if not ok:
                continue
        elif bad := _id_problem(item, "部门", "department"):
            if type(item) is not int:  # noqa: E721
                bad = (
                    f"部门应写作编号或 {{id, children}}，实际为 {item!r}",
                    f"a department is an id or {{id, children}}, got {item!r}",
                )
            _problem(problems, where, *bad)
            continue
        else:
            dep_id, children = item, True
        if dep_id in seen:
            _duplicate(problems, where, seen[dep_id])
            continue
        seen[dep_id] = where
        refs.append(DepartmentRef(dep_id, children))
    return tuple(refs)


def _position_problem(text: str) -> tuple[str, str] | None:
    if len(text) > MAX_POSITION_LENGTH:
        return (f"职务最长 {MAX_POSITION_LENGTH} 个字符", f"a position is at most {MAX_POSITION_LENGTH} characters")
    return None


def _userid_problem(text: str) -> tuple[str, str] | None:
    if len(text.encode("utf-8")) > MAX_USERID_LENGTH:
        return (f"成员账号最长 {MAX_USERID_LENGTH} 字节", f"a userid is at most {MAX_USERID_LENGTH} bytes")
    if any(c.isspace() for c in text):
        return ("成员账号不能包含空格", "a userid has no spaces")
    return None


def _parse_strings(value: Any, path: str, problems: list[Problem], check: Any, key: Any) -> tuple[str, ...]:
    """Non-empty strings (stripped), unique by ``key`` (userids: folded; WeCom treats them as one)."""
    seen: dict[str, str] = {}
    out: list[str] = []
    for i, item in enumerate(_entries(value, path, problems)):
        where = f"{path}[{i}]"
        if not isinstance(item, str):
            _problem(problems, where, f"应为文字，实际为 {item!r}", f"must be a string, got {item!r}")
            continue
        text = item.strip()
        if not text:
            _problem(problems, where, "不能为空", "must not be empty")
            continue
        if bad := check(text):
            _problem(problems, where, *bad)
            continue
        k = key(text)
        if k in seen:
            _duplicate(problems, where, seen[k])
            continue
        seen[k] = where
        out.append(text)
    return tuple(out)


# --- the directory ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Person:
    """A directory member as membership rules see them."""

    userid: str  # as WeCom spells it
    name: str
    status: int
    departments: tuple[int, ...] = ()
    position: str = ""
    tags: frozenset[int] = frozenset()

    @property
    def folded(self) -> str:
        return fold(self.userid)

    @classmethod
    def from_record(cls, record: MemberRecord, tags: Iterable[int] = ()) -> Person:
        return cls(record.userid, record.name, record.status, record.departments, record.position, frozenset(tags))


class Directory(Protocol):
    """What evaluation reads. Membership queries answer folded userids of everyone the directory
    holds, whatever their status (evaluation decides what a status means).

    Answer sets (``frozenset``) and cache them for the run: evaluation tests membership with ``in``
    and converts anything else to a set, once per chat.
    """

    def person(self, userid: str) -> Person | None: ...  # by any spelling

    def department_members(self, department_id: int, children: bool) -> Iterable[str]: ...

    def tag_members(self, tag_id: int) -> Iterable[str]: ...

    def position_members(self, position: str) -> Iterable[str]: ...  # stripped, exact

    def has_department(self, department_id: int) -> bool: ...

    def has_tag(self, tag_id: int) -> bool: ...


_EMPTY: frozenset[str] = frozenset()


class InMemoryDirectory:
    """:class:`Directory` over plain values: built once per run, queried for every chat.

    ``departments``: department id -> parent id (the root's parent is 0); ``tags``: known tag ids.
    A department or tag someone is in is known too. Subtree memberships are computed on first use
    and cached (a daily check asks for the same few departments across many chats).
    """

    def __init__(
        self,
        people: Iterable[Person],
        departments: Mapping[int, int] | Iterable[tuple[int, int]] = (),
        tags: Iterable[int] = (),
    ) -> None:
        self._people: dict[str, Person] = {}
        direct: dict[int, set[str]] = {}
        by_tag: dict[int, set[str]] = {}
        by_position: dict[str, set[str]] = {}
        for p in people:
            folded = p.folded
            if folded in self._people:
                raise ValueError(f"two people with the userid {p.userid!r} (userids compare case-insensitively)")
            self._people[folded] = p
            for d in p.departments:
                direct.setdefault(d, set()).add(folded)
            for t in p.tags:
                by_tag.setdefault(t, set()).add(folded)
            position = p.position.strip()
            if position:
                by_position.setdefault(position, set()).add(folded)
        parents = dict(departments.items() if isinstance(departments, Mapping) else departments)
        self._children: dict[int, list[int]] = {}
        for dep, parent in parents.items():
            if dep != parent:
                self._children.setdefault(parent, []).append(dep)
        self._direct = {d: frozenset(s) for d, s in direct.items()}
        self._tags = {t: frozenset(s) for t, s in by_tag.items()}
        self._positions = {p: frozenset(s) for p, s in by_position.items()}
        self._known_departments = frozenset(parents) | frozenset(direct)
        self._known_tags = frozenset(tags) | frozenset(by_tag)
        self._subtrees: dict[int, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self._people)

    def __iter__(self) -> Iterator[Person]:
        return iter(self._people.values())

    def person(self, userid: str) -> Person | None:
        return self._people.get(fold(userid))

    def department_members(self, department_id: int, children: bool = True) -> frozenset[str]:
        if not children:
            return self._direct.get(department_id, _EMPTY)
        cached = self._subtrees.get(department_id)
        if cached is None:
            cached = self._subtrees[department_id] = frozenset().union(
                *(self._direct.get(d, _EMPTY) for d in self.subtree(department_id))
            )
        return cached

    def subtree(self, department_id: int) -> list[int]:
        """The department and every department under it (a cycle in bad data is walked once)."""
        seen = {department_id}
        out = [department_id]
        stack = [department_id]
        while stack:
            for child in self._children.get(stack.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    stack.append(child)
        return out

    def tag_members(self, tag_id: int) -> frozenset[str]:
        return self._tags.get(tag_id, _EMPTY)

    def position_members(self, position: str) -> frozenset[str]:
        return self._positions.get(position.strip(), _EMPTY)

    def has_department(self, department_id: int) -> bool:
        return department_id in self._known_departments

    def has_tag(self, tag_id: int) -> bool:
        return tag_id in self._known_tags


def _as_set(members: Iterable[str]) -> AbstractSet[str]:
    return members if isinstance(members, AbstractSet) else frozenset(members)


def _selector_sets(selector: Selector, directory: Directory) -> list[AbstractSet[str]]:
    sets: list[AbstractSet[str]] = []
    if selector.users:
        sets.append(frozenset(fold(u) for u in selector.users))
    sets.extend(_as_set(directory.department_members(d.id, d.children)) for d in selector.departments)
    sets.extend(_as_set(directory.tag_members(t)) for t in selector.tags)
    sets.extend(_as_set(directory.position_members(p)) for p in selector.positions)
    return [s for s in sets if s]


def selector_members(selector: Selector, directory: Directory) -> frozenset[str]:
    """Folded userids a selector names (whatever their status; explicit users even when unknown)."""
    return frozenset().union(*_selector_sets(selector, directory))


def check_rule(rule: MembershipRule, directory: Directory) -> list[Problem]:
    """Problems of a valid rule against today's directory.

    Errors: unknown department or tag ids. Warnings: users not in the directory, departed or
    disabled (in required/permitted); a position nobody holds; a user both included and excluded;
    required covering more people than a chat holds; a rule with no required and no permitted
    entries (only the admins and the owner belong). Paths index the canonical lists (as
    :meth:`MembershipRule.to_doc` writes them).
    """
    problems: list[Problem] = []
    for section in SECTIONS:
        selector: Selector = getattr(rule, section)
        for i, ref in enumerate(selector.departments):
            if not directory.has_department(ref.id):
                _problem(
                    problems,
                    f"{section}.departments[{i}]",
                    f"通讯录中没有部门 {ref.id}",
                    f"no department {ref.id} in the directory",
                )
        for i, tag in enumerate(selector.tags):
            if not directory.has_tag(tag):
                _problem(problems, f"{section}.tags[{i}]", f"通讯录中没有标签 {tag}", f"no tag {tag} in the directory")
        for i, position in enumerate(selector.positions):
            if next(iter(directory.position_members(position)), None) is None:
                problems.append(
                    Problem(
                        f"{section}.positions[{i}]",
                        f"通讯录中没有人的职务是“{position}”（职务需完全一致）",
                        f"nobody in the directory has the position {position!r} (exact match)",
                        "warning",
                    )
                )
        for i, userid in enumerate(selector.users):
            person = directory.person(userid)
            where = f"{section}.users[{i}]"
            if person is None:
                problems.append(
                    Problem(
                        where,
                        f"成员 {userid} 尚不在通讯录中",
                        f"{userid} is not in the directory (yet)",
                        "warning",
                    )
                )
            elif section != "exclude" and person.status in GONE:
                zh, en = REASONS["departed" if person.status == LEFT else "disabled"]
                problems.append(Problem(where, f"成员 {userid} {zh}", f"{userid}: {en}", "warning"))
    excluded_users = {fold(u): i for i, u in enumerate(rule.exclude.users)}
    for section in ("required", "permitted"):
        for userid in getattr(rule, section).users:
            if fold(userid) in excluded_users:
                problems.append(
                    Problem(
                        f"exclude.users[{excluded_users[fold(userid)]}]",
                        f"成员 {userid} 同时在 {section} 和 exclude 中：排除优先",
                        f"{userid} is both in {section} and in exclude: exclude wins",
                        "warning",
                    )
                )
    if rule.is_empty:
        problems.append(
            Problem(
                "",
                "规则没有任何必须或允许的成员：群内只保留群主和群管理员",
                "the rule requires and permits nobody: only the owner and the group admins belong",
                "warning",
            )
        )
    elif rule.required:
        required = selector_members(rule.required, directory) - selector_members(rule.exclude, directory)
        if len(required) > CHAT_MAX_MEMBERS:
            problems.append(
                Problem(
                    "required",
                    f"必须成员有 {len(required)} 人，超过群人数上限 {CHAT_MAX_MEMBERS}",
                    f"required covers {len(required)} people, more than a chat holds ({CHAT_MAX_MEMBERS})",
                    "warning",
                )
            )
    return problems


# --- real names ---------------------------------------------------------------------------------
# Matched with re.fullmatch, IGNORECASE, on the NFKC-normalised stripped name (so full-width
# "Ｔｅｓｔ１" reads as "Test1"). Whole-name matches only: a real name that merely contains one of
# these words ("李测", "Testa", "Guestrin", "王临") is never flagged. Nothing here compares the name
# with the userid: userid "tom" named "Tom" is a real person.
DEFAULT_PLACEHOLDER_PATTERNS: tuple[str, ...] = (
    # Only digits, punctuation, symbols, spaces or emoji: "123", "--", "???", a bare mobile number
    # ("13800138000", "138****8000", "+86 138..."). A real name has a letter or a 汉字.
    r"[\d\W_]+",
    # English test/demo accounts, optionally numbered: "test", "Test01", "test_user 2", "demo", "tmp1".
    r"(?:test|demo|temp|tmp)[\s_.\-]*(?:user|account|acct)?[\s_.\-]*\d*",
    # Chinese test accounts: "测试", "测试1", "测试账号2", "测试员".
    r"测试[\s_.\-]*(?:用户|账号|帐号|人员|员|号)?[\s_.\-]*\d*",
    # Temporary and new-hire stand-ins: "临时", "临时工", "新员工", "新人1" (bare "新" is a surname: not flagged).
    r"(?:临时(?:工|人员|员工|用户|账号|帐号)?|新(?:员工|同事|人|用户|成员|账号|帐号))\d*",
    # To be filled in, unknown, anonymous: "待定", "未命名", "未知", "暂无", "无名氏", "匿名", "匿名用户3".
    r"(?:待定|待填写?|待补充|待完善|待命名|未命名|未知|未填写?|未设置|未实名|暂无|无名氏?|无姓名|匿名(?:用户)?)\d*",
    # A role or a generic word instead of a name, optionally numbered: "用户123", "外包1", "访客",
    # "实习生2", "管理员", "微信用户", "手机用户13800138000", "姓名" (a form label typed as the name).
    r"(?:用户|成员|员工|职员|同事|手机用户|微信用户|企业微信用户|访客|游客|来宾|客人|外包(?:人员|员工)?|外协|实习生"
    r"|(?:系统)?管理员|姓名|名字|真实姓名)[\s_.\-]*\d*",
    # The same in English: "user1", "guest", "visitor_2", "admin", "unknown", "N/A", "xxx".
    r"(?:user|member|guest|visitor|admin(?:istrator)?|employee|anonymous|unknown|nobody|no[\s_.\-]?name|null|none"
    r"|undefined|n/a|tbd|x{2,})[\s_.\-]*\d*",
    # "Somebody", as Chinese documents write an unnamed person: "某某", "某人", "张某", "张某某".
    r"某+人?|\w某{1,2}",
    # One Latin letter, optionally numbered: "a", "X", "A1". No real name is a single letter.
    r"[a-z]\d*",
)

_GROUP_REFERENCE = re.compile(r"\\[1-9]|\(\?P=|\(\?\(")  # \1, (?P=name), (?(1)yes|no)
_VERDICT_CACHE_LIMIT = 1 << 18  # names seen per policy; a tenant has at most a few hundred thousand


@dataclass(frozen=True)
class RealNamePolicy:
    """What counts as real-named: active (not "not activated") and a name that is not a placeholder."""

    placeholder_patterns: tuple[str, ...] = DEFAULT_PLACEHOLDER_PATTERNS
    name_grace: timedelta = timedelta(days=3)  # from first telling a member to removing them

    def __post_init__(self) -> None:
        if isinstance(self.placeholder_patterns, str):
            raise RuleError(
                [Problem("placeholder_patterns", "应为正则表达式列表", "must be a list of regular expressions")]
            )
        object.__setattr__(self, "placeholder_patterns", tuple(self.placeholder_patterns))
        if not isinstance(self.name_grace, timedelta) or self.name_grace < timedelta(0):
            raise RuleError(
                [Problem("name_grace", "宽限期不能为负", "the name grace period is a non-negative duration")]
            )
        # Not fields: caches, invisible to ==, hash and repr.
        object.__setattr__(self, "_matcher", None)
        object.__setattr__(self, "_verdicts", {})

    def compile(self) -> Any:
        """The compiled matcher (a callable: name -> match or None), cached. :class:`RuleError` naming
        every pattern that is not a valid regular expression."""
        matcher = self._matcher  # type: ignore[attr-defined]
        if matcher is not None:
            return matcher
        problems: list[Problem] = []
        compiled: list[re.Pattern[str]] = []
        for i, pattern in enumerate(self.placeholder_patterns):
            where = f"placeholder_patterns[{i}]"
            if not isinstance(pattern, str):
                problems.append(
                    Problem(
                        where, f"应为正则表达式文字，实际为 {pattern!r}", f"must be a regex string, got {pattern!r}"
                    )
                )
                continue
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                problems.append(
                    Problem(
                        where,
                        f"不是有效的正则表达式：{pattern!r}（{exc}）",
                        f"not a valid regular expression: {pattern!r} ({exc})",
                    )
                )
        if problems:
            raise RuleError(problems)
        patterns = tuple(compiled)

        def matcher(name: str) -> bool:
            return any(p.fullmatch(name) for p in patterns)

        # One alternation is several times faster than a loop over patterns (a daily check reads
        # every member of every chat). Not when a pattern refers to its groups by number (joined,
        # the numbers would shift) or carries its own global flags (those only work alone).
        if not any(_GROUP_REFERENCE.search(p) for p in self.placeholder_patterns):
            try:
                matcher = re.compile("|".join(f"(?:{p})" for p in self.placeholder_patterns), re.IGNORECASE).fullmatch
            except re.error:
                pass

        object.__setattr__(self, "_matcher", matcher)
        return matcher

    def check_name(self, name: str) -> str | None:
        """None for a real name; "name_missing" or "name_placeholder"."""
        verdicts: dict[str, str | None] = self._verdicts  # type: ignore[attr-defined]
        try:
            return verdicts[name]
        except KeyError:
            pass
        text = unicodedata.normalize("NFKC", name or "").strip()
        if not text:
            verdict: str | None = "name_missing"
        else:
            verdict = "name_placeholder" if self.compile()(text) else None
        if len(verdicts) >= _VERDICT_CACHE_LIMIT:
            verdicts.clear()
        verdicts[name] = verdict
        return verdict

    def check(self, person: Person) -> str | None:
        """None when real-named; else "not_activated", "name_missing" or "name_placeholder".
        Disabled and departed people are not this function's business (evaluation handles them)."""
        if person.status == NOT_ACTIVATED:
            return "not_activated"
        return self.check_name(person.name)


# --- a group's facts and what they make of a chat --------------------------------------------------
@dataclass(frozen=True)
class Exemption:
    """A person allowed in the chat whatever the rule says, for a reason, until ``expires_at``."""

    userid: str
    reason: str
    expires_at: datetime | None  # aware; None: no expiry (the service requires one, the rules accept None)

    def active(self, now: datetime) -> bool:
        if self.expires_at is None:
            return True
        if self.expires_at.tzinfo is None:
            raise ValueError("Exemption.expires_at must be timezone-aware")
        return self.expires_at > now


@dataclass(frozen=True)
class GroupFacts:
    rule: MembershipRule
    owner: str  # userid; "" when unknown (then owner_gone)
    admins: tuple[str, ...] = ()
    exemptions: tuple[Exemption, ...] = ()
    name_flagged_since: Mapping[str, datetime] = field(default_factory=dict)  # folded userid -> first told

    def __post_init__(self) -> None:
        object.__setattr__(self, "admins", tuple(self.admins))
        object.__setattr__(self, "exemptions", tuple(self.exemptions))

    @property
    def always(self) -> frozenset[str]:
        """Folded userids always required and never excluded: the admins and the owner."""
        return frozenset(fold(u) for u in (self.owner, *self.admins) if u)


@dataclass(frozen=True)
class Finding:
    userid: str  # as in the chat (removals, warnings) or as in the directory (additions)
    action: str  # "remove" | "add" | "warn" | "keep_exempt"
    reason: str  # a REASONS key
    detail: str = ""  # a REAL_NAME_FAILURES key, "excluded"/"not_included", or the exemption's reason


def _in_any(folded: str, sets: list[AbstractSet[str]]) -> bool:
    # A plain loop: any() over a generator costs twice as much, and this runs per member per chat.
    for members in sets:
        if folded in members:
            return True
    return False


class _Resolved:
    """A rule resolved against a directory: set lookups per selector entry, for one chat."""

    __slots__ = ("always", "required", "permitted", "exclude")

    def __init__(self, facts: GroupFacts, directory: Directory) -> None:
        self.always = facts.always
        self.required = _selector_sets(facts.rule.required, directory)
        self.permitted = self.required + _selector_sets(facts.rule.permitted, directory)
        self.exclude = _selector_sets(facts.rule.exclude, directory)

    def excluded(self, folded: str) -> bool:
        return folded not in self.always and _in_any(folded, self.exclude)

    def required_named(self) -> frozenset[str]:
        return self.always.union(*self.required)


@dataclass(frozen=True)
class Desired:
    required: frozenset[str]  # folded; eligible, not excluded; admins and owner when eligible
    permitted: frozenset[str]  # folded; may stay (includes required)
    ineligible: Mapping[str, str]  # folded -> reason, for people the rule names who cannot be members


def _ineligibility(person: Person | None, policy: RealNamePolicy) -> str | None:
    if person is None:
        return "not_in_directory"
    if person.status == LEFT:
        return "departed"
    if person.status == DISABLED:
        return "disabled"
    if policy.check(person) is not None:
        return "not_real_name"
    return None


def desired_members(facts: GroupFacts, directory: Directory, policy: RealNamePolicy) -> Desired:
    """Who the rule puts in the chat, whatever it holds now (the preview's "who would be in").

    Cost is the size of the selectors (a permitted root department reads the whole directory);
    :func:`evaluate` does not call this.
    """
    resolved = _Resolved(facts, directory)
    named_required = resolved.required_named()
    required: set[str] = set()
    permitted: set[str] = set()
    ineligible: dict[str, str] = {}
    for folded in resolved.always.union(*resolved.permitted):
        reason = _ineligibility(directory.person(folded), policy)
        if reason is None and resolved.excluded(folded):
            reason = "outside_rule"
        if reason is not None:
            ineligible[folded] = reason
            continue
        permitted.add(folded)
        if folded in named_required:
            required.add(folded)
    return Desired(frozenset(required), frozenset(permitted), ineligible)


@dataclass(frozen=True)
class Evaluation:
    findings: tuple[Finding, ...]  # removals, additions, warnings, exempted; each by folded userid
    removals: tuple[Finding, ...]
    additions: tuple[Finding, ...]
    warnings: tuple[Finding, ...]  # name-rule members inside their grace period: to be told
    owner_gone: bool  # the owner is departed, disabled, not in the directory, unknown or being removed
    exempted: tuple[Finding, ...] = ()  # keep_exempt: kept only because of an exemption
    chat_size: int = 0  # distinct members in the chat as read

    def counts(self) -> dict[str, int]:
        """Removals, additions and warnings per reason (every REASONS key, zeros included);
        exempted members are not counted (``len(evaluation.exempted)``)."""
        out = dict.fromkeys(REASONS, 0)
        for f in (*self.removals, *self.additions, *self.warnings):
            out[f.reason] = out.get(f.reason, 0) + 1
        return out

    @property
    def braked(self) -> bool:
        """More removals than :func:`brake_limit` allows: the run stops for a person to confirm."""
        return len(self.removals) > brake_limit(self.chat_size)


def _by_userid(f: Finding) -> tuple[str, str]:
    return (fold(f.userid), f.userid)


def _classify(
    folded: str,
    person: Person | None,
    resolved: _Resolved,
    policy: RealNamePolicy,
    flagged: Mapping[str, datetime],
    now: datetime,
) -> tuple[str, str, str] | None:
    """(action, reason, detail) for one current member, exemptions aside; None to keep silently."""
    if person is None:
        return ("remove", "not_in_directory", "")
    if person.status == LEFT:
        return ("remove", "departed", "")
    if person.status == DISABLED:
        return ("remove", "disabled", "")
    failure = policy.check(person)
    if failure == "not_activated":
        return ("remove", "not_real_name", failure)
    if failure is not None:
        since = flagged.get(folded)
        if since is not None and now >= since + policy.name_grace:
            return ("remove", "not_real_name", failure)
    if folded not in resolved.always:
        # Before the name grace: the grace is for members failing *only* the name rule.
        if _in_any(folded, resolved.exclude):
            return ("remove", "outside_rule", "excluded")
        if not _in_any(folded, resolved.permitted):
            return ("remove", "outside_rule", "not_included")
    if failure is not None:
        return ("warn", "not_real_name", failure)
    return None


def _folded_flags(flags: Mapping[str, datetime]) -> Mapping[str, datetime]:
    if all(k == fold(k) for k in flags):
        return flags
    out: dict[str, datetime] = {}
    for k, since in flags.items():
        f = fold(k)
        out[f] = min(since, out[f]) if f in out else since  # two spellings: the first telling counts
    return out


def evaluate(
    facts: GroupFacts, current: Iterable[str], directory: Directory, policy: RealNamePolicy, now: datetime
) -> Evaluation:
    """The differences between a chat and its rule.

    ``current``: the chat's ``userlist`` as ``appchat/get`` answered (any case). Each member, the
    first match winning:

    1. an unexpired exemption (``expires_at > now``) keeps them (a ``keep_exempt`` finding with the
       reason they would otherwise have; none when they would stay anyway);
    2. not in the directory: remove ``not_in_directory``;
    3. departed / disabled: remove ``departed`` / ``disabled``;
    4. not activated: remove ``not_real_name``; a name failure told ``policy.name_grace`` ago or
       earlier (``name_flagged_since``): remove ``not_real_name``;
    5. excluded, or named by neither required nor permitted (admins and the owner never are):
       remove ``outside_rule``;
    6. a name failure inside its grace (or not yet told): warn ``not_real_name`` (told first);
    7. else keep, no finding.

    Then every required person not in the chat, active, real-named and not excluded: add
    ``required_missing`` (spelled as the directory spells them). A person in ``current`` twice
    (two spellings) is reported once, as first spelled; nobody is both added and removed.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    resolved = _Resolved(facts, directory)
    exemptions: dict[str, Exemption] = {}
    for exemption in facts.exemptions:
        if exemption.active(now):
            exemptions.setdefault(fold(exemption.userid), exemption)
    flagged = _folded_flags(facts.name_flagged_since)

    seen: set[str] = set()
    removals: list[Finding] = []
    warnings: list[Finding] = []
    exempted: list[Finding] = []
    removed: set[str] = set()
    for userid in current:
        if not userid:
            continue
        folded = fold(userid)
        if folded in seen:
            continue
        seen.add(folded)
        verdict = _classify(folded, directory.person(folded), resolved, policy, flagged, now)
        exemption = exemptions.get(folded)
        if exemption is not None:
            if verdict is not None:
                exempted.append(Finding(userid, "keep_exempt", verdict[1], exemption.reason))
        elif verdict is not None:
            action, reason, detail = verdict
            if action == "remove":
                removed.add(folded)
                removals.append(Finding(userid, "remove", reason, detail))
            else:
                warnings.append(Finding(userid, "warn", reason, detail))

    additions: list[Finding] = []
    for folded in resolved.required_named() - seen:
        person = directory.person(folded)
        if (
            person is not None
            and person.status == ACTIVE
            and not resolved.excluded(folded)
            and policy.check(person) is None
        ):
            additions.append(Finding(person.userid, "add", "required_missing"))

    owner = directory.person(facts.owner) if facts.owner else None
    owner_gone = owner is None or owner.status in GONE or fold(facts.owner) in removed

    removals.sort(key=_by_userid)
    additions.sort(key=_by_userid)
    warnings.sort(key=_by_userid)
    exempted.sort(key=_by_userid)
    return Evaluation(
        findings=(*removals, *additions, *warnings, *exempted),
        removals=tuple(removals),
        additions=tuple(additions),
        warnings=tuple(warnings),
        owner_gone=owner_gone,
        exempted=tuple(exempted),
        chat_size=len(seen),
    )


def brake_limit(chat_size: int) -> int:
    """Most removals one run may make in one chat without a person confirming: max(5, ceil(10%))."""
    return max(BRAKE_MIN_REMOVALS, math.ceil(max(chat_size, 0) * BRAKE_PERCENT / 100))


def pick_owner(
    facts: GroupFacts,
    staying: Iterable[str],
    directory: Directory,
    department_leaders: Iterable[str] = (),
    policy: RealNamePolicy | None = None,
    exclude: Iterable[str] = (),
) -> str | None:
    """A new owner when the current one is gone, as the directory spells their userid.

    In order: the first group admin (as listed) who is active, real-named and staying in (or being
    added to) the chat; else the first department leader (the caller's order, from the requesting
    department) who is active and real-named; else the first active, real-named required member
    staying, by folded userid; else None. The current owner is never picked, nor anyone in
    ``exclude`` (any spelling): people being removed or offboarded, still active in the directory.
    """
    policy = policy or RealNamePolicy()
    gone = fold(facts.owner) if facts.owner else None
    excluded = {fold(u) for u in exclude if u}
    staying_folded = {fold(u) for u in staying if u}

    def eligible(userid: str) -> Person | None:
        person = directory.person(userid) if userid else None
        if person is None or person.folded == gone or person.folded in excluded or person.status != ACTIVE:
            return None
        if policy.check(person) is not None:
            return None
        return person

    for admin in facts.admins:
        if admin and fold(admin) in staying_folded and (person := eligible(admin)):
            return person.userid
    for leader in department_leaders:
        if person := eligible(leader):
            return person.userid
    resolved = _Resolved(facts, directory)
    for folded in sorted(staying_folded):
        if _in_any(folded, resolved.required) and not resolved.excluded(folded):
            if person := eligible(folded):
                return person.userid
    return None
