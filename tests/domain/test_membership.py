"""Membership rules of a governed group: the rule document, the directory view, real names, what a
check makes of a chat, the removal brake and re-homing the owner."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from wecom_plugin.domain.directory import MemberRecord
from wecom_plugin.domain.membership import (
    DEFAULT_PLACEHOLDER_PATTERNS,
    MAX_ENTRIES,
    REASONS,
    DepartmentRef,
    Evaluation,
    Exemption,
    Finding,
    GroupFacts,
    InMemoryDirectory,
    MembershipRule,
    Person,
    Problem,
    RealNamePolicy,
    RuleError,
    Selector,
    brake_limit,
    check_rule,
    desired_members,
    evaluate,
    pick_owner,
    selector_members,
)

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
POLICY = RealNamePolicy()

# 1 公司 ─┬─ 10 研发部 ─┬─ 11 后端组 ── 12 支付小组
#         │             └─ 13 前端组
#         ├─ 20 销售部
#         └─ 30 行政部
TREE = {1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 30: 1}
PEOPLE = (
    Person("ZhangSan", "张三", 1, (10,), "经理"),
    Person("lisi", "李四", 1, (11,)),
    Person("WangWu", "王五", 1, (12,), tags=frozenset({3})),
    Person("zhaoliu", "赵六", 1, (13,)),
    Person("qianqi", "钱七", 1, (20,), " 经理 "),
    Person("sunba", "孙八", 1, (20,), tags=frozenset({3})),
    Person("zhoujiu", "周九", 5, (11,)),  # departed
    Person("wushi", "吴十", 2, (11,)),  # disabled
    Person("zhengyi", "郑一", 4, (11,)),  # not activated
    Person("ceshi", "测试1", 1, (11,)),  # a placeholder name
    Person("tom", "Tom", 1, (13,)),  # userid equals the name: a real person
    Person("OuYang", "欧阳娜娜", 1, (1,)),
    Person("LiMing", "李明", 1, (30,)),
)


def _dir(*extra: Person) -> InMemoryDirectory:
    return InMemoryDirectory((*PEOPLE, *extra), TREE, tags=(3, 4))


DIRECTORY = _dir()


def _rule(**doc) -> MembershipRule:
    return MembershipRule.from_doc(doc)


def _facts(rule: MembershipRule | None = None, owner: str = "LiMing", **kw) -> GroupFacts:
    return GroupFacts(rule=rule or _rule(required={"departments": [10]}), owner=owner, **kw)


def _eval(facts: GroupFacts, current, directory=DIRECTORY, now=NOW, policy=POLICY) -> Evaluation:
    return evaluate(facts, current, directory, policy, now)


def _summary(findings) -> set[tuple[str, str, str]]:
    return {(f.userid, f.action, f.reason) for f in findings}


# --- the rule document ------------------------------------------------------------------------------
def test_a_bare_department_id_includes_its_subdepartments():
    rule = _rule(required={"departments": [12, {"id": 15, "children": False}, {"id": 16}]})
    assert rule.required.departments == (DepartmentRef(12), DepartmentRef(15, False), DepartmentRef(16))


def test_missing_and_null_keys_are_empty():
    assert MembershipRule.from_doc(None) == MembershipRule()
    assert MembershipRule.from_doc({}) == MembershipRule()
    assert _rule(required=None, permitted={"tags": None}) == MembershipRule()
    assert MembershipRule().is_empty and not _rule(permitted={"users": ["tom"]}).is_empty


def test_from_doc_lists_every_problem_with_its_path():
    doc = {
        "required": {
            "departments": [12, 0, -3, True, "15", {"id": 12}, {"children": False}, {"id": 16, "children": "yes"},
                            {"id": 17, "sub": True}, 2**32],
            "tags": [3, 3, 1.5],
            "positions": ["经理", " 经理 ", "", 7, "x" * 129],
            "users": ["zhangsan", "ZhangSan", "  ", "li si", "a" * 65, None],
            "groups": [1],
        },
        "permitted": ["tom"],
        "exclude": {"positions": ["实习生"], "users": "tom"},
        "owner": "tom",
    }  # fmt: skip
    with pytest.raises(RuleError) as caught:
        MembershipRule.from_doc(doc)
    problems = caught.value.problems
    assert all(p.severity == "error" and p.zh and p.en for p in problems)
    assert {p.path for p in problems} == {
        "required.departments[1]",
        "required.departments[2]",
        "required.departments[3]",
        "required.departments[4]",
        "required.departments[5]",  # 12 again
        "required.departments[6].id",
        "required.departments[7].children",
        "required.departments[8].sub",
        "required.departments[9]",
        "required.tags[1]",
        "required.tags[2]",
        "required.positions[1]",  # the same position once stripped
        "required.positions[2]",
        "required.positions[3]",
        "required.positions[4]",
        "required.users[1]",  # the same person: userids compare case-insensitively
        "required.users[2]",
        "required.users[3]",
        "required.users[4]",
        "required.users[5]",
        "required.groups",
        "permitted",
        "exclude.positions",
        "exclude.users",
        "owner",
    }
    duplicate = next(p for p in problems if p.path == "required.users[1]")
    assert "required.users[0]" in duplicate.en and "required.users[0]" in duplicate.zh
    assert "required.departments[2]" in str(caught.value)


def test_a_rule_document_must_be_an_object():
    with pytest.raises(RuleError) as caught:
        MembershipRule.from_doc(["required"])  # type: ignore[arg-type]
    assert caught.value.problems[0].path == ""
    assert isinstance(caught.value, ValueError)


def test_exclude_takes_no_positions_but_an_empty_list_is_harmless():
    assert _rule(exclude={"positions": [], "users": ["tom"]}).exclude.users == ("tom",)
    with pytest.raises(RuleError) as caught:
        _rule(exclude={"positions": ["实习生"]})
    assert [p.path for p in caught.value.problems] == ["exclude.positions"]
    with pytest.raises(RuleError):
        MembershipRule(exclude=Selector(positions=("实习生",)))


def test_more_than_a_thousand_entries_is_one_problem():
    with pytest.raises(RuleError) as caught:
        _rule(permitted={"tags": list(range(1, MAX_ENTRIES + 2)), "users": ["u"] * (MAX_ENTRIES + 1)})
    assert [p.path for p in caught.value.problems] == ["permitted.tags", "permitted.users"]
    assert len(_rule(permitted={"tags": list(range(1, MAX_ENTRIES + 1))}).permitted.tags) == MAX_ENTRIES


def test_to_doc_is_canonical_and_round_trips():
    rule = _rule(
        required={"departments": [{"id": 15, "children": False}, 12], "positions": [" 经理"], "users": ["tom", "Amy"]},
        permitted={"tags": [9, 3]},
        exclude={"users": ["zhoujiu"], "departments": [13]},
    )
    doc = rule.to_doc()
    assert doc == {
        "required": {
            "departments": [{"id": 12, "children": True}, {"id": 15, "children": False}],
            "tags": [],
            "positions": ["经理"],
            "users": ["Amy", "tom"],
        },
        "permitted": {"departments": [], "tags": [3, 9], "positions": [], "users": []},
        "exclude": {"departments": [{"id": 13, "children": True}], "tags": [], "users": ["zhoujiu"]},
    }
    assert MembershipRule.from_doc(doc) == rule
    assert MembershipRule.from_doc(doc).to_doc() == doc
    assert MembershipRule().to_doc()["exclude"] == {"departments": [], "tags": [], "users": []}


def test_a_selector_built_in_code_is_canonical_too():
    built = Selector(departments=(12, DepartmentRef(12, False), DepartmentRef(3, False)), tags=(3, 1, 3),
                     positions=(" 经理 ", "经理"), users=("tom", "Tom", "amy"))  # fmt: skip
    assert built == Selector(departments=(DepartmentRef(3, False), DepartmentRef(12)), tags=(1, 3),
                             positions=("经理",), users=("amy", "Tom"))  # fmt: skip
    rule = MembershipRule(required=built)
    assert MembershipRule.from_doc(rule.to_doc()) == rule


# --- the rule against today's directory ----------------------------------------------------------------
def test_check_rule_errors_on_unknown_departments_and_tags():
    rule = _rule(required={"departments": [10, 99], "tags": [3, 77]}, exclude={"departments": [98]})
    problems = check_rule(rule, DIRECTORY)
    assert [(p.path, p.severity) for p in problems] == [
        ("required.departments[1]", "error"),
        ("required.tags[1]", "error"),
        ("exclude.departments[0]", "error"),
    ]
    assert "99" in problems[0].zh and "99" in problems[0].en


def test_check_rule_warns_about_users_and_positions_it_cannot_find():
    rule = _rule(
        required={"users": ["newhire", "ZHOUJIU", "wushi", "tom"], "positions": ["经理", "CEO"]},
        exclude={"users": ["Tom", "nobody"]},
    )
    problems = check_rule(rule, DIRECTORY)
    assert all(p.severity == "warning" for p in problems)
    assert {p.path: p.en for p in problems}.keys() == {
        "required.positions[0]",  # "CEO" sorts first; nobody holds it
        "required.users[0]",  # newhire: not in the directory (yet)
        "required.users[2]",  # wushi: disabled
        "required.users[3]",  # ZHOUJIU: departed
        "exclude.users[0]",  # nobody: not in the directory
        "exclude.users[1]",  # Tom: included and excluded
    }
    assert any("left the company" in p.en for p in problems)


def test_check_rule_warns_on_a_rule_that_names_nobody():
    problems = check_rule(_rule(exclude={"users": ["tom"]}), DIRECTORY)
    assert [(p.path, p.severity) for p in problems] == [("", "warning")]
    assert "群主" in problems[0].zh


def test_check_rule_warns_when_required_is_larger_than_a_chat():
    crowd = [Person(f"u{i}", f"员{i}号", 1, (40,)) for i in range(2001)]
    directory = InMemoryDirectory([*PEOPLE, *crowd], {**TREE, 40: 1})
    assert [p.path for p in check_rule(_rule(required={"departments": [40]}), directory)] == ["required"]
    assert check_rule(_rule(required={"departments": [40]}, exclude={"users": ["u0"]}), directory) == []


# --- the directory --------------------------------------------------------------------------------
def test_departments_with_and_without_subdepartments():
    assert DIRECTORY.department_members(10, True) == {"zhangsan", "lisi", "wangwu", "zhaoliu", "zhoujiu", "wushi",
                                                      "zhengyi", "ceshi", "tom"}  # fmt: skip
    assert DIRECTORY.department_members(10, False) == {"zhangsan"}
    assert DIRECTORY.department_members(11, True) - DIRECTORY.department_members(11, False) == {"wangwu"}
    assert len(DIRECTORY.department_members(1, True)) == len(PEOPLE)
    assert DIRECTORY.department_members(99, True) == frozenset()
    assert DIRECTORY.department_members(10, True) is DIRECTORY.department_members(10, True)  # cached


def test_people_are_found_by_any_spelling_and_indexed_by_tag_and_stripped_position():
    assert DIRECTORY.person("ZHANGSAN").userid == "ZhangSan"
    assert DIRECTORY.person("nobody") is None
    assert DIRECTORY.tag_members(3) == {"wangwu", "sunba"}
    assert DIRECTORY.position_members("经理") == DIRECTORY.position_members(" 经理") == {"zhangsan", "qianqi"}
    assert DIRECTORY.has_department(30) and DIRECTORY.has_department(12) and not DIRECTORY.has_department(99)
    assert DIRECTORY.has_tag(4) and not DIRECTORY.has_tag(5)


def test_a_department_someone_is_in_is_known_and_a_cycle_is_walked_once():
    directory = InMemoryDirectory([Person("a", "甲", 1, (7,)), Person("b", "乙", 1, (8,))], [(7, 8), (8, 7)])
    assert directory.has_department(7)
    assert directory.department_members(7, True) == {"a", "b"}
    assert InMemoryDirectory([Person("a", "甲", 1, (5,))]).has_department(5)


def test_two_spellings_of_one_userid_are_one_person():
    with pytest.raises(ValueError, match="case-insensitively"):
        InMemoryDirectory([Person("Tom", "汤姆", 1), Person("tom", "Tom", 1)])


def test_a_person_from_a_mirror_record():
    record = MemberRecord.from_api({"userid": "LiSi", "name": "李四", "department": [11], "position": "工程师"})
    assert Person.from_record(record, tags=[3]) == Person("LiSi", "李四", 1, (11,), "工程师", frozenset({3}))


def test_selector_members_names_unknown_users_too():
    selector = _rule(required={"departments": [{"id": 11, "children": False}], "users": ["Ghost"], "tags": [3]})
    assert selector_members(selector.required, DIRECTORY) == {"lisi", "zhoujiu", "wushi", "zhengyi", "ceshi",
                                                              "ghost", "wangwu", "sunba"}  # fmt: skip


# --- real names -------------------------------------------------------------------------------------
PLACEHOLDERS = ["测试", "测试1", "test", "Test01", "TEST_user 2", "临时工", "临时", "新员工", "新人1", "待定", "未命名",
                "未知", "用户123", "user1", "guest", "Guest 2", "访客", "外包1", "匿名", "13800138000", "138****8000",
                "+86 138 0013 8000", "123", "--", "???", "Ｔｅｓｔ１", "张某", "某某", "xxx", "N/A", "管理员", "admin",
                "微信用户", "实习生2", "A", "😀"]  # fmt: skip
REAL_NAMES = ["Tom", "张三", "欧阳娜娜", "李测", "Testa", "Guestrin", "王临", "Li Wei", "Zhang San",
              "阿卜杜热西提·买买提", "O'Brien", "Anna-Lena", "Na", "Nil", "Xu", "Tempest", "新", "李", "Admina",
              "Userman", "X Æ A-12",
              "José García", "Nguyễn Văn An", "金敏俊", "山田太郎"]  # fmt: skip


@pytest.mark.parametrize("name", PLACEHOLDERS)
def test_placeholder_names_are_flagged(name):
    assert POLICY.check(Person("someone", name, 1)) == "name_placeholder"


@pytest.mark.parametrize("name", REAL_NAMES)
def test_real_names_are_not_flagged(name):
    assert POLICY.check(Person(name.casefold().replace(" ", ""), name, 1)) is None


@pytest.mark.parametrize("name", ["", "   ", "\u3000", "\t"])
def test_a_missing_name(name):
    assert POLICY.check(Person("x", name, 1)) == "name_missing"


def test_a_userid_equal_to_the_name_is_a_real_person():
    assert POLICY.check(Person("tom", "Tom", 1)) is None
    assert POLICY.check(Person("zhangsan", "zhangsan", 1)) is None


def test_not_activated_is_not_real_named_but_disabled_and_departed_are_not_the_policys_business():
    assert POLICY.check(Person("x", "张三", 4)) == "not_activated"
    assert POLICY.check(Person("x", "测试", 4)) == "not_activated"
    assert POLICY.check(Person("x", "张三", 2)) is None
    assert POLICY.check(Person("x", "张三", 5)) is None
    assert POLICY.check(Person("x", "测试", 5)) == "name_placeholder"


def test_every_default_pattern_is_a_valid_regex_and_the_matcher_is_cached():
    for pattern in DEFAULT_PLACEHOLDER_PATTERNS:
        re.compile(pattern)
    policy = RealNamePolicy()
    assert policy.compile() is policy.compile()
    assert policy == RealNamePolicy() and hash(policy) == hash(RealNamePolicy())


def test_placeholder_patterns_are_configurable():
    policy = RealNamePolicy(placeholder_patterns=["tom", r"张\w"])
    assert policy.check(Person("tom", "TOM", 1)) == "name_placeholder"
    assert policy.check(Person("x", "张三", 1)) == "name_placeholder"
    assert policy.check(Person("x", "测试", 1)) is None
    assert RealNamePolicy(placeholder_patterns=()).check(Person("x", "测试", 1)) is None


def test_a_pattern_with_its_own_flags_still_works():
    policy = RealNamePolicy(placeholder_patterns=("(?i)demo", "测试"))
    assert policy.check(Person("x", "DEMO", 1)) == "name_placeholder"
    assert policy.check(Person("x", "测试", 1)) == "name_placeholder"
    assert policy.check(Person("x", "张三", 1)) is None


def test_patterns_referring_to_their_own_groups_keep_their_meaning():
    policy = RealNamePolicy(placeholder_patterns=(r"(.)\1+", r"(a)b\1", r"(?P<c>z)y(?P=c)"))
    assert [policy.check_name(n) for n in ("哈哈哈", "aba", "zyz", "abb", "ab")] == [
        "name_placeholder", "name_placeholder", "name_placeholder", None, None
    ]  # fmt: skip


def test_invalid_patterns_are_a_rule_error_naming_each():
    policy = RealNamePolicy(placeholder_patterns=("测试", "(unclosed", "[z-a]", 5))  # type: ignore[arg-type]
    with pytest.raises(RuleError) as caught:
        policy.compile()
    assert [p.path for p in caught.value.problems] == [
        "placeholder_patterns[1]",
        "placeholder_patterns[2]",
        "placeholder_patterns[3]",
    ]
    assert "(unclosed" in caught.value.problems[0].en and "正则" in caught.value.problems[0].zh
    with pytest.raises(RuleError):
        policy.check(Person("x", "张三", 1))
    with pytest.raises(RuleError):
        RealNamePolicy(placeholder_patterns="测试")  # type: ignore[arg-type]
    with pytest.raises(RuleError):
        RealNamePolicy(name_grace=timedelta(days=-1))


# --- evaluate: who stays, who goes, who comes ----------------------------------------------------------
def test_members_the_rule_names_stay_and_outsiders_go():
    facts = _facts(_rule(required={"departments": [10]}), admins=("OuYang",))
    result = _eval(facts, ["zhangsan", "LISI", "wangwu", "zhaoliu", "Tom", "qianqi", "OUYANG", "liming"])
    assert _summary(result.findings) == {("qianqi", "remove", "outside_rule")}
    assert result.removals[0].detail == "not_included"
    assert not result.additions and not result.owner_gone and result.chat_size == 8


def test_a_department_without_children_leaves_out_its_subdepartments():
    facts = _facts(_rule(required={"departments": [{"id": 11, "children": False}]}))
    result = _eval(facts, ["lisi", "WangWu", "LiMing"])
    assert _summary(result.removals) == {("WangWu", "remove", "outside_rule")}
    facts = _facts(_rule(required={"departments": [11]}))
    assert _eval(facts, ["lisi", "WangWu", "LiMing"]).removals == ()


def test_tags_and_positions_include():
    facts = _facts(_rule(permitted={"tags": [3], "positions": ["经理"]}))
    result = _eval(facts, ["wangwu", "sunba", "zhangsan", "qianqi", "lisi", "liming"])
    assert _summary(result.findings) == {("lisi", "remove", "outside_rule")}


def test_excludes_beat_includes():
    rule = _rule(
        required={"departments": [10], "users": ["qianqi"]},
        permitted={"tags": [3]},
        exclude={"departments": [12], "users": ["Tom", "qianqi"], "tags": [4]},
    )
    directory = _dir(Person("intern", "实习甲", 1, (11,), tags=frozenset({4})))
    result = _eval(_facts(rule), ["wangwu", "tom", "qianqi", "intern", "lisi", "sunba", "liming"], directory)
    assert _summary(result.removals) == {
        ("wangwu", "remove", "outside_rule"),  # in 10's subtree and tag 3, but 12 is excluded
        ("tom", "remove", "outside_rule"),
        ("qianqi", "remove", "outside_rule"),
        ("intern", "remove", "outside_rule"),
    }
    assert {f.detail for f in result.removals} == {"excluded"}
    # Excluded required people are not added either.
    assert "wangwu" not in {f.userid.casefold() for f in _eval(_facts(rule), ["liming"], directory).additions}


def test_required_members_missing_are_added_as_the_directory_spells_them():
    facts = _facts(_rule(required={"departments": [10]}, permitted={"departments": [20]}))
    result = _eval(facts, ["lisi", "liming"])
    # zhoujiu departed, wushi disabled, zhengyi not activated, ceshi a placeholder: not added.
    assert _summary(result.additions) == {
        ("ZhangSan", "add", "required_missing"),
        ("WangWu", "add", "required_missing"),
        ("zhaoliu", "add", "required_missing"),
        ("tom", "add", "required_missing"),
    }
    # Permitted members who left on their own are not re-added.
    assert not {"qianqi", "sunba"} & {f.userid for f in result.additions}


def test_explicit_required_users_are_added_and_unknown_ones_ignored():
    facts = _facts(_rule(required={"users": ["QIANQI", "ghost"]}))
    assert _summary(_eval(facts, ["liming"]).additions) == {("qianqi", "add", "required_missing")}


def test_admins_and_the_owner_are_always_required_and_never_excluded():
    rule = _rule(required={"users": ["lisi"]}, exclude={"departments": [1]})
    facts = _facts(rule, owner="LiMing", admins=("ouyang",))
    result = _eval(facts, ["lisi", "liming"])
    assert _summary(result.removals) == {("lisi", "remove", "outside_rule")}
    assert _summary(result.additions) == {("OuYang", "add", "required_missing")}


def test_admins_and_the_owner_are_removed_when_they_depart():
    facts = _facts(_rule(required={"departments": [11]}), owner="ZhouJiu", admins=("wushi", "zhengyi", "ghost"))
    result = _eval(facts, ["zhoujiu", "WUSHI", "zhengyi", "ghost", "lisi", "wangwu"])
    assert _summary(result.removals) == {
        ("zhoujiu", "remove", "departed"),
        ("WUSHI", "remove", "disabled"),
        ("zhengyi", "remove", "not_real_name"),
        ("ghost", "remove", "not_in_directory"),
    }
    assert result.owner_gone
    assert not result.additions  # none of them is addable


@pytest.mark.parametrize(
    ("owner", "current", "gone"),
    [
        ("LiMing", ["liming", "lisi"], False),
        ("LiMing", ["lisi"], False),  # not in the chat: added back, not gone
        ("zhoujiu", ["lisi"], True),  # departed
        ("wushi", ["lisi"], True),  # disabled
        ("ghost", ["lisi"], True),  # not in the directory
        ("zhengyi", ["zhengyi", "lisi"], True),  # not activated: being removed
        ("", ["lisi"], True),  # unknown
    ],
)
def test_owner_gone(owner, current, gone):
    assert _eval(_facts(_rule(required={"departments": [11]}), owner=owner), current).owner_gone is gone


def test_removal_reasons_in_order_of_precedence():
    facts = _facts(_rule(permitted={"departments": [1]}))
    result = _eval(facts, ["nobody", "zhoujiu", "wushi", "zhengyi", "lisi", "liming"])
    assert [(f.userid, f.reason, f.detail) for f in result.removals] == [
        ("nobody", "not_in_directory", ""),
        ("wushi", "disabled", ""),
        ("zhengyi", "not_real_name", "not_activated"),
        ("zhoujiu", "departed", ""),
    ]


def test_a_person_in_the_chat_twice_is_reported_once_as_first_spelled():
    facts = _facts(_rule(required={"departments": [20]}))
    result = _eval(facts, ["LiSi", "lisi", "LISI", "liming", "LiMing", "qianqi"])
    assert [f.userid for f in result.removals] == ["LiSi"]
    assert result.chat_size == 3
    assert _summary(result.additions) == {("sunba", "add", "required_missing")}


def test_nobody_is_both_added_and_removed():
    facts = _facts(_rule(required={"departments": [1]}, exclude={"users": ["lisi"]}), admins=("lisi",))
    result = _eval(facts, ["LISI", "zhoujiu"])
    added = {f.userid.casefold() for f in result.additions}
    assert not added & {f.userid.casefold() for f in result.removals}
    assert "lisi" not in added


# --- exemptions ----------------------------------------------------------------------------------
def test_an_unexpired_exemption_keeps_a_member_and_says_why_they_would_go():
    facts = _facts(
        _rule(required={"departments": [11]}),
        exemptions=(
            Exemption("QianQi", "项目借调", NOW + timedelta(days=1)),
            Exemption("zhoujiu", "交接中", None),
            Exemption("lisi", "无需豁免", NOW + timedelta(days=1)),
        ),
    )
    result = _eval(facts, ["qianqi", "ZhouJiu", "lisi", "liming"])
    assert result.removals == ()
    assert result.exempted == (
        Finding("qianqi", "keep_exempt", "outside_rule", "项目借调"),
        Finding("ZhouJiu", "keep_exempt", "departed", "交接中"),
    )
    assert result.findings[-2:] == result.exempted
    assert result.counts()["outside_rule"] == 0


def test_an_expired_exemption_does_not_count():
    facts = _facts(_rule(required={"departments": [11]}), exemptions=(Exemption("qianqi", "借调", NOW),))
    assert _summary(_eval(facts, ["qianqi", "liming"]).removals) == {("qianqi", "remove", "outside_rule")}
    with pytest.raises(ValueError, match="aware"):
        _eval(_facts(exemptions=(Exemption("qianqi", "借调", datetime(2027, 1, 1)),)), ["qianqi"])


def test_an_exempt_departed_owner_is_kept_but_still_gone():
    facts = _facts(owner="zhoujiu", exemptions=(Exemption("zhoujiu", "交接中", NOW + timedelta(hours=1)),))
    result = _eval(facts, ["zhoujiu", "lisi"])
    assert result.removals == () and result.owner_gone


# --- the name rule's grace -------------------------------------------------------------------------
GRACE = POLICY.name_grace
PERMIT_11 = _rule(permitted={"departments": [11]})


@pytest.mark.parametrize(
    ("flagged", "action"),
    [
        (None, "warn"),  # never told: tell first
        (NOW, "warn"),
        (NOW - GRACE + timedelta(seconds=1), "warn"),
        (NOW - GRACE, "remove"),
        (NOW - GRACE - timedelta(days=30), "remove"),
    ],
)
def test_a_placeholder_name_is_told_first_and_removed_after_the_grace(flagged, action):
    flags = {} if flagged is None else {"ceshi": flagged}
    result = _eval(_facts(PERMIT_11, name_flagged_since=flags), ["CeShi", "liming"])
    assert [(f.userid, f.action, f.reason, f.detail) for f in result.findings] == [
        ("CeShi", action, "not_real_name", "name_placeholder")
    ]


def test_a_missing_name_has_the_same_grace():
    directory = _dir(Person("noname", "", 1, (11,)))
    assert _eval(_facts(PERMIT_11), ["noname", "liming"], directory).findings == (
        Finding("noname", "warn", "not_real_name", "name_missing"),
    )


def test_name_flags_are_looked_up_folded():
    facts = _facts(PERMIT_11, name_flagged_since={"CeShi": NOW - GRACE})
    assert _summary(_eval(facts, ["ceshi", "liming"]).removals) == {("ceshi", "remove", "not_real_name")}


def test_an_outsider_with_a_placeholder_name_gets_no_grace():
    directory = _dir(Person("linshi", "临时工", 1, (20,)))
    result = _eval(_facts(PERMIT_11), ["linshi", "liming"], directory)
    assert [(f.userid, f.action, f.reason) for f in result.findings] == [("linshi", "remove", "outside_rule")]


def test_a_custom_grace():
    policy = RealNamePolicy(name_grace=timedelta(0))
    facts = _facts(PERMIT_11, name_flagged_since={"ceshi": NOW})
    assert _summary(_eval(facts, ["ceshi"], policy=policy).removals) == {("ceshi", "remove", "not_real_name")}


def test_a_placeholder_owner_in_the_grace_is_warned_not_gone():
    result = _eval(_facts(PERMIT_11, owner="ceshi"), ["ceshi"])
    assert _summary(result.findings) == {("ceshi", "warn", "not_real_name")} and not result.owner_gone


# --- the evaluation as a whole --------------------------------------------------------------------
def test_findings_are_ordered_and_counted():
    facts = _facts(_rule(required={"departments": [11]}))
    result = _eval(facts, ["zhoujiu", "Qianqi", "ceshi", "Ghost", "liming"])
    assert [(f.action, f.userid) for f in result.findings] == [
        ("remove", "Ghost"),
        ("remove", "Qianqi"),
        ("remove", "zhoujiu"),
        ("add", "lisi"),
        ("add", "WangWu"),
        ("warn", "ceshi"),
    ]
    assert result.counts() == {
        "departed": 1,
        "disabled": 0,
        "not_in_directory": 1,
        "not_real_name": 1,
        "outside_rule": 1,
        "required_missing": 2,
    }
    assert set(result.counts()) == set(REASONS)


def test_an_empty_rule_keeps_only_the_admins_and_the_owner():
    result = _eval(GroupFacts(MembershipRule(), owner="LiMing", admins=("ouyang",)), ["liming", "ouyang", "lisi"])
    assert _summary(result.findings) == {("lisi", "remove", "outside_rule")}


def test_now_must_be_aware():
    with pytest.raises(ValueError, match="aware"):
        _eval(_facts(), ["lisi"], now=datetime(2026, 11, 25, 9, 0))


def test_the_brake_property_uses_the_chat_size():
    rule = _rule(required={"users": ["liming"]})
    outsiders = ["lisi", "wangwu", "zhaoliu", "qianqi", "sunba"]
    assert not _eval(_facts(rule), ["liming", *outsiders]).braked  # 5 of 6
    assert _eval(_facts(rule), ["liming", *outsiders, "tom"]).braked  # 6 of 7


# --- the preview's desired members ------------------------------------------------------------------
def test_desired_members_and_why_some_cannot_be():
    rule = _rule(
        required={"departments": [11]},
        permitted={"tags": [3], "users": ["ghost"]},
        exclude={"departments": [12]},
    )
    desired = desired_members(GroupFacts(rule, owner="LiMing", admins=("ouyang", "wushi")), DIRECTORY, POLICY)
    assert desired.required == {"lisi", "liming", "ouyang"}
    assert desired.permitted == {"lisi", "liming", "ouyang", "sunba"}
    assert desired.ineligible == {
        "zhoujiu": "departed",
        "wushi": "disabled",
        "zhengyi": "not_real_name",
        "ceshi": "not_real_name",
        "ghost": "not_in_directory",
        "wangwu": "outside_rule",
    }


# --- the brake and the owner --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "limit"), [(0, 5), (1, 5), (10, 5), (49, 5), (50, 5), (51, 6), (200, 20), (2000, 200)]
)
def test_brake_limit(size, limit):
    assert brake_limit(size) == limit


def test_pick_owner_prefers_a_staying_admin():
    facts = _facts(owner="zhoujiu", admins=("wushi", "QIANQI", "lisi", "sunba"))
    # wushi is disabled, qianqi is not staying: lisi (as the directory spells it).
    assert pick_owner(facts, ["LISI", "sunba", "zhangsan"], DIRECTORY) == "lisi"
    assert pick_owner(facts, ["Sunba"], DIRECTORY) == "sunba"


def test_pick_owner_then_a_department_leader():
    facts = _facts(owner="zhoujiu", admins=("ceshi",))
    leaders = ["zhoujiu", "ghost", "zhengyi", "ceshi", "QianQi", "lisi"]
    assert pick_owner(facts, ["ceshi", "lisi"], DIRECTORY, department_leaders=leaders) == "qianqi"


def test_pick_owner_then_the_first_required_member_staying():
    rule = _rule(required={"departments": [10]}, permitted={"departments": [20]}, exclude={"users": ["lisi"]})
    facts = _facts(rule, owner="zhoujiu")
    staying = ["zhaoliu", "ZhangSan", "lisi", "ceshi", "qianqi", "ZHOUJIU"]
    assert pick_owner(facts, staying, DIRECTORY) == "ZhangSan"
    assert pick_owner(facts, ["qianqi", "lisi", "ceshi"], DIRECTORY) is None


def test_pick_owner_uses_the_policy_given():
    facts = _facts(owner="zhoujiu", admins=("tom",))
    assert pick_owner(facts, ["tom"], DIRECTORY) == "tom"
    strict = RealNamePolicy(placeholder_patterns=("tom",))
    assert pick_owner(facts, ["tom"], DIRECTORY, policy=strict) is None


def test_problem_defaults_to_an_error():
    assert Problem("required", "中", "en").severity == "error"
