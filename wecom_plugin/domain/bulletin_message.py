"""The message of a bulletin (通报): its templates, what it may be sent as, and its rendering. Pure.

A bulletin's message is a :class:`MessageSpec` document: a ``msgtype`` (text, markdown, textcard or news)
and Jinja2 templates for its title and content (and the link of a card or article). Templates run in
Jinja2's immutable sandbox with strict undefined variables, over the context :func:`template_context`
builds for one occurrence (its date, the weekday in Chinese, the group's name, period ranges such as
本周 or 上月); :data:`VARIABLES` lists every variable.

Two moments:

* **Save** — :func:`check_definition` answers every problem decidable without the occurrence: msgtype
  × path support, template syntax, unknown variables and attributes, mentions, links, the button text,
  confidentiality (:data:`SAFE_SUPPORT`), and a trial render with sample values whose size problems are
  reported too.
* **Send** — :func:`render` renders for one path and checks the rendered fields against WeCom's size
  limits (UTF-8 bytes, per path, contract §14.7). Nothing is ever truncated: a message that is too
  large is an error naming the field, its size and the limit.

WeCom's facts encoded here (``/work/shared/wecom-api.md``):

* §3.4, §4, §5, §14.6 — paths and msgtypes: text, markdown and news everywhere; textcard on
  ``appchat/send`` and ``message/send`` only (the robot webhook does not take it).
* §14.6 — ``safe`` (confidential: no sharing, watermark): see :data:`SAFE_SUPPORT`. The robot webhook has
  no ``safe`` at all; cells the contract leaves unconfirmed count as unsupported.
* §14.7 — text.content ≤2,048 B on every path; markdown.content ≤2,048 B on ``message/send`` (and, assumed,
  ``appchat/send``), ≤4,096 B on the robot; textcard and news: title ≤128 B, description ≤512 B,
  url ≤2,048 B; textcard btntxt ≤4 characters (default 详情). WeCom truncates some of these silently
  (``message/send`` text, card fields); we refuse instead.
* §5 — ``mentioned_list`` (userids, ``"@all"``) exists on robot text only.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from wecom_plugin.wecom.api import message as wmessage
from wecom_plugin.wecom.api import robot as wrobot
from wecom_plugin.wecom.api.message import Article, Message

PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT = "appchat", "message", "robot"
PATHS = (PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT)
MSGTYPES = ("text", "markdown", "textcard", "news")

#: Path → the msgtypes of ours it accepts (§3.4, §4, §5): the transport's lists cut to our four.
SUPPORTED: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        PATH_APPCHAT: frozenset(MSGTYPES) & wmessage.MSGTYPES[wmessage.APPCHAT],
        PATH_MESSAGE: frozenset(MSGTYPES) & wmessage.MSGTYPES[wmessage.MESSAGE],
        PATH_ROBOT: frozenset(MSGTYPES) & wrobot.MSGTYPES,
    }
)
_PATH_NAMES = {PATH_APPCHAT: "appchat/send", PATH_MESSAGE: "message/send", PATH_ROBOT: "webhook/send (robot)"}

# --- size limits (§14.7), UTF-8 bytes unless said otherwise -------------------------------------
TEXT_MAX_BYTES = 2048
MARKDOWN_MAX_BYTES: Mapping[str, int] = MappingProxyType({PATH_APPCHAT: 2048, PATH_MESSAGE: 2048, PATH_ROBOT: 4096})
TITLE_MAX_BYTES = 128  # textcard title, news article title
DESCRIPTION_MAX_BYTES = 512  # textcard description, news article description
URL_MAX_BYTES = 2048  # textcard url, news article url
BTNTXT_MAX_CHARS = 4  # textcard button text, in characters
USERID_MAX_BYTES = 64  # a WeCom userid is 1-64 bytes (§0)
MAX_RENDER_CHARS = 100_000  # a render producing more than this is stopped (far above every limit)
MAX_REPEAT = 10_000  # sandbox: "x" * n and n ** m are bounded (no memory bombs)

_TEMPLATE_FIELDS = ("title", "content", "url")


# --- problems -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with a bulletin's message: the ``field`` it concerns, in Chinese and English."""

    field: str
    zh: str
    en: str

    def text(self) -> str:
        return f"{self.zh} / {self.en}"


class BulletinMessageError(ValueError):
    """The message cannot be saved, rendered or sent as it is; ``problems`` says why."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(f"{p.field}: {p.text()}" for p in self.problems))


# --- the spec -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageSpec:
    """What a bulletin sends, as stored (``Bulletin.message``): templates, not text.

    ``title`` and ``content`` (and ``url``) are Jinja2 templates. ``url``: the link of a textcard or a
    news article (required for both), http(s) only. ``btntxt``: the textcard button, at most 4
    characters (WeCom's default 详情). ``picurl``: a news article's picture, http(s), optional.
    ``mention_all`` and ``mentions`` (userids): robot text only.
    """

    msgtype: str
    title: str = ""
    content: str = ""
    url: str = ""
    btntxt: str = ""
    picurl: str = ""
    mention_all: bool = False
    mentions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.mentions, tuple):
            object.__setattr__(self, "mentions", tuple(self.mentions))

    def to_doc(self) -> dict[str, Any]:
        """A JSON document; :meth:`from_doc` reads it back."""
        return {
            "msgtype": self.msgtype,
            "title": self.title,
            "content": self.content,
            "url": self.url,
            "btntxt": self.btntxt,
            "picurl": self.picurl,
            "mention_all": self.mention_all,
            "mentions": list(self.mentions),
        }

    @classmethod
    def from_doc(cls, doc: Any) -> MessageSpec:
        """Read a document; :class:`BulletinMessageError` on unknown keys or wrong types (not on rules:
        :func:`check_definition` decides those)."""
        if not isinstance(doc, Mapping):
            raise BulletinMessageError([Problem("message", "消息必须是一个对象", "the message must be an object")])
        problems: list[Problem] = []
        known = {f.name for f in fields(cls)}
        for key in doc:
            if key not in known:
                problems.append(
                    Problem(str(key), f"未知字段 {key!r}", f"unknown key {key!r} (known: {', '.join(sorted(known))})")
                )
        if not isinstance(doc.get("msgtype"), str):
            problems.append(Problem("msgtype", "msgtype 必须是字符串", "msgtype is required and must be a string"))
        for key in ("title", "content", "url", "btntxt", "picurl"):
            if key in doc and not isinstance(doc[key], str):
                problems.append(Problem(key, f"{key} 必须是字符串", f"{key} must be a string"))
        if "mention_all" in doc and not isinstance(doc["mention_all"], bool):
            problems.append(Problem("mention_all", "mention_all 必须是布尔值", "mention_all must be true or false"))
        mentions = doc.get("mentions", [])
        if not isinstance(mentions, list | tuple) or not all(isinstance(m, str) for m in mentions):
            problems.append(Problem("mentions", "mentions 必须是字符串列表", "mentions must be a list of strings"))
        if problems:
            raise BulletinMessageError(problems)
        return cls(**{k: (tuple(v) if k == "mentions" else v) for k, v in doc.items()})


# --- confidentiality (§14.6) --------------------------------------------------------------------
_ROBOT_NO_SAFE = (
    "群机器人没有 safe 字段，无法保密（契约 §14.6：robot webhook 无 safe [doc 99110]）",
    "the robot webhook cannot mark a message confidential "
    "(contract §14.6: 'The robot webhook has no `safe` field at all' [doc 99110])",
)

#: (msgtype, path) → (can honour ``safe=1``, reason in Chinese, reason in English, citing the contract).
SAFE_SUPPORT: Mapping[tuple[str, str], tuple[bool, str, str]] = MappingProxyType(
    {
        ("text", PATH_MESSAGE): (
            True,
            "message/send 的 text 支持 safe 0/1（契约 §14.6 text 行：safe 0/1 [doc via sdk]）",
            "text on message/send takes safe 0/1 (contract §14.6, row text: 'safe 0/1 [doc via sdk]')",
        ),
        ("text", PATH_APPCHAT): (
            True,
            "appchat/send 的 text 支持 safe 0/1（契约 §3.4 与 §14.6 text 行 [doc]）",
            "text on appchat/send takes safe 0/1 (contract §3.4 and §14.6, row text: 'safe 0/1 [doc]')",
        ),
        ("text", PATH_ROBOT): (False, *_ROBOT_NO_SAFE),
        ("markdown", PATH_MESSAGE): (
            False,
            "message/send 的 markdown 不支持 safe，带 safe 会报错（契约 §14.6 markdown 行 [obs go-workwx]）",
            "markdown on message/send takes no safe and sending it errors "
            "(contract §14.6, row markdown: 'no safe; sending safe errors [obs]')",
        ),
        ("markdown", PATH_APPCHAT): (
            False,
            "appchat/send 的 markdown 不支持 safe（契约 §14.6 markdown 行：no safe [sdk]）",
            "markdown on appchat/send takes no safe (contract §14.6, row markdown: 'no safe [sdk]')",
        ),
        ("markdown", PATH_ROBOT): (False, *_ROBOT_NO_SAFE),
        ("textcard", PATH_MESSAGE): (
            False,
            "message/send 的 textcard 没有 safe 参数（契约 §14.6 textcard 行：no safe param [sdk]）",
            "textcard on message/send has no safe parameter (contract §14.6, row textcard: 'no safe param [sdk]')",
        ),
        ("textcard", PATH_APPCHAT): (
            True,
            "appchat/send 的 textcard 支持 safe 0/1（契约 §14.6 textcard 行 [sdk; doc example §3.4]）",
            "textcard on appchat/send takes safe 0/1 "
            "(contract §14.6, row textcard: 'safe 0/1 [sdk; doc example §3.4]')",
        ),
        ("textcard", PATH_ROBOT): (
            False,
            "群机器人不支持 textcard，也没有 safe 字段（契约 §14.6 textcard 行：robot no）",
            "the robot webhook takes no textcard and has no safe field (contract §14.6, row textcard: robot 'no')",
        ),
        ("news", PATH_MESSAGE): (
            False,
            "message/send 的 news 不支持保密（契约 §4、§14.6：40074 news消息不支持保密消息类型 [doc 90313]）",
            "news on message/send cannot be confidential "
            "(contract §4, §14.6: '40074 news消息不支持保密消息类型' [doc 90313])",
        ),
        ("news", PATH_APPCHAT): (
            False,
            "appchat/send 的 news 是否支持 safe 未经证实，按不支持处理"
            "（契约 §14.6 news 行：[unconfirmed]，与 40074 矛盾）",
            "safe for news on appchat/send is unconfirmed and treated as unsupported "
            "(contract §14.6, row news: 'one SDK types safe 0/1, contradicts 40074 [unconfirmed]')",
        ),
        ("news", PATH_ROBOT): (False, *_ROBOT_NO_SAFE),
    }
)


def safe_supported(msgtype: str, path: str) -> tuple[bool, str, str]:
    """Whether ``msgtype`` sent by ``path`` can honour ``safe=1``, with the contract's reason."""
    try:
        return SAFE_SUPPORT[(msgtype, path)]
    except KeyError:
        return (
            False,
            f"契约未列出 {msgtype} × {path}，按不支持处理",
            f"the contract has no cell for {msgtype} × {path}; treated as unsupported",
        )


# --- template variables -------------------------------------------------------------------------
WEEKDAYS_ZH = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")
WEEKDAYS_SHORT_ZH = ("周一", "周二", "周三", "周四", "周五", "周六", "周日")
WEEKDAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_QUARTERS_ZH = ("一", "二", "三", "四")


@dataclass(frozen=True)
class Period:
    """A date range in a template: ``{{ last_month.label }}`` → 2026年10月.

    ``start``/``end``: ISO dates, both inclusive; ``start_zh``/``end_zh``: 2026年10月1日; ``label``: the
    range as people write it; ``name``: 上月. ``{{ last_month }}`` alone renders the label.
    """

    name: str
    start: str
    end: str
    start_zh: str
    end_zh: str
    label: str

    def __str__(self) -> str:
        return self.label


PERIOD_ATTRS = ("name", "start", "end", "start_zh", "end_zh", "label")

#: ASCII period variable → its Chinese alias (also a variable: Jinja2 accepts Chinese identifiers).
PERIOD_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "yesterday": "昨天",
        "today": "今天",
        "tomorrow": "明天",
        "this_week": "本周",
        "last_week": "上周",
        "next_week": "下周",
        "this_month": "本月",
        "last_month": "上月",
        "next_month": "下月",
        "this_quarter": "本季度",
        "last_quarter": "上季度",
        "next_quarter": "下季度",
        "this_year": "今年",
        "last_year": "去年",
        "next_year": "明年",
    }
)

_PERIOD_DOCS = {
    "yesterday": ("昨天（单日）", "yesterday (one day)"),
    "today": ("今天（单日）", "today (one day)"),
    "tomorrow": ("明天（单日）", "tomorrow (one day)"),
    "this_week": ("本周，周一至周日，如 11月23日—11月29日", "this week, Monday to Sunday, e.g. 11月23日—11月29日"),
    "last_week": ("上周，周一至周日", "last week, Monday to Sunday"),
    "next_week": ("下周，周一至周日", "next week, Monday to Sunday"),
    "this_month": ("本月，如 2026年11月", "this month, e.g. 2026年11月"),
    "last_month": ("上月，如 2026年10月", "last month, e.g. 2026年10月"),
    "next_month": ("下月", "next month"),
    "this_quarter": ("本季度，如 2026年第四季度", "this quarter, e.g. 2026年第四季度"),
    "last_quarter": ("上季度", "last quarter"),
    "next_quarter": ("下季度", "next quarter"),
    "this_year": ("今年，如 2026年", "this year, e.g. 2026年"),
    "last_year": ("去年", "last year"),
    "next_year": ("明年", "next year"),
}
_PERIOD_SUFFIX = (
    "；属性 .start .end（ISO 日期）、.start_zh .end_zh、.label、.name",
    "; attributes .start .end (ISO dates), .start_zh .end_zh, .label, .name",
)


def _variables() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {
        "date": ("日期，如 2026-11-26", "the date, e.g. 2026-11-26"),
        "date_zh": ("日期，如 2026年11月26日", "the date in Chinese, e.g. 2026年11月26日"),
        "time": ("计划发送时间，如 09:00", "the scheduled time, e.g. 09:00"),
        "weekday": ("星期，如 星期四", "the weekday in Chinese, e.g. 星期四"),
        "weekday_short": ("星期简称，如 周四", "the short Chinese weekday, e.g. 周四"),
        "weekday_en": ("英文星期，如 Thursday", "the weekday in English, e.g. Thursday"),
        "year": ("年（数字），如 2026", "the year (a number), e.g. 2026"),
        "quarter": ("季度（数字 1-4）", "the quarter (a number, 1-4)"),
        "month": ("月（数字 1-12）", "the month (a number, 1-12)"),
        "day": ("日（数字 1-31）", "the day of the month (a number, 1-31)"),
        "group_name": ("群名（发到群时）", "the group's name (when sent to a group)"),
        "bulletin_name": ("通报名称", "the bulletin's name"),
    }
    for ascii_name, zh_name in PERIOD_ALIASES.items():
        zh, en = _PERIOD_DOCS[ascii_name]
        out[ascii_name] = (zh + _PERIOD_SUFFIX[0], en + _PERIOD_SUFFIX[1])
        out[zh_name] = (f"同 {ascii_name}", f"same as {ascii_name}")
    return out


#: Every template variable → (Chinese, English) description.
VARIABLES: Mapping[str, tuple[str, str]] = MappingProxyType(_variables())


def _zh(d: date, year: bool = True) -> str:
    return f"{d.year}年{d.month}月{d.day}日" if year else f"{d.month}月{d.day}日"


def _month_end(d: date) -> date:
    return (d.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def _quarter_start(d: date) -> date:
    return date(d.year, 3 * ((d.month - 1) // 3) + 1, 1)


def _period(name: str, start: date, end: date, label: str) -> Period:
    return Period(name, start.isoformat(), end.isoformat(), _zh(start), _zh(end), label)


def _day(name: str, d: date) -> Period:
    return _period(name, d, d, _zh(d))


def _week(name: str, monday: date) -> Period:
    sunday = monday + timedelta(days=6)
    with_year = monday.year != sunday.year
    return _period(name, monday, sunday, f"{_zh(monday, with_year)}—{_zh(sunday, with_year)}")


def _month(name: str, first: date) -> Period:
    return _period(name, first, _month_end(first), f"{first.year}年{first.month}月")


def _quarter(name: str, first: date) -> Period:
    last = _month_end(date(first.year, first.month + 2, 1))
    return _period(name, first, last, f"{first.year}年第{_QUARTERS_ZH[(first.month - 1) // 3]}季度")


def _year(name: str, year: int) -> Period:
    return _period(name, date(year, 1, 1), date(year, 12, 31), f"{year}年")


def _periods(d: date) -> dict[str, Period]:
    monday = d - timedelta(days=d.weekday())
    month = d.replace(day=1)
    quarter = _quarter_start(d)
    names = PERIOD_ALIASES
    return {
        "yesterday": _day(names["yesterday"], d - timedelta(days=1)),
        "today": _day(names["today"], d),
        "tomorrow": _day(names["tomorrow"], d + timedelta(days=1)),
        "this_week": _week(names["this_week"], monday),
        "last_week": _week(names["last_week"], monday - timedelta(days=7)),
        "next_week": _week(names["next_week"], monday + timedelta(days=7)),
        "this_month": _month(names["this_month"], month),
        "last_month": _month(names["last_month"], (month - timedelta(days=1)).replace(day=1)),
        "next_month": _month(names["next_month"], _month_end(month) + timedelta(days=1)),
        "this_quarter": _quarter(names["this_quarter"], quarter),
        "last_quarter": _quarter(names["last_quarter"], _quarter_start(quarter - timedelta(days=1))),
        "next_quarter": _quarter(
            names["next_quarter"], _month_end(date(quarter.year, quarter.month + 2, 1)) + timedelta(days=1)
        ),
        "this_year": _year(names["this_year"], d.year),
        "last_year": _year(names["last_year"], d.year - 1),
        "next_year": _year(names["next_year"], d.year + 1),
    }


def template_context(local: datetime, *, group_name: str = "", bulletin_name: str = "") -> dict[str, Any]:
    """The variables of one occurrence. ``local``: its scheduled time, aware, in the bulletin's zone.

    Weeks start on Monday; every period is whole days, both ends inclusive. Each period variable has a
    Chinese alias of the same value (``本周`` is ``this_week``). See :data:`VARIABLES`.
    """
    if local.tzinfo is None or local.utcoffset() is None:
        raise ValueError("template_context needs an aware datetime in the bulletin's time zone")
    d = local.date()
    ctx: dict[str, Any] = {
        "date": d.isoformat(),
        "date_zh": _zh(d),
        "time": local.strftime("%H:%M"),
        "weekday": WEEKDAYS_ZH[d.weekday()],
        "weekday_short": WEEKDAYS_SHORT_ZH[d.weekday()],
        "weekday_en": WEEKDAYS_EN[d.weekday()],
        "year": d.year,
        "quarter": (d.month - 1) // 3 + 1,
        "month": d.month,
        "day": d.day,
        "group_name": group_name,
        "bulletin_name": bulletin_name,
    }
    for ascii_name, period in _periods(d).items():
        ctx[ascii_name] = period
        ctx[PERIOD_ALIASES[ascii_name]] = period
    return ctx


#: The trial render at save time uses the longest values a real occurrence can have: a 50-character
#: group name (an app chat's name is at most 50 characters, §3.1), a 64-character bulletin name (the
#: column's size), and 2026-12-30, a Wednesday (the longest English weekday) whose week spans two years
#: (the longest week label) in December (two-digit months).
SAMPLE_GROUP_NAME = "群" * 50
SAMPLE_BULLETIN_NAME = "通" * 64


def sample_context() -> dict[str, Any]:
    """The context of the save-time trial render (see :data:`SAMPLE_GROUP_NAME`)."""
    local = datetime(2026, 12, 30, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    return template_context(local, group_name=SAMPLE_GROUP_NAME, bulletin_name=SAMPLE_BULLETIN_NAME)


# --- the sandbox --------------------------------------------------------------------------------
class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, strict about undefined names, with bounded ``*`` and ``**``."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > 64:
                raise ValueError(f"exponent {right} is too large (sandbox)")
            return left**right
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > MAX_REPEAT:
                raise ValueError(f"repeating a sequence to more than {MAX_REPEAT} items (sandbox)")
        return left * right


@functools.cache
def _env() -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.globals.pop("lipsum", None)  # generates filler text: no use in a bulletin
    return env


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> Any:
    return _env().from_string(source)


# --- save-time checks ---------------------------------------------------------------------------
def _utf8(value: str) -> int:
    return len(value.encode("utf-8"))


def _has_template_syntax(source: str) -> bool:
    return any(mark in source for mark in ("{{", "{%", "{#"))


def _template_problems(field_name: str, source: str, known: Mapping[str, Any]) -> list[Problem]:
    """Syntax, unknown variables, unknown or unsafe attributes of known variables."""
    env = _env()
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return [
            Problem(
                field_name,
                f"模板语法错误（第 {exc.lineno} 行）：{exc.message}",
                f"template syntax error (line {exc.lineno}): {exc.message}",
            )
        ]
    problems: list[Problem] = []
    undeclared = meta.find_undeclared_variables(ast)
    for name in sorted(undeclared):
        if name in known or name in env.globals:
            continue
        close = difflib.get_close_matches(name, list(known), n=1)
        hint_zh = f"，是否想用 {close[0]}？" if close else ""
        hint_en = f"; did you mean {close[0]}?" if close else ""
        problems.append(
            Problem(field_name, f"未知变量 {name}{hint_zh}", f"unknown variable {name}{hint_en} (see VARIABLES)")
        )
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            attr: Any = node.attr
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            attr = node.arg.value
        else:
            continue
        if attr.startswith("_"):
            problems.append(
                Problem(field_name, f"沙箱不允许访问属性 {attr}", f"the sandbox does not allow attribute {attr}")
            )
            continue
        target = node.node
        if isinstance(target, nodes.Name) and target.name in undeclared and target.name in known:
            value = known[target.name]
            if not hasattr(value, attr):
                extra = f" ({', '.join(PERIOD_ATTRS)})" if isinstance(value, Period) else ""
                problems.append(
                    Problem(
                        field_name,
                        f"变量 {target.name} 没有属性 {attr}{extra}",
                        f"variable {target.name} has no attribute {attr}{extra}",
                    )
                )
    return problems


def _url_problems(field_name: str, value: str, *, rendered: bool) -> list[Problem]:
    where = ("渲染后的", "rendered ") if rendered else ("", "")
    parts = urlsplit(value) if not any(c.isspace() or ord(c) < 32 for c in value) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return [
            Problem(
                field_name,
                f"{where[0]}{field_name} 必须是 http(s) 链接：{value[:80]!r}",
                f"the {where[1]}{field_name} must be an http(s) link: {value[:80]!r}",
            )
        ]
    return []


def _mention_problems(spec: MessageSpec, paths: Collection[str]) -> list[Problem]:
    problems: list[Problem] = []
    if not (spec.mention_all or spec.mentions):
        return problems
    field_name = "mention_all" if spec.mention_all else "mentions"
    if spec.msgtype != "text" or any(p != PATH_ROBOT for p in paths):
        problems.append(
            Problem(
                field_name,
                "@ 提醒（含 @所有人）只用于发到群机器人的 text 消息（契约 §5 mentioned_list）",
                "mentions (@all included) work in robot text only (contract §5: mentioned_list); "
                f"this bulletin is {spec.msgtype} to {', '.join(paths) or 'no path'}",
            )
        )
    seen: set[str] = set()
    for userid in spec.mentions:
        if userid.strip().lower() == "@all":
            problems.append(Problem("mentions", "@所有人 请用 mention_all", "use mention_all for @all"))
        elif not userid or _utf8(userid) > USERID_MAX_BYTES or any(c.isspace() for c in userid):
            problems.append(
                Problem("mentions", f"不是有效的 userid：{userid!r}", f"not a valid userid (1-64 bytes): {userid!r}")
            )
        elif userid.lower() in seen:
            problems.append(Problem("mentions", f"重复的 userid：{userid}", f"duplicate userid: {userid}"))
        seen.add(userid.lower())
    return problems


def _field_rules(spec: MessageSpec) -> list[Problem]:
    """Which fields each msgtype needs and takes."""
    problems: list[Problem] = []
    needs = {
        "text": ("content",),
        "markdown": ("content",),
        "textcard": ("title", "content", "url"),
        "news": ("title", "url"),
    }[spec.msgtype]
    takes = {
        "text": ("title", "content"),
        "markdown": ("title", "content"),
        "textcard": ("title", "content", "url", "btntxt"),
        "news": ("title", "content", "url", "picurl"),
    }
    for name in needs:
        if not getattr(spec, name).strip():
            problems.append(Problem(name, f"{spec.msgtype} 必须有 {name}", f"{spec.msgtype} needs a {name}"))
    for name in ("url", "btntxt", "picurl"):
        if getattr(spec, name) and name not in takes[spec.msgtype]:
            problems.append(
                Problem(name, f"{spec.msgtype} 消息不使用 {name}", f"{name} is not used by a {spec.msgtype} message")
            )
    if spec.btntxt and len(spec.btntxt) > BTNTXT_MAX_CHARS:
        problems.append(
            Problem(
                "btntxt",
                f"按钮文字 {len(spec.btntxt)} 个字，最多 {BTNTXT_MAX_CHARS} 个（契约 §14.7）",
                f"the button text is {len(spec.btntxt)} characters, at most {BTNTXT_MAX_CHARS} (contract §14.7)",
            )
        )
    if spec.btntxt and _has_template_syntax(spec.btntxt):
        problems.append(Problem("btntxt", "按钮文字不是模板", "the button text is not a template"))
    if spec.picurl:
        problems += _url_problems("picurl", spec.picurl, rendered=False)
    if spec.url and not _has_template_syntax(spec.url):
        problems += _url_problems("url", spec.url, rendered=False)
    return problems


def _static_problems(spec: MessageSpec, paths: Collection[str], confidential: bool) -> list[Problem]:
    """Everything decidable without rendering, except unknown variables."""
    problems: list[Problem] = []
    for path in paths:
        if path not in PATHS:
            problems.append(
                Problem("paths", f"未知发送途径 {path!r}", f"unknown path {path!r} (one of {', '.join(PATHS)})")
            )
    if spec.msgtype not in MSGTYPES:
        problems.append(
            Problem("msgtype", f"不支持的消息类型 {spec.msgtype!r}", f"msgtype must be one of {', '.join(MSGTYPES)}")
        )
        return problems
    for path in paths:
        if path in PATHS and spec.msgtype not in SUPPORTED[path]:
            problems.append(
                Problem(
                    "msgtype",
                    f"{_PATH_NAMES[path]} 不支持 {spec.msgtype}（契约 §14.6）",
                    f"{_PATH_NAMES[path]} does not take {spec.msgtype} (contract §14.6)",
                )
            )
    problems += _field_rules(spec)
    problems += _mention_problems(spec, paths)
    if confidential:
        for path in paths:
            if path in PATHS:
                ok, zh, en = safe_supported(spec.msgtype, path)
                if not ok:
                    problems.append(
                        Problem(
                            "confidential",
                            f"保密通报无法经 {path} 发送：{zh}",
                            f"a confidential bulletin cannot go by {path}: {en}",
                        )
                    )
    return problems


def check_definition(spec: MessageSpec, paths: Collection[str], *, confidential: bool) -> list[Problem]:
    """Every problem decidable when the bulletin is saved, for the ``paths`` it will be sent by.

    Empty list: fine. The size check is a trial render with :func:`sample_context`; :func:`render`
    checks sizes again on the real text at send time.
    """
    paths = (paths,) if isinstance(paths, str) else tuple(dict.fromkeys(paths))
    problems = _static_problems(spec, paths, confidential)
    sample = sample_context()
    templates_ok = True
    for name in _TEMPLATE_FIELDS:
        source = getattr(spec, name)
        if source:
            found = _template_problems(name, source, sample)
            templates_ok = templates_ok and not found
            problems += found
    if templates_ok and spec.msgtype in MSGTYPES:
        flagged = {p.field for p in problems}  # a field already refused is not reported again by the trial
        seen: set[tuple[str, str, str]] = set()
        for path in paths:
            if path not in PATHS or spec.msgtype not in SUPPORTED[path]:
                continue
            try:
                _render(spec, path, sample)
            except BulletinMessageError as exc:
                for p in exc.problems:
                    trial = Problem(
                        p.field,
                        f"试渲染（样例数据，见 sample_context）：{p.zh}",
                        f"trial render with sample values (see sample_context): {p.en}",
                    )
                    if trial.field not in flagged and (trial.field, trial.zh, trial.en) not in seen:
                        seen.add((trial.field, trial.zh, trial.en))
                        problems.append(trial)
    return problems


# --- rendering ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rendered:
    """A message ready for its path: ``message`` for ``appchat.send``/``message.send`` (with ``safe``)
    or ``robot.send``; ``text`` is a plain rendering for previews."""

    path: str
    msgtype: str
    message: Message
    safe: int
    text: str


def _render_template(field_name: str, source: str, context: Mapping[str, Any]) -> str:
    if not source:
        return ""
    try:
        template = _compile(source)
        out: list[str] = []
        size = 0
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise BulletinMessageError(
                    [
                        Problem(
                            field_name,
                            f"渲染结果超过 {MAX_RENDER_CHARS:,} 个字符",
                            f"renders to more than {MAX_RENDER_CHARS:,} characters",
                        )
                    ]
                )
            out.append(chunk)
    except BulletinMessageError:
        raise
    except TemplateSyntaxError as exc:
        raise BulletinMessageError(
            [
                Problem(
                    field_name,
                    f"模板语法错误（第 {exc.lineno} 行）：{exc.message}",
                    f"template syntax error (line {exc.lineno}): {exc.message}",
                )
            ]
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any template failure (undefined, sandbox, arithmetic) is the template's
        raise BulletinMessageError(
            [
                Problem(
                    field_name,
                    f"模板渲染失败：{type(exc).__name__}: {exc}",
                    f"the template failed to render: {type(exc).__name__}: {exc}",
                )
            ]
        ) from exc
    return "".join(out).strip()


def _size_problem(field_name: str, value: str, limit: int, path: str) -> Problem | None:
    size = _utf8(value)
    if size <= limit:
        return None
    return Problem(
        field_name,
        f"{field_name} 为 {size:,} 字节，超过 {_PATH_NAMES[path]} 的上限 {limit:,} 字节（UTF-8，契约 §14.7），不会截断",
        f"{field_name} is {size:,} bytes, over the limit of {limit:,} bytes on {_PATH_NAMES[path]} "
        "(UTF-8, contract §14.7); nothing is truncated",
    )


def _empty(field_name: str, code: str) -> Problem:
    return Problem(field_name, f"渲染结果为空（WeCom 会拒绝：{code}）", f"renders empty (WeCom refuses it: {code})")


def _render(spec: MessageSpec, path: str, context: Mapping[str, Any]) -> Rendered:
    """Render for ``path`` and check the rendered sizes; ``safe`` is decided by the caller."""
    problems: list[Problem] = []
    rendered: dict[str, str] = {}
    for name in _TEMPLATE_FIELDS:
        try:
            rendered[name] = _render_template(name, getattr(spec, name), context)
        except BulletinMessageError as exc:
            problems += exc.problems
    if problems:
        raise BulletinMessageError(problems)
    title, content, url = rendered["title"], rendered["content"], rendered["url"]

    def check(field_name: str, value: str, limit: int) -> None:
        found = _size_problem(field_name, value, limit, path)
        if found:
            problems.append(found)

    msgtype = spec.msgtype
    if msgtype in ("text", "markdown"):
        if not content:
            problems.append(_empty("content", "44004"))
        if msgtype == "text":
            body = f"【{title}】\n{content}" if title else content
            check("text.content", body, TEXT_MAX_BYTES)
            mentioned = [*spec.mentions, "@all"] if spec.mention_all else list(spec.mentions)
            if path == PATH_ROBOT:
                message = wrobot.text(body, mentioned_list=mentioned)
            else:
                message = wmessage.text(body)
            preview = body + ("\n" + " ".join(f"@{m}" for m in mentioned) if mentioned else "")
        else:
            body = f"**{title}**\n{content}" if title else content
            check("markdown.content", body, MARKDOWN_MAX_BYTES[path])
            message = wrobot.markdown(body) if path == PATH_ROBOT else wmessage.markdown(body)
            preview = body
    elif msgtype == "textcard":
        if not title:
            problems.append(_empty("title", "41016"))
        if not content:
            problems.append(_empty("content", "41033"))
        check("textcard.title", title, TITLE_MAX_BYTES)
        check("textcard.description", content, DESCRIPTION_MAX_BYTES)
        check("textcard.url", url, URL_MAX_BYTES)
        problems += _url_problems("url", url, rendered=True)
        message = wmessage.textcard(title, content, url, spec.btntxt or None)
        preview = f"【{title}】\n{content}\n{spec.btntxt or '详情'}: {url}"
    else:  # news
        if not title:
            problems.append(_empty("title", "41016"))
        check("news.articles[0].title", title, TITLE_MAX_BYTES)
        check("news.articles[0].description", content, DESCRIPTION_MAX_BYTES)
        check("news.articles[0].url", url, URL_MAX_BYTES)
        problems += _url_problems("url", url, rendered=True)
        article = Article(title, content or None, url, spec.picurl or None)
        message = wrobot.news([article]) if path == PATH_ROBOT else wmessage.news([article])
        preview = "\n".join(x for x in (f"【{title}】", content, url) if x)
    if problems:
        raise BulletinMessageError(problems)
    return Rendered(path=path, msgtype=msgtype, message=message, safe=0, text=preview)


def render(spec: MessageSpec, path: str, context: Mapping[str, Any], *, confidential: bool) -> Rendered:
    """Render ``spec`` for ``path`` with ``context`` (:func:`template_context`).

    Raises :class:`BulletinMessageError` when the message cannot go as it is: a rule
    :func:`check_definition` would have refused (msgtype, mentions, links, confidentiality), a template
    that fails, a required field that renders empty, or a rendered field over its size limit (UTF-8
    bytes, per path). Nothing is truncated. ``safe`` is 1 when ``confidential`` (which a cell of
    :data:`SAFE_SUPPORT` that cannot honour it refuses).
    """
    problems = _static_problems(spec, (path,), confidential)
    if problems:
        raise BulletinMessageError(problems)
    out = _render(spec, path, context)
    if confidential:
        out = Rendered(path=out.path, msgtype=out.msgtype, message=out.message, safe=1, text=out.text)
    return out


__all__ = [
    "BTNTXT_MAX_CHARS",
    "DESCRIPTION_MAX_BYTES",
    "MARKDOWN_MAX_BYTES",
    "MSGTYPES",
    "PATHS",
    "PATH_APPCHAT",
    "PATH_MESSAGE",
    "PATH_ROBOT",
    "PERIOD_ALIASES",
    "PERIOD_ATTRS",
    "SAFE_SUPPORT",
    "SUPPORTED",
    "TEXT_MAX_BYTES",
    "TITLE_MAX_BYTES",
    "URL_MAX_BYTES",
    "VARIABLES",
    "BulletinMessageError",
    "MessageSpec",
    "Period",
    "Problem",
    "Rendered",
    "check_definition",
    "render",
    "safe_supported",
    "sample_context",
    "template_context",
]
