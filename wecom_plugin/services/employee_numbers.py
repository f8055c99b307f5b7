"""Employee numbers (工号): the imported mapping table and resolving a number to a person.

The HR system knows a person by their 工号, not their WeCom userid. Two sources map one to the
other, looked up in this order by :func:`resolve`:

1. the imported table (``employee_number``), loaded from a CSV file with
   ``wecom-plugin offboard employees import FILE.csv`` (:func:`parse_csv`, :func:`import_rows`);
2. the directory field named by EMPLOYEE_ID_FIELD (``alias`` or a custom field), which the
   directory sync copies onto ``person.employee_id``.

An employee number is compared exactly after trimming surrounding whitespace (``A001`` and
``a001`` differ; ``" A001 "`` is ``A001``). An import is all or nothing: every row is checked
first (blank or duplicate numbers, userids the directory mirror does not know) and nothing is
stored while any row is wrong.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from wecom_plugin.domain.directory import EMPLOYEE_ID_MAX, LEFT, fold
from wecom_plugin.models.base import utcnow
from wecom_plugin.models.directory import Person
from wecom_plugin.models.employee_numbers import EmployeeNumber
from wecom_plugin.services import audit

TABLE = EmployeeNumber.__table__
PERSON = Person.__table__
COLUMNS = ("employee_id", "userid")
MAX_REPORTED = 50  # problems listed one by one; the rest are counted


class ImportRefused(ValueError):
    """A file that cannot be imported: ``problems`` are ``(line, message)``, line 0 for the file."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        super().__init__(summary(problems))


def summary(problems: list[tuple[int, str]]) -> str:
    lines = sorted({line for line, _ in problems if line})
    shown = ", ".join(str(n) for n in lines[:20]) + (" …" if len(lines) > 20 else "")
    where = f"第 {shown} 行 / line(s) {shown}" if lines else problems[0][1]
    n = len(problems)
    return f"导入失败，未写入任何数据：{n} 处错误（{where}）/ import refused, nothing stored: {n} problem(s)"


@dataclass(frozen=True)
class Row:
    line: int
    employee_id: str
    userid: str


@dataclass
class ImportResult:
    """What an import did (or, dry run, would do)."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    dry_run: bool = False
    replace: bool = False
    problems: list[tuple[int, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "removed": self.removed, "dry_run": self.dry_run, "replace": self.replace,
        }  # fmt: skip


def normalise(value: Any) -> str:
    """An employee number as stored and compared: the text, trimmed (case kept)."""
    return str(value).strip()


@dataclass
class Parsed:
    """A CSV file read: its rows and the problems found in the file itself (``(line, message)``)."""

    rows: list[Row]
    problems: list[tuple[int, str]]


def parse_csv(data: bytes) -> Parsed:
    """The rows of a CSV file with the header ``employee_id,userid`` (UTF-8, with or without a BOM;
    other columns are ignored; blank lines skipped), with every row's problem (blank or duplicate
    numbers, blank userids). Raises :class:`ImportRefused` for a file that cannot be read at all
    (not UTF-8, malformed CSV, empty, no such header)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRefused([(0, f"文件不是 UTF-8 编码 / the file is not UTF-8 (byte {exc.start})")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[Row] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    try:
        for record in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in record]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    raise ImportRefused([
                        (line, f"表头缺少 {', '.join(missing)}（应为 employee_id,userid）/ the header needs "
                               f"{', '.join(missing)} (expected employee_id,userid)")
                    ])  # fmt: skip
                continue
            cells = dict(zip(header, record, strict=False))
            employee_id = normalise(cells.get("employee_id") or "")
            userid = (cells.get("userid") or "").strip()
            if not employee_id:
                problems.append((line, "工号为空 / empty employee_id"))
            elif len(employee_id) > EMPLOYEE_ID_MAX:
                problems.append((line, f"工号超过 {EMPLOYEE_ID_MAX} 个字符 / employee_id over {EMPLOYEE_ID_MAX} chars"))
            elif employee_id in first_line:
                problems.append((
                    line, f"工号 {employee_id} 重复（首次出现在第 {first_line[employee_id]} 行）/ duplicate "
                          f"employee_id {employee_id!r} (first on line {first_line[employee_id]})",
                ))  # fmt: skip
            else:
                first_line[employee_id] = line
            if not userid:
                problems.append((line, "userid 为空 / empty userid"))
            rows.append(Row(line, employee_id, userid))
    except csv.Error as exc:
        raise ImportRefused([(reader.line_num, f"CSV 格式错误 / malformed CSV: {exc}")]) from None
    if header is None:
        raise ImportRefused([(0, "文件为空（需要表头 employee_id,userid）/ empty file (needs employee_id,userid)")])
    return Parsed(rows, problems)


def import_rows(
    session: Session, parsed: Parsed, *, actor: str, source: str, replace: bool = False, dry_run: bool = False
) -> ImportResult:
    """Check every row (the file's own problems, and userids the directory mirror does not know),
    then store them all (or, ``dry_run``, nothing). Raises :class:`ImportRefused` with every problem.

    Without ``replace`` numbers in the file are added or updated and the others kept; with it the
    table becomes exactly the file. The caller commits (and rolls back on :class:`ImportRefused`).
    """
    rows = parsed.rows
    people = _people(session, {fold(r.userid) for r in rows if r.userid})
    problems = parsed.problems + [
        (r.line, f"userid {r.userid} 不在通讯录镜像中 / userid {r.userid!r} is not in the directory mirror")
        for r in rows
        if r.userid and fold(r.userid) not in people
    ]
    if problems:
        raise ImportRefused(sorted(problems, key=lambda p: p[0]))
    existing = {row.employee_id: row for row in session.execute(sa.select(TABLE))}
    result = ImportResult(rows=len(rows), dry_run=dry_run, replace=replace)
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for r in rows:
        person_id, userid = people[fold(r.userid)]
        before = existing.get(r.employee_id)
        values = {"employee_id": r.employee_id, "userid": userid, "person_id": person_id,
                  "imported_at": now, "source": source[:255]}  # fmt: skip
        if before is None:
            result.added += 1
            inserts.append(values)
        elif before.person_id == person_id and before.userid == userid:
            result.unchanged += 1
        else:
            result.updated += 1
            updates.append(values)
    gone = sorted(set(existing) - {r.employee_id for r in rows}) if replace else []
    result.removed = len(gone)
    if dry_run:
        return result
    for start in range(0, len(gone), 500):
        session.execute(sa.delete(TABLE).where(TABLE.c.employee_id.in_(gone[start : start + 500])))
    if inserts:
        session.execute(sa.insert(TABLE), inserts)
    for values in updates:
        session.execute(sa.update(TABLE).where(TABLE.c.employee_id == values["employee_id"]).values(**values))
    audit.record(
        actor, "offboarding.employee_numbers_imported", target="employee_number", session=session,
        detail={"source": source[:255], **result.as_dict()},
    )  # fmt: skip
    return result


def _people(session: Session, folded: set[str]) -> dict[str, tuple[int, str]]:
    """Folded userid -> (person id, userid as WeCom spells it), for people of the mirror."""
    out: dict[str, tuple[int, str]] = {}
    wanted = sorted(folded)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        query = sa.select(PERSON.c.userid_folded, PERSON.c.id, PERSON.c.userid).where(PERSON.c.userid_folded.in_(chunk))
        out.update({row.userid_folded: (row.id, row.userid) for row in session.execute(query)})
    return out


# --- resolving ------------------------------------------------------------------------------------------
class Unresolved(LookupError):
    """No person, or more than one, has this employee number (``status`` 404 or 409)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Resolved:
    """A person found by employee number: ``via`` is ``mapping`` or ``directory_field``."""

    userid: str
    via: str
    employee_id: str


def resolve(session: Session, employee_id: str, directory_field: str) -> Resolved:
    """The person with ``employee_id``: the imported table first, then the directory field
    (``directory_field``, EMPLOYEE_ID_FIELD; empty: not consulted). Raises :class:`Unresolved`."""
    number = normalise(employee_id)
    mapped = session.execute(sa.select(TABLE).where(TABLE.c.employee_id == number)).first()
    if mapped is not None:
        person = None
        if mapped.person_id is not None:
            person = session.execute(sa.select(PERSON.c.userid).where(PERSON.c.id == mapped.person_id)).first()
        return Resolved(person.userid if person is not None else mapped.userid, "mapping", number)
    if directory_field:
        found = session.execute(
            sa.select(PERSON.c.userid, PERSON.c.status).where(PERSON.c.employee_id == number).order_by(PERSON.c.id)
        ).all()
        if len(found) > 1:  # a number reused after a departure names the current holder
            found = [row for row in found if row.status != LEFT] or found
        if len(found) == 1:
            return Resolved(found[0].userid, "directory_field", number)
        if len(found) > 1:
            raise Unresolved(
                f"employee number {number!r} is on {len(found)} members in directory field {directory_field!r}: "
                f"{', '.join(r.userid for r in found[:5])}; send userid",
                409, "ambiguous_employee_id",
            )  # fmt: skip
    where = "the imported mapping table" + (
        f" nor directory field {directory_field!r}"
        if directory_field
        else " (no directory field is configured: EMPLOYEE_ID_FIELD)"
    )
    raise Unresolved(f"no person with employee number {number!r} in {where}", 404, "unknown_person")


def show(session: Session, employee_id: str, directory_field: str) -> dict[str, Any]:
    """What the table and the directory field say about ``employee_id`` (for the CLI)."""
    number = normalise(employee_id)
    mapped = session.execute(sa.select(TABLE).where(TABLE.c.employee_id == number)).first()
    out: dict[str, Any] = {"employee_id": number, "mapping": None, "directory_field": directory_field or None}
    if mapped is not None:
        out["mapping"] = {
            "userid": mapped.userid, "person_id": mapped.person_id, "source": mapped.source,
            "imported_at": mapped.imported_at.isoformat() if mapped.imported_at else None,
        }  # fmt: skip
    out["directory_members"] = (
        [
            {"userid": r.userid, "status": r.status}
            for r in session.execute(
                sa.select(PERSON.c.userid, PERSON.c.status).where(PERSON.c.employee_id == number).order_by(PERSON.c.id)
            )
        ]
        if directory_field
        else []
    )
    try:
        out["resolves_to"] = asdict(resolve(session, number, directory_field))
    except Unresolved as exc:
        out["resolves_to"] = None
        out["problem"] = str(exc)
    return out
