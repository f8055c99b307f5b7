"""The first sync's bulk insert (services/directory_bulk.py) stores what the ORM path stores.

It bypasses SQLAlchemy's type processing for speed, so these tests read its rows back through the
ORM and compare them with rows written the ordinary way (``upsert_member``), on SQLite and
PostgreSQL: values, fingerprint, departed-at, times, history, and the skip of a member a callback
inserted meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import MemberRecord
from wecom_plugin.extensions import db
from wecom_plugin.models.directory import DirectoryChange, Person
from wecom_plugin.services import directory_mirror as mirror
from wecom_plugin.services.directory_mirror import Origin

ROWS = [
    {"userid": "ZhangSan", "name": "张三", "department": [2, 7], "main_department": 7, "position": "经理",
     "is_leader_in_dept": [0, 1], "direct_leader": ["LiSi"], "status": 1},
    {"userid": "wangwu", "name": "王五", "department": [3], "position": "", "status": 5},
    {"userid": "o'brien", "name": "O'Brien \\ \"quoted\"\ttab", "department": [], "status": 4},
    {"userid": "zhaoliu", "name": "赵六", "department": [9], "status": 2, "direct_leader": ["a", "b"]},
]  # fmt: skip


def _records() -> list[MemberRecord]:
    return [MemberRecord.from_api(r) for r in ROWS]


def _people(app) -> dict[str, object]:
    with app.app_context():
        people = {p.userid: p for p in db.session.scalars(sa.select(Person)).all()}
        db.session.expunge_all()
        return people


def _hired(app) -> list:
    with app.app_context():
        rows = db.session.scalars(sa.select(DirectoryChange).where(DirectoryChange.kind == "hired"))
        out = rows.all()
        db.session.expunge_all()
        return out


def test_bulk_rows_read_back_like_rows_the_orm_wrote(tenant_app):
    records = _records()
    before = datetime.now(UTC) - timedelta(seconds=1)
    with tenant_app.app_context(), db.engine.begin() as conn:
        # the reference: the first record written the ordinary way, under another id
        reference = MemberRecord.from_api({**ROWS[0], "userid": "reference"})
        mirror.upsert_member(conn, reference, Origin("callback"))
        inserted = mirror.bulk_insert_members(conn, records, Origin("sync", sync_id=7))
    assert inserted == len(records)
    people = _people(tenant_app)
    ref = people["reference"]
    for rec in records:
        person = people[rec.userid]
        assert {k: getattr(person, k) for k in rules.MEMBER_FIELDS} == rec.values()
        assert person.userid_folded == rec.folded
        assert person.fingerprint == rec.fingerprint()
        assert person.created_at.tzinfo is not None and person.created_at >= before
        assert person.updated_at == person.created_at
        assert (person.departed_at is not None) == (rec.status == rules.LEFT)
    # same shapes as the ORM's row: JSON lists read back as lists, times as aware datetimes
    zhang = people["ZhangSan"]
    assert type(zhang.departments) is type(ref.departments) is list
    assert zhang.departments == ref.departments and zhang.direct_leaders == ref.direct_leaders
    assert type(zhang.created_at) is type(ref.created_at)
    hired = {c.person_id: c for c in _hired(tenant_app) if c.source == "sync"}
    assert set(hired) == {people[r.userid].id for r in records}
    for rec in records:
        change = hired[people[rec.userid].id]
        assert change.detail == {"userid": rec.userid, "status": rec.status}
        assert change.sync_id == 7 and change.inbox_id is None
        assert change.occurred_at.tzinfo is not None


def test_a_member_inserted_meanwhile_is_skipped_and_the_staging_table_is_reused(tenant_app):
    records = _records()
    with tenant_app.app_context():
        with db.engine.begin() as conn:  # a callback got there first, spelled differently
            mirror.upsert_member(conn, MemberRecord.from_api({**ROWS[0], "userid": "zhangsan"}), Origin("callback"))
        with db.engine.begin() as conn:
            assert mirror.bulk_insert_members(conn, records[:2], Origin("sync", sync_id=1)) == 1
            assert mirror.bulk_insert_members(conn, records, Origin("sync", sync_id=1)) == 2  # same transaction
        with db.engine.begin() as conn:
            assert mirror.bulk_insert_members(conn, records, Origin("sync", sync_id=2)) == 0
    people = _people(tenant_app)
    assert set(people) == {"zhangsan", "wangwu", "o'brien", "zhaoliu"}
    assert len([c for c in _hired(tenant_app) if c.source == "sync"]) == 3
