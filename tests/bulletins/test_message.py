"""The bulletin message (domain/bulletin_message.py): templates, period ranges, msgtype × path rules,
the confidentiality table (contract §14.6) and the size limits (§14.7). Pure: no database, no HTTP."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from wecom_plugin.domain import bulletin_message as bm
from wecom_plugin.domain.bulletin_message import (
    MSGTYPES,
    PATH_APPCHAT,
    PATH_MESSAGE,
    PATH_ROBOT,
    PATHS,
    SAFE_SUPPORT,
    VARIABLES,
    BulletinMessageError,
    MessageSpec,
    Problem,
    check_definition,
    render,
    safe_supported,
    template_context,
)
from wecom_plugin.wecom.api import message as wmessage

SH = ZoneInfo("Asia/Shanghai")
URL = "https://example.com/report"


def ctx_on(day: date, hour: int = 9, **kw) -> dict:
    return template_context(datetime(day.year, day.month, day.day, hour, 0, tzinfo=SH), **kw)


CTX = ctx_on(date(2026, 11, 26), group_name="研发一群", bulletin_name="周报")


def problems(spec: MessageSpec, paths=(PATH_APPCHAT,), confidential: bool = False) -> list[Problem]:
    return check_definition(spec, paths, confidential=confidential)


def joined(found: list[Problem]) -> str:
    return "\n".join(f"{p.field}: {p.text()}" for p in found)


def render_error(spec: MessageSpec, path: str = PATH_APPCHAT, context=None, confidential=False) -> str:
    with pytest.raises(BulletinMessageError) as info:
        render(spec, path, CTX if context is None else context, confidential=confidential)
    assert info.value.problems
    return str(info.value)


# --- the context --------------------------------------------------------------------------------
def test_context_of_a_thursday():
    assert CTX["date"] == "2026-11-26" and CTX["date_zh"] == "2026年11月26日" and CTX["time"] == "09:00"
    assert CTX["weekday"] == "星期四" and CTX["weekday_short"] == "周四" and CTX["weekday_en"] == "Thursday"
    assert (CTX["year"], CTX["quarter"], CTX["month"], CTX["day"]) == (2026, 4, 11, 26)
    assert CTX["group_name"] == "研发一群" and CTX["bulletin_name"] == "周报"
    week = CTX["this_week"]
    assert (week.start, week.end) == ("2026-11-23", "2026-11-29")
    assert (week.start_zh, week.end_zh) == ("2026年11月23日", "2026年11月29日")
    assert week.label == "11月23日—11月29日" and week.name == "本周" and str(week) == week.label
    assert CTX["last_month"].label == "2026年10月"
    assert (CTX["last_month"].start, CTX["last_month"].end) == ("2026-10-01", "2026-10-31")
    assert CTX["this_quarter"].label == "2026年第四季度"
    assert CTX["this_year"].label == "2026年" and CTX["last_year"].start == "2025-01-01"
    assert CTX["today"].label == "2026年11月26日" and CTX["yesterday"].start == CTX["yesterday"].end == "2026-11-25"
    assert CTX["tomorrow"].start == "2026-11-27"


def test_chinese_aliases_are_the_same_periods_and_work_in_templates():
    for ascii_name, zh_name in bm.PERIOD_ALIASES.items():
        assert CTX[zh_name] is CTX[ascii_name]
    spec = MessageSpec("text", title="{{ 本周.label }}", content="{{ 上月 }}，{{ 本季度.start }} 起；{{ 去年.label }}")
    assert problems(spec) == []
    assert render(spec, PATH_APPCHAT, CTX, confidential=False).message.body == {
        "content": "【11月23日—11月29日】\n2026年10月，2026-10-01 起；2025年"
    }


def test_variables_document_exactly_the_context():
    assert set(VARIABLES) == set(CTX) == set(bm.sample_context())
    for name, (zh, en) in VARIABLES.items():
        assert zh and en, name


def test_the_context_needs_an_aware_local_time_and_uses_its_local_date():
    with pytest.raises(ValueError):
        template_context(datetime(2026, 11, 26, 9, 0))
    # 00:30 on Monday in Shanghai is still Sunday in UTC: the local date decides.
    local = datetime(2026, 11, 29, 16, 30, tzinfo=UTC).astimezone(SH)
    ctx = template_context(local)
    assert ctx["date"] == "2026-11-30" and ctx["weekday"] == "星期一" and ctx["time"] == "00:30"
    assert ctx["this_week"].start == "2026-11-30"


@pytest.mark.parametrize(
    ("day", "weekday", "short", "en"),
    [
        (23, "星期一", "周一", "Monday"),
        (24, "星期二", "周二", "Tuesday"),
        (25, "星期三", "周三", "Wednesday"),
        (26, "星期四", "周四", "Thursday"),
        (27, "星期五", "周五", "Friday"),
        (28, "星期六", "周六", "Saturday"),
        (29, "星期日", "周日", "Sunday"),
    ],
)
def test_chinese_weekdays(day, weekday, short, en):
    ctx = ctx_on(date(2026, 11, day))
    assert (ctx["weekday"], ctx["weekday_short"], ctx["weekday_en"]) == (weekday, short, en)
    assert ctx["this_week"].start == "2026-11-23" and ctx["this_week"].end == "2026-11-29"  # Monday to Sunday


def test_weeks_on_a_monday_and_a_sunday():
    monday = ctx_on(date(2026, 11, 23))
    assert (monday["this_week"].start, monday["this_week"].end) == ("2026-11-23", "2026-11-29")
    assert (monday["last_week"].start, monday["last_week"].end) == ("2026-11-16", "2026-11-22")
    assert (monday["next_week"].start, monday["next_week"].end) == ("2026-11-30", "2026-12-06")
    sunday = ctx_on(date(2026, 11, 22))
    assert (sunday["this_week"].start, sunday["this_week"].end) == ("2026-11-16", "2026-11-22")


def test_a_week_across_the_new_year_names_both_years():
    ctx = ctx_on(date(2026, 12, 30))
    assert ctx["this_week"].label == "2026年12月28日—2027年1月3日"
    assert ctx["last_week"].label == "12月21日—12月27日"
    assert ctx["next_week"].label == "1月4日—1月10日"


def test_january_first():
    ctx = ctx_on(date(2027, 1, 1))
    assert ctx["yesterday"].start == "2026-12-31"
    assert (ctx["last_month"].start, ctx["last_month"].end, ctx["last_month"].label) == (
        "2026-12-01",
        "2026-12-31",
        "2026年12月",
    )
    assert (ctx["this_quarter"].start, ctx["this_quarter"].end) == ("2027-01-01", "2027-03-31")
    assert ctx["this_quarter"].label == "2027年第一季度"
    assert (ctx["last_quarter"].start, ctx["last_quarter"].end) == ("2026-10-01", "2026-12-31")
    assert ctx["last_quarter"].label == "2026年第四季度"
    assert ctx["last_year"].label == "2026年" and ctx["last_year"].end == "2026-12-31"
    assert ctx["this_week"].start == "2026-12-28"  # the week began last year
    assert ctx["weekday"] == "星期五"


@pytest.mark.parametrize(
    ("day", "this_q", "last_q", "next_q"),
    [
        (date(2026, 1, 1), ("2026-01-01", "2026-03-31"), ("2025-10-01", "2025-12-31"), ("2026-04-01", "2026-06-30")),
        (date(2026, 4, 1), ("2026-04-01", "2026-06-30"), ("2026-01-01", "2026-03-31"), ("2026-07-01", "2026-09-30")),
        (date(2026, 7, 1), ("2026-07-01", "2026-09-30"), ("2026-04-01", "2026-06-30"), ("2026-10-01", "2026-12-31")),
        (date(2026, 10, 1), ("2026-10-01", "2026-12-31"), ("2026-07-01", "2026-09-30"), ("2027-01-01", "2027-03-31")),
        (date(2026, 9, 30), ("2026-07-01", "2026-09-30"), ("2026-04-01", "2026-06-30"), ("2026-10-01", "2026-12-31")),
    ],
)
def test_quarters_on_their_boundaries(day, this_q, last_q, next_q):
    ctx = ctx_on(day)
    for name, expected in (("this_quarter", this_q), ("last_quarter", last_q), ("next_quarter", next_q)):
        assert (ctx[name].start, ctx[name].end) == expected, name


@pytest.mark.parametrize(
    ("day", "this_m", "last_m", "next_m"),
    [
        (date(2026, 3, 31), ("2026-03-01", "2026-03-31"), ("2026-02-01", "2026-02-28"), ("2026-04-01", "2026-04-30")),
        (date(2028, 3, 31), ("2028-03-01", "2028-03-31"), ("2028-02-01", "2028-02-29"), ("2028-04-01", "2028-04-30")),
        (date(2026, 1, 31), ("2026-01-01", "2026-01-31"), ("2025-12-01", "2025-12-31"), ("2026-02-01", "2026-02-28")),
        (date(2026, 12, 31), ("2026-12-01", "2026-12-31"), ("2026-11-01", "2026-11-30"), ("2027-01-01", "2027-01-31")),
        (date(2026, 2, 28), ("2026-02-01", "2026-02-28"), ("2026-01-01", "2026-01-31"), ("2026-03-01", "2026-03-31")),
    ],
)
def test_months_on_their_last_day(day, this_m, last_m, next_m):
    ctx = ctx_on(day)
    for name, expected in (("this_month", this_m), ("last_month", last_m), ("next_month", next_m)):
        assert (ctx[name].start, ctx[name].end) == expected, name
    assert ctx["tomorrow"].start == (day + timedelta(days=1)).isoformat()
    assert ctx["last_month"].label == f"{int(last_m[0][:4])}年{int(last_m[0][5:7])}月"


def test_every_day_of_a_leap_year_has_consistent_periods():
    day = date(2028, 1, 1)
    while day.year == 2028:
        ctx = ctx_on(day)
        week = ctx["this_week"]
        assert date.fromisoformat(week.start).weekday() == 0 and date.fromisoformat(week.end).weekday() == 6
        assert week.start <= day.isoformat() <= week.end
        for prefix in ("month", "quarter", "year"):
            this, last, nxt = ctx[f"this_{prefix}"], ctx[f"last_{prefix}"], ctx[f"next_{prefix}"]
            assert this.start <= day.isoformat() <= this.end
            assert date.fromisoformat(last.end) + timedelta(days=1) == date.fromisoformat(this.start)
            assert date.fromisoformat(this.end) + timedelta(days=1) == date.fromisoformat(nxt.start)
        day += timedelta(days=1)


# --- the spec document --------------------------------------------------------------------------
def test_spec_document_round_trip():
    spec = MessageSpec("text", title="t", content="c", mention_all=True, mentions=["zhangsan", "lisi"])
    assert spec.mentions == ("zhangsan", "lisi")
    doc = spec.to_doc()
    assert doc["mentions"] == ["zhangsan", "lisi"] and doc["msgtype"] == "text"
    assert MessageSpec.from_doc(doc) == spec
    assert MessageSpec.from_doc({"msgtype": "markdown", "content": "x"}) == MessageSpec("markdown", content="x")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"msgtype": "text", "colour": "red"}, "colour"),
        ({"content": "x"}, "msgtype"),
        ({"msgtype": 3}, "msgtype"),
        ({"msgtype": "text", "title": None}, "title"),
        ({"msgtype": "text", "mention_all": 1}, "mention_all"),
        ({"msgtype": "text", "mentions": "zhangsan"}, "mentions"),
        ({"msgtype": "text", "mentions": [1]}, "mentions"),
        (["text"], "message"),
    ],
)
def test_malformed_spec_documents_are_refused(doc, field):
    with pytest.raises(BulletinMessageError) as info:
        MessageSpec.from_doc(doc)
    assert field in [p.field for p in info.value.problems]


def test_problems_read_in_both_languages():
    p = Problem("content", "未知变量 x", "unknown variable x")
    assert p.text() == "未知变量 x / unknown variable x"
    exc = BulletinMessageError([p, Problem("url", "坏", "bad")])
    assert str(exc) == "content: 未知变量 x / unknown variable x; url: 坏 / bad" and isinstance(exc, ValueError)


# --- templates at save time ---------------------------------------------------------------------
@pytest.mark.parametrize("field", ["title", "content", "url"])
def test_an_unknown_variable_is_refused_at_save_naming_it(field):
    values = {"title": "周报", "content": "内容", "url": URL, field: "{{ group_nmae }}"}
    if field == "url":
        values["url"] = "https://example.com/{{ group_nmae }}"
    found = problems(MessageSpec("textcard", **values))
    assert [(p.field, p.en.split(";")[0]) for p in found] == [(field, "unknown variable group_nmae")]
    assert "group_name" in found[0].text()  # did you mean


def test_template_syntax_errors_name_the_line():
    found = problems(MessageSpec("text", content="第一行\n{% if weekday == '星期一' %}周一"))
    assert len(found) == 1 and found[0].field == "content" and "line 2" in found[0].en
    assert "syntax" in problems(MessageSpec("text", content="{{ date "))[0].en


def test_local_names_filters_and_loops_are_fine():
    spec = MessageSpec(
        "text",
        content=(
            "{% set n = 3 %}{% for p in [this_week, last_week] %}{{ loop.index }}:{{ p.label }} {% endfor %}"
            "{{ group_name|default('无', true)|upper }} {{ '%02d'|format(month) }} {{ date.replace('-', '/') }} {{ n }}"
            "{% if weekday == '星期一' %}周初{% endif %}"
        ),
    )
    assert problems(spec) == []
    text = render(spec, PATH_APPCHAT, CTX, confidential=False).message.body["content"]
    assert text == "1:11月23日—11月29日 2:11月16日—11月22日 研发一群 11 2026/11/26 3"


def test_an_unknown_attribute_of_a_period_is_refused_at_save():
    found = problems(MessageSpec("text", content="{{ this_week.begin }} {{ 上月['finish'] }} {{ this_week.label }}"))
    assert [p.en.split(" (")[0] for p in found] == [
        "variable this_week has no attribute begin",
        "variable 上月 has no attribute finish",
    ]
    assert "start_zh" in found[0].en  # the known attributes are listed


def test_an_unknown_attribute_elsewhere_is_refused_by_the_trial_render_or_at_send():
    found = problems(MessageSpec("text", content="{{ this_week.start.nope }}"))
    assert len(found) == 1 and "trial render" in found[0].en and "nope" in found[0].en
    assert "nope" in render_error(MessageSpec("text", content="{{ this_week.start.nope }}"))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ group_name.__class__ }}",
        "{{ this_week['__dict__'] }}",
        "{{ ''|attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_the_sandbox_blocks_attribute_escapes(source):
    assert problems(MessageSpec("text", content=source)) != []
    message = render_error(MessageSpec("text", content=source))
    assert "unsafe" in message or "not allow" in message or "SecurityError" in message


@pytest.mark.parametrize(
    "source",
    ["{% set xs = [1] %}{{ xs.append(2) }}", "{{ {}.update(a=1) }}", "{{ 'x' * 100000 }}", "{{ 9 ** 9999 }}"],
)
def test_the_sandbox_is_immutable_and_bounded(source):
    assert "content" in render_error(MessageSpec("text", content=source))
    assert problems(MessageSpec("text", content=source)) != []


def test_a_render_missing_a_variable_fails_naming_it():
    message = render_error(MessageSpec("text", content="{{ group_name }}"), context={"date": "2026-11-26"})
    assert "group_name" in message and "undefined" in message


def test_a_required_field_that_renders_empty_is_refused_at_send():
    spec = MessageSpec("text", content="{% if group_name %}{{ group_name }}{% endif %}")
    assert problems(spec) == []  # the sample has a group name
    assert "44004" in render_error(spec, context=template_context(datetime(2026, 11, 26, 9, tzinfo=SH)))


# --- msgtype, fields, mentions, links -----------------------------------------------------------
def test_msgtypes_and_paths():
    assert problems(MessageSpec("image", content="x"))[0].field == "msgtype"
    found = problems(MessageSpec("textcard", title="t", content="c", url=URL), paths=(PATH_ROBOT, PATH_APPCHAT))
    assert [p.field for p in found] == ["msgtype"] and "robot" in found[0].en
    assert problems(MessageSpec("text", content="x"), paths=("email",))[0].field == "paths"
    for msgtype in MSGTYPES:
        spec = MessageSpec(msgtype, title="标题", content="内容", url=URL if msgtype in ("textcard", "news") else "")
        paths = [p for p in PATHS if not (msgtype == "textcard" and p == PATH_ROBOT)]
        assert problems(spec, paths=paths) == [], msgtype


def test_paths_as_a_single_string_are_one_path():
    assert problems(MessageSpec("text", content="x"), paths=PATH_ROBOT) == []


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        (MessageSpec("text"), ["content"]),
        (MessageSpec("markdown", title="t", content="  "), ["content"]),
        (MessageSpec("textcard"), ["title", "content", "url"]),
        (MessageSpec("news", content="描述"), ["title", "url"]),
        (MessageSpec("text", content="x", url=URL), ["url"]),
        (MessageSpec("markdown", content="x", btntxt="更多"), ["btntxt"]),
        (MessageSpec("textcard", title="t", content="c", url=URL, picurl=URL), ["picurl"]),
        (MessageSpec("news", title="t", url=URL, btntxt="看"), ["btntxt"]),
    ],
)
def test_required_and_unused_fields(spec, fields):
    assert [p.field for p in problems(spec)] == fields


def test_button_text_is_at_most_four_characters():
    ok = MessageSpec("textcard", title="t", content="c", url=URL, btntxt="查看详情")
    assert problems(ok) == []
    assert render(ok, PATH_APPCHAT, CTX, confidential=False).message.body["btntxt"] == "查看详情"
    found = problems(MessageSpec("textcard", title="t", content="c", url=URL, btntxt="查看全部详情"))
    assert [p.field for p in found] == ["btntxt"] and "6 characters, at most 4" in found[0].en
    found = problems(MessageSpec("textcard", title="t", content="c", url=URL, btntxt="{{ day }}"))
    assert {p.field for p in found} == {"btntxt"} and "not a template" in joined(found)


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "javascript:alert(1)", "example.com/x", "https://", "https://exa mple.com", ""]
)
def test_links_are_http_or_https(url):
    spec = MessageSpec("news", title="t", url=url)
    assert "url" in [p.field for p in problems(spec)]
    assert problems(MessageSpec("news", title="t", url=URL, picurl=url or "x"))[0].field == "picurl"


def test_a_templated_link_is_checked_on_its_rendering():
    good = MessageSpec(
        "textcard", title="t", content="c", url="https://example.com/r/{{ date }}?w={{ this_week.start }}"
    )
    assert problems(good) == []
    assert render(good, PATH_APPCHAT, CTX, confidential=False).message.body["url"] == (
        "https://example.com/r/2026-11-26?w=2026-11-23"
    )
    bad = MessageSpec("textcard", title="t", content="c", url="{{ group_name }}")
    assert "http(s)" in joined(problems(bad))
    assert "http(s)" in render_error(bad)


def test_mentions_go_into_robot_text_only():
    spec = MessageSpec("text", title="值班", content="今天 {{ weekday }}", mention_all=True, mentions=("zhangsan",))
    assert problems(spec, paths=(PATH_ROBOT,)) == []
    out = render(spec, PATH_ROBOT, CTX, confidential=False)
    assert out.message.body == {"content": "【值班】\n今天 星期四", "mentioned_list": ["zhangsan", "@all"]}
    assert out.text.endswith("@zhangsan @@all")
    for paths in ((PATH_APPCHAT,), (PATH_MESSAGE,), (PATH_ROBOT, PATH_APPCHAT)):
        found = problems(spec, paths=paths)
        assert [p.field for p in found] == ["mention_all"] and "robot text only" in found[0].en
    assert [p.field for p in problems(MessageSpec("markdown", content="x", mentions=("a",)), paths=(PATH_ROBOT,))] == [
        "mentions"
    ]
    assert "robot text only" in render_error(spec, path=PATH_APPCHAT)


@pytest.mark.parametrize("bad", ["@all", "", "has space", "x" * 65, "dup"])
def test_mention_userids(bad):
    mentions = ("dup", "DUP") if bad == "dup" else (bad,)
    found = problems(MessageSpec("text", content="x", mentions=mentions), paths=(PATH_ROBOT,))
    assert [p.field for p in found] == ["mentions"]


# --- confidentiality (§14.6) --------------------------------------------------------------------
EXPECTED_SAFE = {
    ("text", PATH_MESSAGE): True,
    ("text", PATH_APPCHAT): True,
    ("text", PATH_ROBOT): False,
    ("markdown", PATH_MESSAGE): False,
    ("markdown", PATH_APPCHAT): False,
    ("markdown", PATH_ROBOT): False,
    ("textcard", PATH_MESSAGE): False,
    ("textcard", PATH_APPCHAT): True,
    ("textcard", PATH_ROBOT): False,
    ("news", PATH_MESSAGE): False,
    ("news", PATH_APPCHAT): False,
    ("news", PATH_ROBOT): False,
}


def test_the_table_has_every_cell_and_matches_the_contract():
    assert {cell: ok for cell, (ok, _zh, _en) in SAFE_SUPPORT.items()} == EXPECTED_SAFE
    for (msgtype, path), (ok, zh, en) in SAFE_SUPPORT.items():
        assert "§14.6" in zh and "§14.6" in en, (msgtype, path)
        if path != PATH_ROBOT:  # the transport agrees on which types carry safe
            assert ok == (msgtype in wmessage.SAFE_TYPES[path]), (msgtype, path)
    assert "40074" in SAFE_SUPPORT[("news", PATH_MESSAGE)][2]
    assert "unconfirmed" in SAFE_SUPPORT[("news", PATH_APPCHAT)][2]
    assert safe_supported("mpnews", PATH_ROBOT)[0] is False and safe_supported("text", PATH_APPCHAT)[0] is True


def _spec(msgtype: str) -> MessageSpec:
    return MessageSpec(msgtype, title="机密", content="内容", url=URL if msgtype in ("textcard", "news") else "")


@pytest.mark.parametrize(("msgtype", "path"), sorted(EXPECTED_SAFE))
def test_each_confidentiality_cell_at_save_and_at_send(msgtype, path):
    spec = _spec(msgtype)
    if msgtype == "textcard" and path == PATH_ROBOT:
        assert "msgtype" in [p.field for p in problems(spec, (path,), confidential=True)]
        return
    assert problems(spec, (path,), confidential=False) == []
    found = problems(spec, (path,), confidential=True)
    plain = render(spec, path, CTX, confidential=False)
    assert plain.safe == 0
    if EXPECTED_SAFE[(msgtype, path)]:
        assert found == []
        out = render(spec, path, CTX, confidential=True)
        assert out.safe == 1 and out.message == plain.message
        wmessage.envelope(path, out.message, out.safe)  # the transport takes it
    else:
        assert [p.field for p in found] == ["confidential"]
        assert SAFE_SUPPORT[(msgtype, path)][2] in found[0].en and SAFE_SUPPORT[(msgtype, path)][1] in found[0].zh
        assert "confidential" in render_error(spec, path=path, confidential=True)


def test_a_confidential_bulletin_is_refused_if_any_path_cannot_honour_it():
    found = problems(_spec("text"), (PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT), confidential=True)
    assert [p.field for p in found] == ["confidential"] and "robot" in found[0].en
    assert problems(_spec("text"), (PATH_APPCHAT, PATH_MESSAGE), confidential=True) == []
    found = problems(_spec("textcard"), (PATH_APPCHAT, PATH_MESSAGE), confidential=True)
    assert len(found) == 1 and "message/send" in found[0].en


# --- sizes (§14.7) ------------------------------------------------------------------------------
def exactly(n: int) -> str:
    """``n`` UTF-8 bytes of mostly three-byte Chinese."""
    return "字" * (n // 3) + "a" * (n % 3)


def size_problems(spec: MessageSpec, path: str = PATH_APPCHAT) -> list[Problem]:
    with pytest.raises(BulletinMessageError) as info:
        render(spec, path, CTX, confidential=False)
    return info.value.problems


@pytest.mark.parametrize("path", PATHS)
def test_text_is_at_most_2048_bytes_on_every_path(path):
    at = exactly(2048)
    assert len(at.encode()) == 2048 and len(at) == 684
    out = render(MessageSpec("text", content=at), path, CTX, confidential=False)
    assert out.message.body["content"] == at  # unchanged
    [p] = size_problems(MessageSpec("text", content=at + "b"), path)
    assert p.field == "text.content" and "2,049 bytes" in p.en and "2,048 bytes" in p.en and "2,049 字节" in p.zh
    assert "truncated" in p.en
    [p] = size_problems(MessageSpec("text", content=exactly(2047) + "字"), path)  # one character, three bytes over
    assert "2,050 bytes" in p.en


def test_the_text_title_counts_toward_the_limit():
    title = "标题"  # 【标题】\n = 3 + 6 + 3 + 1 = 13 bytes
    spec = MessageSpec("text", title=title, content=exactly(2048 - 13))
    body = render(spec, PATH_MESSAGE, CTX, confidential=False).message.body["content"]
    assert body.startswith("【标题】\n") and len(body.encode()) == 2048
    assert size_problems(MessageSpec("text", title=title, content=exactly(2048 - 12)), PATH_MESSAGE)


@pytest.mark.parametrize(("path", "limit"), [(PATH_APPCHAT, 2048), (PATH_MESSAGE, 2048), (PATH_ROBOT, 4096)])
def test_markdown_limit_per_path(path, limit):
    at = MessageSpec("markdown", title="周报", content=exactly(limit - len("**周报**\n".encode())))
    body = render(at, path, CTX, confidential=False).message.body["content"]
    assert len(body.encode()) == limit and body.startswith("**周报**\n")
    [p] = size_problems(MessageSpec("markdown", content=exactly(limit + 1)), path)
    assert p.field == "markdown.content" and f"{limit + 1:,} bytes" in p.en and f"limit of {limit:,}" in p.en


def test_markdown_between_the_limits_fits_the_robot_only():
    spec = MessageSpec("markdown", content=exactly(3000))
    assert render(spec, PATH_ROBOT, CTX, confidential=False)
    found = problems(spec, paths=(PATH_ROBOT, PATH_APPCHAT, PATH_MESSAGE))
    assert [p.field for p in found] == ["markdown.content", "markdown.content"]
    assert "appchat/send" in found[0].en and "message/send" in found[1].en


@pytest.mark.parametrize(
    ("msgtype", "field", "wire", "limit"),
    [
        ("textcard", "title", "textcard.title", 128),
        ("textcard", "content", "textcard.description", 512),
        ("textcard", "url", "textcard.url", 2048),
        ("news", "title", "news.articles[0].title", 128),
        ("news", "content", "news.articles[0].description", 512),
        ("news", "url", "news.articles[0].url", 2048),
    ],
)
@pytest.mark.parametrize("path", [PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT])
def test_card_and_article_field_limits(msgtype, field, wire, limit, path):
    if msgtype == "textcard" and path == PATH_ROBOT:
        return
    base = {"title": "标题", "content": "描述", "url": URL}

    def value(n: int) -> str:
        return URL + "?q=" + "a" * (n - len(URL) - 3) if field == "url" else exactly(n)

    at = MessageSpec(msgtype, **{**base, field: value(limit)})
    assert problems(at, (path,)) == []
    out = render(at, path, CTX, confidential=False)
    body = out.message.body if msgtype == "textcard" else out.message.body["articles"][0]
    key = {"title": "title", "content": "description", "url": "url"}[field]
    assert body[key] == value(limit) and len(body[key].encode()) == limit
    over = MessageSpec(msgtype, **{**base, field: value(limit + 1)})
    [p] = size_problems(over, path)
    assert p.field == wire and f"{limit + 1:,} bytes" in p.en and f"limit of {limit:,} bytes" in p.en
    assert [q.field for q in problems(over, (path,))] == [wire]


def test_every_size_problem_is_reported_at_once():
    spec = MessageSpec("textcard", title=exactly(129), content=exactly(513), url=URL)
    assert [p.field for p in size_problems(spec)] == ["textcard.title", "textcard.description"]


def test_the_trial_render_at_save_uses_a_long_group_name():
    # 13 group names of 50 characters are 1,950 bytes: fine; 14 are 2,100: over.
    fits = MessageSpec("text", content="{% for i in range(13) %}{{ group_name }}{% endfor %}")
    assert problems(fits) == []
    over = MessageSpec("text", content="{% for i in range(14) %}{{ group_name }}{% endfor %}")
    [p] = problems(over)
    assert p.field == "text.content" and "trial render" in p.en and "2,100 bytes" in p.en
    # the real group name decides at send time
    assert render(over, PATH_APPCHAT, CTX, confidential=False).message.body["content"] == "研发一群" * 14


def test_the_sample_context_is_the_longest_shape():
    sample = bm.sample_context()
    assert len(sample["group_name"]) == 50 and len(sample["bulletin_name"]) == 64
    assert sample["weekday_en"] == "Wednesday" and sample["this_week"].label == "2026年12月28日—2027年1月3日"


# --- layout -------------------------------------------------------------------------------------
def test_layout_of_each_msgtype():
    text = render(MessageSpec("text", content="正文"), PATH_APPCHAT, CTX, confidential=False)
    assert text.message == wmessage.text("正文") and text.text == "正文" and text.msgtype == "text"
    titled = render(MessageSpec("text", title="{{ 本周 }}周报", content="正文"), PATH_MESSAGE, CTX, confidential=False)
    assert titled.message.body == {"content": "【11月23日—11月29日周报】\n正文"} and titled.path == PATH_MESSAGE
    md = render(MessageSpec("markdown", title="周报", content="> 引用"), PATH_ROBOT, CTX, confidential=False)
    assert md.message.payload() == {"msgtype": "markdown", "markdown": {"content": "**周报**\n> 引用"}}
    card = render(
        MessageSpec("textcard", title="{{ group_name }}", content="<div>{{ date_zh }}</div>", url=URL),
        PATH_APPCHAT,
        CTX,
        confidential=False,
    )
    assert card.message.payload() == {
        "msgtype": "textcard",
        "textcard": {"title": "研发一群", "description": "<div>2026年11月26日</div>", "url": URL},
    }
    assert card.text == f"【研发一群】\n<div>2026年11月26日</div>\n详情: {URL}"
    news = render(
        MessageSpec("news", title="{{ 上月 }}报表", content="详见", url=URL, picurl="https://example.com/p.png"),
        PATH_ROBOT,
        CTX,
        confidential=False,
    )
    assert news.message.payload() == {
        "msgtype": "news",
        "news": {
            "articles": [
                {"title": "2026年10月报表", "description": "详见", "url": URL, "picurl": "https://example.com/p.png"}
            ]
        },
    }
    assert news.text == f"【2026年10月报表】\n详见\n{URL}"
    bare = render(MessageSpec("news", title="t", url=URL), PATH_MESSAGE, CTX, confidential=False)
    assert bare.message.body == {"articles": [{"title": "t", "url": URL}]}


def test_rendering_strips_surrounding_whitespace_only():
    spec = MessageSpec("text", content="\n  {% if true %}\n第一行\n  第二行\n{% endif %}\n")
    assert render(spec, PATH_APPCHAT, CTX, confidential=False).message.body["content"] == "第一行\n  第二行"


def test_an_unknown_path_or_msgtype_is_refused_at_send():
    assert "paths" in render_error(MessageSpec("text", content="x"), path="email")
    assert "msgtype" in render_error(MessageSpec("image", content="x"))
    assert "msgtype" in render_error(MessageSpec("textcard", title="t", content="c", url=URL), path=PATH_ROBOT)
