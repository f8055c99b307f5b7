"""The directory's pure rules: records, fingerprints, the brake threshold, rename matching."""

from __future__ import annotations

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
