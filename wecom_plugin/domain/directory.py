"""The org directory's rules: what a member record is, when it changed, what counts as a departure.

Pure functions over plain values; no I/O. The services feed them what WeCom answered and what the
mirror holds, and apply what they decide.

WeCom's facts these rules encode (contract §2, §8):

* ``status`` 1 active, 2 disabled, 4 not activated, 5 left (退出企业).
* userids compare case-insensitively; an admin can rename one (``NewUserID`` on update_user, or
  silently: then the old id answers 60111 and a new id with the same person appears).
* A departure is only ever one of: a delete_user event, a status change to disabled or left, or
  absence from a *complete* full sync confirmed by ``user/get`` answering 60111. One 60111 on a
  re-read is not a departure (it may be an unannounced rename); 60011 is a scope problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import orjson

ACTIVE, DISABLED, NOT_ACTIVATED, LEFT = 1, 2, 4, 5
STATUS_NAMES = {ACTIVE: "active", DISABLED: "disabled", NOT_ACTIVATED: "not_activated", LEFT: "left"}
STATUS_ZH = {ACTIVE: "已激活", DISABLED: "已禁用", NOT_ACTIVATED: "未激活", LEFT: "已离职"}
GONE = (DISABLED, LEFT)  # statuses that take a person out of governed groups

# The mass-change brake: a sync that would mark more than this many members departed stops.
BRAKE_MIN_MEMBERS = 10
BRAKE_FRACTION = 0.05


def fold(userid: str) -> str:
    """The form userids are compared and looked up in (WeCom compares them case-insensitively)."""
    return userid.casefold()


def _fingerprint(values: Mapping[str, Any]) -> str:
    canonical = json.dumps(values, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


MEMBER_FIELDS = (
    "userid",
    "name",
    "departments",
    "main_department",
    "position",
    "is_leader_in_dept",
    "direct_leaders",
    "status",
    "employee_id",
)
#: The longest employee number (工号) the mirror keeps; a longer value counts as none.
EMPLOYEE_ID_MAX = 128


def employee_value(row: Mapping[str, Any], field: str) -> str | None:
    """The employee number (工号) a ``user/get`` answer or ``user/list`` row carries in ``field``
    (EMPLOYEE_ID_FIELD): ``alias`` (别名), else the custom field (``extattr.attrs``) of that name,
    text type (``{"type":0,"name":..,"text":{"value":..}}``, or the older ``{"name":..,"value":..}``).

    Trimmed; None when the field is off (empty), missing, blank, not text or longer than
    :data:`EMPLOYEE_ID_MAX`. Compared exactly (case-sensitive) after trimming.
    """
    if not field:
        return None
    if field == "alias":
        value: Any = row.get("alias")
    else:
        value = None
        extattr = row.get("extattr")
        attrs = extattr.get("attrs") if isinstance(extattr, Mapping) else None
        for attr in attrs if isinstance(attrs, list) else ():
            if not isinstance(attr, Mapping) or attr.get("name") != field:
                continue
            text = attr.get("text")
            value = text.get("value") if isinstance(text, Mapping) else attr.get("value")
            break
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if value and len(value) <= EMPLOYEE_ID_MAX else None


def fingerprint_values(values: Mapping[str, Any]) -> str:
    """The fingerprint of a member's :meth:`MemberRecord.values`."""
    fields = tuple(values[k] for k in MEMBER_FIELDS[:-1])
    employee_id = values.get("employee_id")
    return _member_fingerprint(fields if employee_id is None else (*fields, employee_id))


def _member_fingerprint(fields: tuple) -> str:
    """Hash of the normalised member fields in MEMBER_FIELDS order (strings, ints and lists of them).

    ``employee_id`` takes part only when there is one: with EMPLOYEE_ID_FIELD off every
    fingerprint stays what it was before the column existed (no rewrite of the mirror on upgrade).

    The canonical text is orjson's compact JSON (tuples and lists encode alike): it runs for every
    member of every sync, and is ten times cheaper than ``repr`` (3.8 µs) or the json module. An
    int beyond 64 bits (garbage, never a real WeCom id) falls back to ``repr``, on every path alike.
    """
    try:
        text = orjson.dumps(fields)
    except orjson.JSONEncodeError:
        text = repr(fields).encode("utf-8")
    return hashlib.blake2b(text, digest_size=16).hexdigest()


_INT_ONLY = frozenset({int})
_STR_ONLY = frozenset({str})


def row_fingerprint(row: Mapping[str, Any], fallback_status: int = ACTIVE, employee_field: str = "") -> str:
    """``MemberRecord.from_api(row, fallback_status, employee_field).fingerprint()``, without
    building the record.

    A re-sync reads every member of the company and almost all of them are unchanged, so this runs
    100,000 times an hour on a large tenant: it normalises a well-formed row (the shape WeCom sends:
    ints in the id lists, strings in the text fields) straight into the fingerprint text, and takes
    the full path for anything else. The two always agree (a property test holds them to it).
    """
    userid = row.get("userid")
    departments = row.get("department")
    flags = row.get("is_leader_in_dept")
    leaders = row.get("direct_leader")
    name = row.get("name")
    position = row.get("position")
    main = row.get("main_department")
    status = row.get("status")
    if (
        type(userid) is not str  # noqa: E721 - exact types: bool is an int, a str subclass is not a str
        or not userid.strip()
        or type(departments) is not list  # noqa: E721
        or type(flags) is not list  # noqa: E721
        or not (leaders is None or type(leaders) is list)  # noqa: E721
        or not (name is None or type(name) is str)  # noqa: E721
        or not (position is None or type(position) is str)  # noqa: E721
        or not (main is None or type(main) is int)  # noqa: E721
        or not (status is None or type(status) is int)  # noqa: E721
        or not _INT_ONLY.issuperset(map(type, departments))  # map(type): several times cheaper than any(...)
        or not _INT_ONLY.issuperset(map(type, flags))
        or (leaders and not (_STR_ONLY.issuperset(map(type, leaders)) and all(leaders)))
    ):
        return MemberRecord.from_api(row, fallback_status, employee_field).fingerprint()
    if main is None:
        main = departments[0] if departments else None
    if status not in STATUS_NAMES:
        status = fallback_status
    fields = (userid, name or "", departments, main, position or "", flags[: len(departments)], leaders or [], status)
    employee_id = employee_value(row, employee_field) if employee_field else None
    return _member_fingerprint(fields if employee_id is None else (*fields, employee_id))


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        return ()
    out = []
    for v in value:
        try:
            out.append(int(v))
        except (TypeError, ValueError, OverflowError):  # inf: Python's json reads Infinity
            continue
    return tuple(out)


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        return ()
    return tuple(str(v) for v in value if isinstance(v, str | int) and str(v))


def _status(value: Any, fallback: int) -> int:
    try:
        status = int(value)
    except (TypeError, ValueError, OverflowError):  # inf: Python's json reads Infinity
        return fallback  # some tenants' user/list rows omit it: keep what the mirror knew
    return status if status in STATUS_NAMES else fallback


@dataclass(frozen=True)
class MemberRecord:
    """A member as the mirror keeps them: the fields governance needs, nothing more (PIPL).

    Mobile, email, avatar and the like are deliberately not kept: apps created after 2022-06-20 do
    not get them anyway (§2.1), and a governance tool does not need them.
    """

    userid: str
    name: str
    departments: tuple[int, ...]
    main_department: int | None
    position: str
    is_leader_in_dept: tuple[int, ...]
    direct_leaders: tuple[str, ...]
    status: int
    employee_id: str | None = None  # 工号, from the EMPLOYEE_ID_FIELD (None when it is off)

    @property
    def folded(self) -> str:
        return fold(self.userid)

    @classmethod
    def from_api(cls, row: Mapping[str, Any], fallback_status: int = ACTIVE, employee_field: str = "") -> MemberRecord:
        """From a ``user/get`` answer or a ``user/list`` row. Raises ValueError without a userid.

        ``fallback_status``: the status to assume when the row has none or an unknown one (the
        mirror's current status for a known member, so a missing field is not a change).
        ``employee_field``: EMPLOYEE_ID_FIELD, where the employee number is (see :func:`employee_value`).
        """
        userid = row.get("userid")
        if not isinstance(userid, str) or not userid.strip():
            raise ValueError("member record without a userid")
        departments = _ints(row.get("department"))
        main = row.get("main_department")
        try:
            main_department = int(main) if main is not None else (departments[0] if departments else None)
        except (TypeError, ValueError, OverflowError):  # inf: Python's json reads Infinity
            main_department = departments[0] if departments else None
        leader_flags = _ints(row.get("is_leader_in_dept"))
        return cls(
            userid=userid,
            name=str(row.get("name") or ""),
            departments=departments,
            main_department=main_department,
            position=str(row.get("position") or ""),
            is_leader_in_dept=leader_flags[: len(departments)],
            direct_leaders=_strs(row.get("direct_leader")),
            status=_status(row.get("status"), fallback_status),
            employee_id=employee_value(row, employee_field) if employee_field else None,
        )

    def values(self) -> dict[str, Any]:
        """The column values (lists for JSON columns). Built by hand: this runs for every member of
        every sync, and ``dataclasses.asdict`` deep-copies (it was most of a no-change re-sync)."""
        return {
            "userid": self.userid,
            "name": self.name,
            "departments": list(self.departments),
            "main_department": self.main_department,
            "position": self.position,
            "is_leader_in_dept": list(self.is_leader_in_dept),
            "direct_leaders": list(self.direct_leaders),
            "status": self.status,
            "employee_id": self.employee_id,
        }

    def fingerprint(self) -> str:
        """``fingerprint_values(self.values())``, without building the dict (a first sync does this
        100,000 times)."""
        fields = (
            self.userid,
            self.name,
            self.departments,
            self.main_department,
            self.position,
            self.is_leader_in_dept,
            self.direct_leaders,
            self.status,
        )
        return _member_fingerprint(fields if self.employee_id is None else (*fields, self.employee_id))

    def leader_of(self) -> tuple[int, ...]:
        """Departments this member leads (is_leader_in_dept = 1)."""
        return tuple(d for d, flag in zip(self.departments, self.is_leader_in_dept, strict=False) if flag)


@dataclass(frozen=True)
class DepartmentRecord:
    """A department: tree position, names, leaders (userids as WeCom spells them), ``order``
    (larger sorts first, 0 to 2^32)."""

    id: int
    name: str
    name_en: str
    parent_id: int
    order: int
    leaders: tuple[str, ...]

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> DepartmentRecord:
        try:
            dep_id = int(row["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError("department record without an id") from exc
        try:
            parent = int(row.get("parentid") or 0)
        except (TypeError, ValueError, OverflowError):  # inf: Python's json reads Infinity
            parent = 0
        try:
            order = int(row.get("order") or 0)
        except (TypeError, ValueError, OverflowError):  # inf: Python's json reads Infinity
            order = 0
        return cls(
            id=dep_id,
            name=str(row.get("name") or ""),
            name_en=str(row.get("name_en") or ""),
            parent_id=parent,
            order=order,
            leaders=_strs(row.get("department_leader")),
        )

    def values(self) -> dict[str, Any]:
        v = asdict(self)
        v["leaders"] = list(v["leaders"])
        return v

    def fingerprint(self) -> str:
        return _fingerprint(self.values())


@dataclass(frozen=True)
class TagRecord:
    """A tag, its member userids (folded, sorted; only those in the app's scope, §2.8) and
    departments (``partylist``: tag members added by department are not expanded)."""

    id: int
    name: str
    users: tuple[str, ...]
    party_ids: tuple[int, ...]

    @classmethod
    def from_api(cls, tagid: int, name: str, detail: Mapping[str, Any]) -> TagRecord:
        users = sorted(
            {fold(u["userid"]) for u in detail.get("userlist") or () if isinstance(u, Mapping) and u.get("userid")}
        )
        return cls(
            id=int(tagid),
            name=str(detail.get("tagname") or name or ""),
            users=tuple(users),
            party_ids=tuple(sorted(set(_ints(detail.get("partylist"))))),
        )

    def fingerprint(self) -> str:
        return _fingerprint({"name": self.name, "users": list(self.users), "parties": list(self.party_ids)})


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Field -> [before, after] for the fields that differ (lists compared as lists)."""

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {k: [norm(before.get(k)), norm(after[k])] for k in after if norm(before.get(k)) != norm(after[k])}


def brake_threshold(active_members: int) -> int:
    """The most departures one sync may apply without a person confirming: max(10, 5 %)."""
    return max(BRAKE_MIN_MEMBERS, math.ceil(active_members * BRAKE_FRACTION))


def status_change_kind(before: int | None, after: int) -> str | None:
    """The governance record a status change produces: ``disabled``, ``departed``, ``reactivated`` or None."""
    if before == after:
        return None
    if after == LEFT:
        return "departed"
    if after == DISABLED:
        return "disabled"
    if before in GONE and after in (ACTIVE, NOT_ACTIVATED):
        return "reactivated"
    return None


def moved(before_departments: Iterable[int], after_departments: Iterable[int]) -> bool:
    """A department move: the set of departments changed (order within the list does not count)."""
    return set(before_departments) != set(after_departments)


def match_renames(missing: Mapping[int, MemberRecord], newcomers: Mapping[str, MemberRecord]) -> dict[int, str]:
    """Pair members who vanished (60111-confirmed) with ids that appeared in the same sync.

    WeCom can rename a userid without a callback reaching us: the old id then answers 60111 and a
    new id with the same person appears. A pair is made only when exactly one newcomer has the
    vanished member's name and department set, and that newcomer matches exactly one vanished
    member; anything ambiguous stays a departure plus a hire (and is visible in the history).

    Args:
        missing: internal person id -> the record the mirror held.
        newcomers: folded userid -> the record WeCom now answers.

    Returns: internal person id -> the newcomer's folded userid.
    """

    def key(r: MemberRecord) -> tuple[str, frozenset[int]]:
        return (r.name, frozenset(r.departments))

    by_key: dict[tuple[str, frozenset[int]], list[str]] = {}
    for folded, rec in newcomers.items():
        if rec.name:
            by_key.setdefault(key(rec), []).append(folded)
    missing_by_key: dict[tuple[str, frozenset[int]], list[int]] = {}
    for pid, rec in missing.items():
        if rec.name:
            missing_by_key.setdefault(key(rec), []).append(pid)
    pairs = {}
    for k, pids in missing_by_key.items():
        candidates = by_key.get(k, [])
        if len(pids) == 1 and len(candidates) == 1:
            pairs[pids[0]] = candidates[0]
    return pairs
