"""WeCom errcodes and the exceptions the transport raises for them.

Every WeCom API answer carries ``errcode``/``errmsg`` (HTTP 200 even on failure, contract §0). The
transport turns a non-zero errcode into one exception through :func:`classify`, and each exception is
built on the plugin's retry classes (:mod:`wecom_plugin.errors`), so the job runtime knows what to do:

* :class:`WeComRetryableError` (RetryableError): -1 system busy, 45033 too many concurrent calls.
* :class:`WeComRateLimited` (RateLimitedError): 45009, ``retry_after`` = the block's length (§10.2).
* :class:`WeComTokenInvalid` (RetryableError): 40014, 42001, and 40001 outside ``gettoken``.
* :class:`WeComConfigError` (ConfigurationError): :data:`CONFIG_CODES`, and 40001 on ``gettoken``.
* :class:`WeComApiError` (PermanentError): every other code, unknown codes included (safe default).
* :class:`WeComNetworkError` (RetryableError): no answer at all (timeouts, resets, not JSON).

40001 is "invalid credential": on ``gettoken`` it means the secret is wrong (config), elsewhere WeCom
uses it for a token it no longer accepts, so it is treated like 40014 (§1, as WxJava does). The
client refreshes the token once and retries once on :class:`WeComTokenInvalid` (§1); if it escapes,
the runtime retries it with backoff, bounded by the attempt budget.

Never branch on ``errmsg`` text (§0): it carries a ``, hint: [...], from ip: ..., more info at ...``
suffix that changes per call. :attr:`WeComError.errmsg` drops that suffix for display;
:attr:`WeComError.errmsg_raw` keeps it (the hint id is what WeCom support asks for).
"""

from __future__ import annotations

import http.client
import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from urllib3.connection import HTTPConnection, HTTPSConnection

from wecom_plugin.errors import ConfigurationError, PermanentError, PluginError, RateLimitedError, RetryableError

# --- errcodes (contract §1, §3.5, §4, §5, §6, §9.3, §10.1, §14) ---------------------------------
SYSTEM_BUSY = -1
OK = 0
INVALID_CREDENTIAL = 40001
INVALID_USERID = 40003
INVALID_MEDIA_TYPE = 40004
INVALID_UPLOAD_TYPE = 40005
INVALID_FILE_SIZE = 40006
INVALID_MEDIA_ID = 40007
INVALID_MSGTYPE = 40008
INVALID_IMAGE_SIZE = 40009
INVALID_VIDEO_SIZE = 40011
INVALID_CORPID = 40013
INVALID_ACCESS_TOKEN = 40014
INVALID_OAUTH_CODE = 40029
INVALID_USERID_LIST = 40031
INVALID_USERID_LIST_LENGTH = 40032
CHATID_NOT_FOUND = 40050
INVALID_AGENTID = 40056
INVALID_CALLBACK_URL = 40057
INVALID_PARAMETER = 40058
NEWS_SAFE_NOT_SUPPORTED = 40074
BATCH_JOB_RESULT_EXPIRED = 40089
INVALID_TAGID = 40068
INVALID_SECRET = 40091
ACCESS_TOKEN_MISSING = 41001
CORPID_MISSING = 41002
SECRET_MISSING = 41004
MEDIA_ID_MISSING = 41006
NEWS_TITLE_MISSING = 41016
TEXTCARD_DESCRIPTION_MISSING = 41033
ACCESS_TOKEN_EXPIRED = 42001
TASK_ID_INVALID = 42014
TEMPLATE_CARD_AGENT_MISMATCH = 42015
RESPONSE_CODE_USED = 42022
CARD_HORIZONTAL_KEYNAME_MISSING = 42027
CARD_URL_MISSING = 42028
CARD_MEDIA_ID_MISSING = 42029
CARD_APPID_MISSING = 42030
CARD_INVALID_CARD_TYPE = 42031
CARD_TITLE_MISSING = 42033
CARD_TOO_MANY_HORIZONTAL_ITEMS = 42035
CARD_OPTION_LIST_LENGTH = 42037
CARD_BUTTON_TEXT_INVALID = 42038
CARD_BUTTON_KEY_INVALID = 42039
CARD_QUESTION_KEY_INVALID = 42043
CARD_ACTION_INVALID = 42045
CARD_HORIZONTAL_USERID_INVALID = 42050
CARD_ACTION_MENU_KEY_DUPLICATE = 42051
MSGID_EXPIRED = 42052
MEDIA_EMPTY = 44001
TEXT_CONTENT_EMPTY = 44004
MEDIA_TOO_LARGE = 45001
CONTENT_TOO_LONG = 45002
TOO_MANY_ARTICLES = 45008
API_FREQ_OUT_OF_LIMIT = 45009
AUTHOR_TOO_LONG = 45032
API_CONCURRENCY_OUT_OF_LIMIT = 45033
API_FORBIDDEN = 48002
CONTACT_ASSISTANT_FORBIDDEN = 48009
REDIRECT_DOMAIN_NOT_TRUSTED = 50001
USER_OUT_OF_SCOPE = 50002
AGENT_DISABLED = 50003
DEPARTMENT_NOT_FOUND = 60003
NO_PRIVILEGE = 60011
IP_NOT_ALLOWED = 60020
USERID_NOT_FOUND = 60111
ALL_RECIPIENTS_INVALID = 81013
GROUPCHAT_SCOPE_TOO_LARGE = 81017
ALL_TARGETS_INVALID = 82001
TOO_MANY_PARTIES = 82002
TOO_MANY_TAGS = 82003
INVALID_OAUTH_STATE = 84025
APPCHAT_INVALID_CHATID = 86001
APPCHAT_NOT_FOUND = 86003
APPCHAT_INVALID_NAME = 86004
APPCHAT_INVALID_OWNER = 86005
APPCHAT_MEMBER_COUNT = 86006
APPCHAT_INVALID_MEMBER = 86007
APPCHAT_NOT_CREATOR = 86008
APPCHAT_INVALID_MEMBER_ID = 86216
APPCHAT_SENDER_NOT_MEMBER = 86217
APPCHAT_INVALID_PARAMETER = 86220
TRANSFER_OWNER_NOT_RESIGNED = 90500
TRANSFER_NOT_EXTERNAL_CHAT = 90501
INVALID_WEBHOOK_URL = 93000
AGENT_NO_PRIVILEGE = 301002

#: Chinese meaning of each code, for operator messages (doc 90313 wording as mirrored in the contract).
MEANINGS: dict[int, str] = {
    SYSTEM_BUSY: "系统繁忙",
    OK: "请求成功",
    INVALID_CREDENTIAL: "不合法的secret参数",
    INVALID_USERID: "无效的UserID",
    INVALID_MEDIA_TYPE: "不合法的媒体文件类型",
    INVALID_UPLOAD_TYPE: "不合法的type参数",
    INVALID_FILE_SIZE: "不合法的文件大小",
    INVALID_MEDIA_ID: "不合法的media_id参数",
    INVALID_MSGTYPE: "不合法的msgtype参数",
    INVALID_IMAGE_SIZE: "上传图片大小不是有效值",
    INVALID_VIDEO_SIZE: "上传视频大小不是有效值",
    INVALID_CORPID: "不合法的CorpID",
    INVALID_ACCESS_TOKEN: "不合法的access_token",
    INVALID_OAUTH_CODE: "不合法的oauth_code",
    INVALID_USERID_LIST: "不合法的UserID列表",
    INVALID_USERID_LIST_LENGTH: "不合法的UserID列表长度",
    CHATID_NOT_FOUND: "chatid不存在",
    INVALID_AGENTID: "不合法的agentid",
    INVALID_CALLBACK_URL: "不合法的callbackurl或者callbackurl验证失败",
    INVALID_PARAMETER: "不合法的参数",
    NEWS_SAFE_NOT_SUPPORTED: "news消息不支持保密消息类型",
    BATCH_JOB_RESULT_EXPIRED: "批量任务的结果已清理（只保留最近5个任务）",
    INVALID_SECRET: "secret不合法",
    ACCESS_TOKEN_MISSING: "缺少access_token参数",
    CORPID_MISSING: "缺少corpid参数",
    SECRET_MISSING: "缺少secret参数",
    MEDIA_ID_MISSING: "缺少media_id参数",
    NEWS_TITLE_MISSING: "缺少title参数",
    TEXTCARD_DESCRIPTION_MISSING: "缺少description参数",
    ACCESS_TOKEN_EXPIRED: "access_token已过期",
    TASK_ID_INVALID: "任务卡片消息的taskid已存在、为空或超长",
    TEMPLATE_CARD_AGENT_MISMATCH: "更新的消息的应用与发送消息的应用不匹配",
    RESPONSE_CODE_USED: "code已经被使用过。只能使用一次",
    CARD_HORIZONTAL_KEYNAME_MISSING: "模板卡片horizontal_content_list的keyname缺失",
    CARD_URL_MISSING: "模板卡片url缺失",
    CARD_MEDIA_ID_MISSING: "模板卡片media_id缺失",
    CARD_APPID_MISSING: "模板卡片appid缺失",
    CARD_INVALID_CARD_TYPE: "模板卡片card_type不合法",
    CARD_TITLE_MISSING: "模板卡片title缺失",
    CARD_TOO_MANY_HORIZONTAL_ITEMS: "模板卡片horizontal_content_list超过长度限制",
    CARD_OPTION_LIST_LENGTH: "模板卡片option_list长度不合法",
    CARD_BUTTON_TEXT_INVALID: "模板卡片button_list.text不合法",
    CARD_BUTTON_KEY_INVALID: "模板卡片button_list.key不合法",
    CARD_QUESTION_KEY_INVALID: "模板卡片question_key不合法",
    CARD_ACTION_INVALID: "模板卡片card_action缺失或不合法",
    CARD_HORIZONTAL_USERID_INVALID: "模板卡片horizontal_content_list的userid不合法",
    CARD_ACTION_MENU_KEY_DUPLICATE: "模板卡片action_menu的key重复",
    MSGID_EXPIRED: "msgid已过期",
    MEDIA_EMPTY: "多媒体文件为空",
    TEXT_CONTENT_EMPTY: "文本消息content参数为空",
    MEDIA_TOO_LARGE: "多媒体文件大小超过限制",
    CONTENT_TOO_LONG: "消息内容大小超过限制",
    TOO_MANY_ARTICLES: "图文消息的文章数量不能超过8条",
    API_FREQ_OUT_OF_LIMIT: "接口调用超过限制",
    AUTHOR_TOO_LONG: "作者名字长度超过限制",
    API_CONCURRENCY_OUT_OF_LIMIT: "接口并发调用超过限制",
    API_FORBIDDEN: "API接口无权限调用",
    CONTACT_ASSISTANT_FORBIDDEN: "通讯录同步助手无权调用该接口（新IP不再可读取通讯录）",
    REDIRECT_DOMAIN_NOT_TRUSTED: "redirect_url未登记可信域名",
    USER_OUT_OF_SCOPE: "成员不在权限范围",
    AGENT_DISABLED: "应用已禁用",
    DEPARTMENT_NOT_FOUND: "部门ID不存在",
    INVALID_TAGID: "不合法的标签ID",
    NO_PRIVILEGE: "指定的成员/部门/标签参数无权限",
    IP_NOT_ALLOWED: "访问ip不在白名单之中",
    USERID_NOT_FOUND: "UserID不存在",
    ALL_RECIPIENTS_INVALID: "UserID、部门ID、标签ID全部非法或无权限",
    GROUPCHAT_SCOPE_TOO_LARGE: "应用可见范围超过1000人，须指定owner_filter",
    ALL_TARGETS_INVALID: "指定的成员/部门/标签全部无效",
    TOO_MANY_PARTIES: "部门ID超过100个",
    TOO_MANY_TAGS: "标签ID超过100个",
    INVALID_OAUTH_STATE: "state参数不合法",
    APPCHAT_INVALID_CHATID: "参数 chatid 不合法",
    APPCHAT_NOT_FOUND: "参数 chatid 不存在",
    APPCHAT_INVALID_NAME: "参数 群名 不合法",
    APPCHAT_INVALID_OWNER: "参数 群主 不合法",
    APPCHAT_MEMBER_COUNT: "群成员数过多或过少",
    APPCHAT_INVALID_MEMBER: "不合法的群成员",
    APPCHAT_NOT_CREATOR: "非法操作非自己创建的群",
    APPCHAT_INVALID_MEMBER_ID: "存在非法会话成员ID",
    APPCHAT_SENDER_NOT_MEMBER: "会话发送者不在会话成员列表中",
    APPCHAT_INVALID_PARAMETER: "指定的会话参数不合法",
    TRANSFER_OWNER_NOT_RESIGNED: "客户群群主未离职，不能继承",
    TRANSFER_NOT_EXTERNAL_CHAT: "不是客户群（外部群）",
    INVALID_WEBHOOK_URL: "不合法的webhook地址（机器人key无效或已删除）",
    AGENT_NO_PRIVILEGE: "无权限操作指定的应用",
}

RETRYABLE_CODES = frozenset({SYSTEM_BUSY, API_CONCURRENCY_OUT_OF_LIMIT})
TOKEN_CODES = frozenset({INVALID_CREDENTIAL, INVALID_ACCESS_TOKEN, ACCESS_TOKEN_EXPIRED})
#: A person must change a setting (secret, corp id, agent id, trusted IP, app scope, API permission).
CONFIG_CODES = frozenset(
    {
        INVALID_CORPID,
        INVALID_AGENTID,
        INVALID_CALLBACK_URL,
        INVALID_SECRET,
        CORPID_MISSING,
        SECRET_MISSING,
        API_FORBIDDEN,
        CONTACT_ASSISTANT_FORBIDDEN,
        REDIRECT_DOMAIN_NOT_TRUSTED,
        AGENT_DISABLED,
        NO_PRIVILEGE,
        IP_NOT_ALLOWED,
        INVALID_WEBHOOK_URL,
        AGENT_NO_PRIVILEGE,
    }
)
CREDENTIAL_ENDPOINT = "gettoken"

# ", hint: [...]", ", from ip: ...", ", more info at ..." (§0): everything from the first of them on.
_SUFFIX = re.compile(r",?\s*(?:hint:\s*\[|from ip:|more info at\b).*\Z", re.DOTALL)


def strip_hint(errmsg: str) -> str:
    """``errmsg`` without WeCom's per-call suffix: ``"invalid access_token, hint: [..]"`` → ``"invalid access_token"``.

    Only for display: never branch on errmsg text (§0).
    """
    return _SUFFIX.sub("", errmsg or "").strip()


def describe(errcode: int) -> str:
    """One line for an operator: ``"60020 访问ip不在白名单之中"``."""
    return f"{errcode} {MEANINGS.get(errcode, '未知错误码')}"


def _is_gettoken(endpoint: str) -> bool:
    path = (endpoint or "").split("?", 1)[0].rstrip("/")
    return path.rsplit("/", 1)[-1] == CREDENTIAL_ENDPOINT


class WeComError(PluginError):
    """WeCom answered with a non-zero errcode.

    Attributes:
        errcode: the code as WeCom sent it (unknown codes are kept).
        errmsg: the message without the ``hint``/``from ip``/``more info`` suffix, for display.
        errmsg_raw: the message exactly as sent.
        endpoint: the API path called, e.g. ``"appchat/send"``.
    """

    retry_after: float | None = None  # the runtime reads it off any PluginError it retries

    def __init__(self, errcode: int, errmsg: str = "", endpoint: str = ""):
        self.errcode = int(errcode)
        self.errmsg_raw = errmsg or ""
        self.errmsg = strip_hint(self.errmsg_raw)
        self.endpoint = endpoint or ""
        Exception.__init__(self, self._summary())

    @property
    def meaning(self) -> str:
        """The code's Chinese meaning, or ``"未知错误码"``."""
        return MEANINGS.get(self.errcode, "未知错误码")

    def _summary(self) -> str:
        where = f"{self.endpoint}: " if self.endpoint else ""
        detail = f" ({self.errmsg})" if self.errmsg else ""
        return f"{where}WeCom errcode {describe(self.errcode)}{detail}"


class WeComApiError(WeComError, PermanentError):
    """A permanent failure: the request as made cannot succeed. Also the safe default for unknown codes."""


class WeComConfigError(WeComError, ConfigurationError):
    """The deployment is wrong (secret, corp id, trusted IP, app scope, API permission): a person must fix it."""


class WeComRetryableError(WeComError, RetryableError):
    """WeCom was busy (-1) or we ran too many calls at once (45033): a later attempt may succeed."""

    def __init__(self, errcode: int, errmsg: str = "", endpoint: str = "", *, retry_after: float | None = None):
        super().__init__(errcode, errmsg, endpoint)
        self.retry_after = retry_after
        self.side_effect_possible = False


class WeComTokenInvalid(WeComError, RetryableError):
    """The access token was refused (40014, 42001, 40001 off gettoken): drop it, refresh once, retry once (§1)."""

    def __init__(self, errcode: int, errmsg: str = "", endpoint: str = ""):
        super().__init__(errcode, errmsg, endpoint)
        self.retry_after = None
        self.side_effect_possible = False


SHANGHAI = ZoneInfo("Asia/Shanghai")
_LIMIT_SECONDS = {"minute": 60.0, "hour": 3600.0, "month": 30 * 86400.0}


class WeComRateLimited(WeComError, RateLimitedError):
    """45009: a frequency limit blocked the call. Blocks last (§10.2): minute limits 60 s, hour limits
    1 h, day limits until the end of the natural day (Asia/Shanghai), month limits 30 days.

    ``retry_after`` is when the block lifts; the runtime reschedules without spending an attempt.
    """

    def __init__(
        self, errcode: int = API_FREQ_OUT_OF_LIMIT, errmsg: str = "", endpoint: str = "", *, retry_after: float = 60.0
    ):
        super().__init__(errcode, errmsg, endpoint)
        self.retry_after = float(retry_after)
        self.side_effect_possible = False

    @classmethod
    def for_limit(
        cls,
        kind: str,
        now: datetime,
        tz: tzinfo | str = SHANGHAI,
        *,
        errmsg: str = "",
        endpoint: str = "",
        errcode: int = API_FREQ_OUT_OF_LIMIT,
    ) -> WeComRateLimited:
        """The error for a ``kind`` (``minute``/``hour``/``day``/``month``) limit hit at ``now``.

        ``now`` should be timezone-aware; a naive ``now`` is taken as UTC. ``day`` blocks until the
        next local midnight in ``tz`` (WeCom's natural day is Beijing time).
        """
        return cls(errcode, errmsg, endpoint, retry_after=block_seconds(kind, now, tz))


def block_seconds(kind: str, now: datetime, tz: tzinfo | str = SHANGHAI) -> float:
    """Seconds until a ``kind`` frequency block lifts (§10.2); unknown kinds count as ``minute``."""
    if kind != "day":
        return _LIMIT_SECONDS.get(kind, 60.0)
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    local = aware.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    # Subtract in UTC: aware datetimes sharing a tzinfo subtract as wall-clock times.
    return max((midnight.astimezone(UTC) - aware.astimezone(UTC)).total_seconds(), 1.0)


class WeComNetworkError(RetryableError):
    """No WeCom answer: DNS, connect, TLS, timeout, reset, or a body that is not JSON.

    ``side_effect_possible`` is True when the request may have reached WeCom (read timeout, connection
    reset or TLS failure after sending): an at-most-once step must then end ``unknown`` instead of being
    retried. It is False only when the request provably never left (see :func:`_before_send`).
    """

    def __init__(
        self, message: str, endpoint: str = "", *, side_effect_possible: bool, retry_after: float | None = None
    ):
        super().__init__(message, retry_after=retry_after, side_effect_possible=side_effect_possible)
        self.endpoint = endpoint

    @classmethod
    def from_exception(cls, exc: BaseException, endpoint: str = "") -> WeComNetworkError:
        """Map a ``urllib3``/``requests`` failure: connect-phase errors are side-effect free, the rest not."""
        where = f"{endpoint}: " if endpoint else ""
        # urllib3's and requests' messages contain the URL, and with it the access token: mask it.
        message = redact(f"{where}{type(exc).__name__}: {exc}")
        return cls(message, endpoint, side_effect_possible=not _before_send(exc))


_SECRET_QUERY = re.compile(r"(?i)\b(access_token|corpsecret|key|code)=[^&\s'\"()]*")


def redact(text: str) -> str:
    """``text`` with the values of ``access_token``, ``corpsecret``, ``key`` and ``code`` masked."""
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)


#: Exceptions (matched by class name anywhere in the MRO) that only happen before a byte of the request
#: left: the connection, the TLS handshake or the proxy could not be set up, or the URL was unusable.
_CONNECT_PHASE = frozenset(
    {
        "ConnectTimeout",  # requests
        "ConnectTimeoutError",  # urllib3: connect timed out (NewConnectionError derives from it)
        "NewConnectionError",  # urllib3: refused, unreachable
        "NameResolutionError",  # urllib3 2.x: DNS
        "SSLCertVerificationError",  # ssl (alias CertificateError): the server's certificate was refused
        "CertificateError",
        "ProxyError",  # urllib3 raises it only while the connection to the proxy is not made yet
        "LocationValueError",  # urllib3: no host, bad URL, unknown scheme (nothing was opened)
        "ClosedPoolError",  # urllib3: the pool was closed, no connection taken
        "EmptyPoolError",
        "InvalidURL",  # requests
        "MissingSchema",
        "InvalidSchema",
    }
)


def _before_send(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it wraps) shows the request was never sent.

    Two kinds of proof: a connect-phase exception type (:data:`_CONNECT_PHASE`), or an exception raised
    inside urllib3's ``HTTPConnection.connect`` (TCP connect, proxy tunnel, TLS handshake), which runs
    before the first byte of the request is written. The second catches what the type does not say:
    urllib3 reports a TLS handshake timeout as ``ReadTimeoutError`` and wraps every TLS failure, during
    the handshake or after the request was sent, in the same ``SSLError``.

    Only what the exception wraps is followed (``MaxRetryError.reason``, ``__cause__``, exceptions in
    ``args``), never the implicit ``__context__``: that may be an unrelated error the *caller* was
    handling when it made the call (a connect failure of an earlier call, say).
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if any(klass.__name__ in _CONNECT_PHASE for klass in type(current).__mro__):
            return True
        if _raised_while_connecting(current):
            return True
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError wraps the real cause
        stack.extend([current.__cause__, reason if isinstance(reason, BaseException) else None])
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
    return False


#: The ``connect()`` methods: nothing of the request has been written while one of them runs.
_CONNECT_CODES = frozenset(
    {HTTPConnection.connect.__code__, HTTPSConnection.connect.__code__, http.client.HTTPConnection.connect.__code__}
)


def _raised_while_connecting(exc: BaseException) -> bool:
    """True if ``exc`` was raised inside urllib3's (or http.client's) ``connect()``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in _CONNECT_CODES:
            return True
        tb = tb.tb_next
    return False


def classify(
    errcode: int,
    errmsg: str = "",
    endpoint: str = "",
    *,
    limit: str = "minute",
    now: datetime | None = None,
    tz: tzinfo | str = SHANGHAI,
) -> WeComError:
    """The exception for a non-zero ``errcode`` returned by ``endpoint``.

    ``limit``/``now``/``tz`` only matter for 45009 (which limit was hit, when): WeCom's 45009 does not
    say which limit it is, so the caller passes what it knows; the default is the minute block
    (≥ 60 s, §10.1). Unknown codes become a permanent :class:`WeComApiError` that keeps the code.

    Raises:
        ValueError: for errcode 0, which is not an error.
    """
    code = int(errcode)
    if code == OK:
        raise ValueError("errcode 0 is success, not an error")
    if code in RETRYABLE_CODES:
        return WeComRetryableError(code, errmsg, endpoint)
    if code == API_FREQ_OUT_OF_LIMIT:
        when = now if now is not None else datetime.now(UTC)
        return WeComRateLimited(code, errmsg, endpoint, retry_after=block_seconds(limit, when, tz))
    if code in TOKEN_CODES:
        if _is_gettoken(endpoint):
            return WeComConfigError(code, errmsg, endpoint)
        return WeComTokenInvalid(code, errmsg, endpoint)
    if code in CONFIG_CODES:
        return WeComConfigError(code, errmsg, endpoint)
    return WeComApiError(code, errmsg, endpoint)
