"""Properties of membership evaluation over random directories, rules and chats (Hypothesis).

Coverage of a selector is recomputed here by brute force from the department tree (an oracle
independent of InMemoryDirectory's indexes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from wecom_plugin.domain.directory import DISABLED, LEFT
from wecom_plugin.domain.membership import (
    DepartmentRef,
    Exemption,
    GroupFacts,
    InMemoryDirectory,
    MembershipRule,
    Person,
    RealNamePolicy,
    Selector,
    desired_members,
    evaluate,
)

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
POLICY = RealNamePolicy()
TREE = {1: 0, 2: 1, 3: 2, 4: 2, 5: 1, 6: 5}
POOL = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]  # userids; "ghost" is never in the directory
NAMES = ["张三", "李四", "Tom", "欧阳娜娜", "测试1", "", "user1", "王临"]
POSITIONS = ["", "经理", " 经理 ", "工程师"]


_ID = st.sampled_from([*POOL, *(u.upper() for u in POOL)])  # any spelling of a directory userid
_ANYONE = st.sampled_from([*POOL, *(u.upper() for u in POOL), "ghost", "Ghost"])
_DEPARTMENTS = st.lists(st.sampled_from(sorted(TREE)), unique=True, max_size=2)
_TAGS = st.lists(st.integers(1, 3), unique=True, max_size=2)

# Strategies are built once, here: building them inside a composite per example was most of the run time.
_people = st.lists(
    st.builds(
        Person,
        userid=_ID,
        name=st.sampled_from(NAMES),
        status=st.sampled_from([1, 1, 1, 2, 4, 5]),
        departments=_DEPARTMENTS.map(tuple),
        position=st.sampled_from(POSITIONS),
        tags=_TAGS.map(frozenset),
    ),
    unique_by=lambda p: p.folded,
    min_size=4,
    max_size=len(POOL),
)


def _selectors(positions: bool = True) -> st.SearchStrategy[Selector]:
    return st.builds(
        Selector,
        departments=st.lists(st.builds(DepartmentRef, st.sampled_from(sorted(TREE)), st.booleans()),
                             unique_by=lambda r: r.id, max_size=2).map(tuple),
        tags=_TAGS.map(tuple),
        positions=st.lists(st.sampled_from(["经理", "工程师"]), unique=True, max_size=1 if positions else 0).map(tuple),
        users=st.lists(_ANYONE, unique_by=str.casefold, max_size=3).map(tuple),
    )  # fmt: skip


_rules = st.builds(MembershipRule, required=_selectors(), permitted=_selectors(), exclude=_selectors(positions=False))
_expiry = st.sampled_from([None, NOW - timedelta(hours=1), NOW, NOW + timedelta(hours=1)])
_cases = st.tuples(
    _people.map(lambda people: InMemoryDirectory(people, TREE, tags=(1, 2, 3))),
    st.builds(
        GroupFacts,
        rule=_rules,
        owner=_ANYONE,
        admins=st.lists(_ANYONE, max_size=2).map(tuple),
        exemptions=st.lists(st.builds(Exemption, _ANYONE, st.just("借调"), _expiry), max_size=2).map(tuple),
        name_flagged_since=st.dictionaries(
            st.sampled_from(POOL), st.integers(0, 6).map(lambda days: NOW - timedelta(days=days)), max_size=4
        ),
    ),
    st.lists(_ANYONE, max_size=12),
)


def _ancestors(department: int) -> set[int]:
    out = {department}
    while TREE.get(department, 0):
        department = TREE[department]
        out.add(department)
    return out


def _covers(selector: Selector, person: Person) -> bool:
    """Brute force: does the selector name this person?"""
    if person.folded in {u.casefold() for u in selector.users}:
        return True
    if person.tags & set(selector.tags) or person.position.strip() in selector.positions:
        return True
    for d in person.departments:
        for ref in selector.departments:
            if ref.id == d or (ref.children and ref.id in _ancestors(d)):
                return True
    return False


def _exempt(facts: GroupFacts, folded: str) -> bool:
    return any(e.userid.casefold() == folded and (e.expires_at is None or e.expires_at > NOW) for e in facts.exemptions)


def _folded(findings) -> set[str]:
    return {f.userid.casefold() for f in findings}


def _never_both_added_and_removed(directory, facts, current, result) -> None:
    """(a) nobody is both added and removed; each member is reported once; additions are not members."""
    assert not _folded(result.additions) & _folded(result.removals)
    about_members = [f.userid.casefold() for f in (*result.removals, *result.warnings, *result.exempted)]
    assert len(about_members) == len(set(about_members))
    assert _folded(result.additions).isdisjoint({u.casefold() for u in current})
    assert result.findings == (*result.removals, *result.additions, *result.warnings, *result.exempted)


def _named_members_stay(directory, facts, current, result) -> None:
    """(b) an active, real-named member named by required or permitted and not excluded is never removed."""
    rule, always, removed = facts.rule, facts.always, _folded(result.removals)
    for userid in current:
        person = directory.person(userid)
        if person is None or person.status != 1 or POLICY.check(person) is not None:
            continue
        named = person.folded in always or _covers(rule.required, person) or _covers(rule.permitted, person)
        excluded = person.folded not in always and _covers(rule.exclude, person)
        if named and not excluded:
            assert person.folded not in removed, person


def _gone_members_are_removed(directory, facts, current, result) -> None:
    """(c) every departed, disabled or unknown member is removed (with that reason) unless exempt."""
    removed = {f.userid.casefold(): f.reason for f in result.removals}
    for userid in current:
        person = directory.person(userid)
        folded = userid.casefold()
        if _exempt(facts, folded):
            assert folded not in removed
        elif person is None:
            assert removed[folded] == "not_in_directory"
        elif person.status in (LEFT, DISABLED):
            assert removed[folded] == ("departed" if person.status == LEFT else "disabled")


def _applying_settles(directory, facts, current, result) -> None:
    """(d) after applying the evaluation, a second one finds nothing to do but the same name warnings."""
    after = ({u.casefold() for u in current} - _folded(result.removals)) | _folded(result.additions)
    second = evaluate(facts, sorted(after), directory, POLICY, NOW)
    assert second.removals == () and second.additions == ()
    assert all(f.reason == "not_real_name" for f in second.warnings)
    assert _folded(second.warnings) == _folded(result.warnings)


def _agrees_with_the_preview(directory, facts, current, result) -> None:
    """desired_members and evaluate tell the same story."""
    desired = desired_members(facts, directory, POLICY)
    # An empty chat gets exactly the desired required members.
    assert _folded(evaluate(facts, [], directory, POLICY, NOW).additions) == desired.required
    # A member kept silently (no exemption needed) is exactly one the preview permits.
    reported = _folded(result.findings)
    for folded in {u.casefold() for u in current}:
        if not _exempt(facts, folded):
            assert (folded not in reported) == (folded in desired.permitted), folded
    assert desired.required <= desired.permitted
    assert not desired.permitted & set(desired.ineligible)


# One test for all of them: generating a case costs far more than checking it.
@settings(max_examples=300, deadline=None)
@given(case=_cases)
def test_evaluation_properties(case):
    directory, facts, current = case
    result = evaluate(facts, current, directory, POLICY, NOW)
    for check in (_never_both_added_and_removed, _named_members_stay, _gone_members_are_removed, _applying_settles,
                  _agrees_with_the_preview):  # fmt: skip
        check(directory, facts, current, result)


@settings(max_examples=200, deadline=None)
@given(rule=_rules)
def test_a_rule_survives_its_document(rule):
    doc = rule.to_doc()
    assert MembershipRule.from_doc(doc) == rule
    assert MembershipRule.from_doc(doc).to_doc() == doc


_WRITTEN_DEPARTMENTS = st.lists(
    st.integers(1, 50).flatmap(
        lambda d: st.sampled_from([d, {"id": d}, {"id": d, "children": True}, {"id": d, "children": False}])
    ),
    unique_by=lambda d: d if isinstance(d, int) else d["id"],
    max_size=4,
)
_WRITTEN_USERIDS = st.sampled_from(["zhangsan", "ZhangSan", "li.si@corp", "wang-wu_2", "007", " tom ", "Tom"])


def _written_section(positions: bool) -> st.SearchStrategy[dict]:
    keys = {
        "departments": _WRITTEN_DEPARTMENTS,
        "tags": st.lists(st.integers(1, 2**32 - 1), unique=True, max_size=3),
        "users": st.lists(_WRITTEN_USERIDS, max_size=3, unique_by=lambda u: u.strip().casefold()),
    }
    if positions:
        keys["positions"] = st.lists(st.sampled_from(["经理", " 工程师", "CEO "]), unique_by=str.strip)
    # Any key may be missing, null or empty: all mean "none".
    return st.fixed_dictionaries({}, optional={k: st.one_of(st.none(), v) for k, v in keys.items()})


# Documents as people write them: bare ints or objects, any order, any case, keys left out.
_docs = st.fixed_dictionaries(
    {}, optional={"required": _written_section(True), "permitted": _written_section(True),
                  "exclude": _written_section(False)}
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(doc=_docs)
def test_a_written_document_round_trips_through_the_canonical_one(doc):
    rule = MembershipRule.from_doc(doc)
    assert MembershipRule.from_doc(rule.to_doc()) == rule
