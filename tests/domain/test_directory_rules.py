"""The directory's pure rules: records, fingerprints, the brake threshold, rename matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wecom_plugin.domain import directory as rules
from wecom_plugin.domain.directory import MemberRecord


def _rec(userid="zhangsan", name="张三", departments=(2,), status=1, **kw) -> MemberRecord:
    return MemberRecord.from_api(
        {"userid": userid, "name": name, "department": list(departments), "status": status, **kw}
    )


def test_a_row_without_a_status_keeps_the_status_the_mirror_knew():
    row = {"userid": "lisi", "name": "李四", "department": [3]}
    assert MemberRecord.from_api(row, fallback_status=rules.DISABLED).status == rules.DISABLED
    assert MemberRecord.from_api({**row, "status": "bogus"}, fallback_status=4).status == 4
    assert MemberRecord.from_api({**row, "status": 5}, fallback_status=1).status == rules.LEFT


def test_the_fingerprint_ignores_nothing_governance_reads_and_nothing_else_changes_it():
    base = _rec()
    assert base.fingerprint() == _rec().fingerprint()
    for change in ({"name": "张三丰"}, {"departments": (2, 3)}, {"status": 2}, {"position": "经理"}):
        assert _rec(**change).fingerprint() != base.fingerprint()
    assert _rec(mobile="13800000000").fingerprint() == base.fingerprint()  # not kept, not compared
    assert rules.fingerprint_values(base.values()) == base.fingerprint()


def test_the_brake_allows_ten_or_five_percent():
    assert rules.brake_threshold(0) == 10
    assert rules.brake_threshold(100) == 10
    assert rules.brake_threshold(1000) == 50
    assert rules.brake_threshold(100_001) == 5001


def test_status_changes_that_governance_acts_on():
    assert rules.status_change_kind(1, 5) == "departed"
    assert rules.status_change_kind(1, 2) == "disabled"
    assert rules.status_change_kind(2, 1) == "reactivated"
    assert rules.status_change_kind(4, 1) is None
    assert rules.status_change_kind(1, 1) is None


def test_only_unambiguous_renames_are_matched():
    missing = {1: _rec("old1", "王芳", (5,)), 2: _rec("old2", "李强", (6,)), 3: _rec("old3", "张伟", (7,)),
               4: _rec("old4", "张伟", (7,))}  # fmt: skip
    newcomers = {"new1": _rec("new1", "王芳", (5,)), "new2": _rec("new2", "李强", (9,)),
                 "new3": _rec("new3", "张伟", (7,))}  # fmt: skip
    # 王芳: one on each side -> a rename; 李强 moved as well -> not matched; two 张伟 -> ambiguous.
    assert rules.match_renames(missing, newcomers) == {1: "new1"}


# --- the re-sync's fast fingerprint ---------------------------------------------------------------
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.text(max_size=6), st.floats(allow_nan=False))
_field_values = {
    "userid": st.one_of(st.text(min_size=0, max_size=8), _scalar),
    "name": st.one_of(st.text(max_size=6), _scalar),
    "department": st.one_of(st.lists(st.integers(0, 2**70), max_size=4), st.lists(_scalar, max_size=3), _scalar),
    "main_department": st.one_of(st.integers(0, 2**33), _scalar, st.text(alphabet="0123456789", max_size=3)),
    "position": st.one_of(st.text(max_size=6), _scalar),
    "is_leader_in_dept": st.one_of(st.lists(st.integers(0, 1), max_size=5), st.lists(_scalar, max_size=3), _scalar),
    "direct_leader": st.one_of(st.lists(st.text(max_size=4), max_size=3), st.lists(_scalar, max_size=3), _scalar),
    "status": st.one_of(st.sampled_from([1, 2, 4, 5, 3, 0]), _scalar, st.just("1")),
}
_rows = st.fixed_dictionaries({}, optional=_field_values)


@settings(max_examples=3000, deadline=None)
@given(row=_rows, fallback=st.sampled_from([1, 2, 4, 5]))
def test_the_fast_fingerprint_always_agrees_with_the_record(row, fallback):
    try:
        expected = MemberRecord.from_api(row, fallback).fingerprint()
    except ValueError:
        with pytest.raises(ValueError):
            rules.row_fingerprint(row, fallback)
        return
    assert rules.row_fingerprint(row, fallback) == expected


def test_the_fast_fingerprint_of_a_usual_row():
    row = {
        "userid": "ZhangSan", "name": "张三", "department": [2, 7], "main_department": 7, "position": "经理",
        "is_leader_in_dept": [0, 1, 1], "direct_leader": ["lisi"], "status": 1, "mobile": "13800000000",
    }  # fmt: skip
    assert rules.row_fingerprint(row) == MemberRecord.from_api(row).fingerprint()
    assert rules.row_fingerprint({**row, "status": 5}) != rules.row_fingerprint(row)
    assert rules.row_fingerprint({**row, "main_department": None}) == rules.row_fingerprint(
        {**row, "main_department": 2}
    )
