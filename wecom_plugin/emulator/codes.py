"""Error codes and ``errmsg`` texts the sandbox tenant answers with.

English texts are those observed in real responses where the contract quotes one
(``/work/shared/wecom-api.md`` §0, §1, §10); the others are short English renderings of the
Chinese descriptions in WeCom's global error-code table. Clients must branch on ``errcode`` only.
"""

from __future__ import annotations

from typing import Any

#: The code the emulator uses for an endpoint or method it does not implement (not a WeCom code;
#: the same convention as wechatpy's test mock). Always a permanent error.
NOT_IMPLEMENTED = 99999

WRONG_JSON_WARNING = "Warning: wrong json format. "

MESSAGES: dict[int, str] = {
    -1: "system busy",
    0: "ok",
    40001: "invalid credential",
    40003: "invalid userid",
    40004: "invalid media type",
    40005: "invalid file type",
    40006: "invalid file size",
    40007: "invalid media_id",
    40008: "invalid message type",
    40009: "invalid image size",
    40011: "invalid video size",
    40013: "invalid corpid",
    40014: "invalid access_token",
    40029: "invalid code",
    40031: "invalid userid list",
    40032: "invalid userid list size",
    40050: "chatid not found",
    40056: "invalid agentid",
    40058: "invalid Request Parameter",
    40068: "invalid tagid",
    40074: "news message not support safe",
    40091: "secret is invalid",
    41001: "access_token missing",
    41002: "corpid missing",
    41004: "corpsecret missing",
    41006: "media_id missing",
    41008: "missing code",
    41009: "missing userid",
    41011: "missing agentid",
    41016: "missing title",
    41017: "missing tagid",
    41033: "missing description",
    42001: "access_token expired",
    42014: "taskid has existed or empty or exceed max len",
    42015: "agentid of the message to update does not match",
    42022: "code has been used",
    42027: "template_card horizontal_content_list keyname missing",
    42031: "template_card card_type invalid",
    42033: "template_card main_title.title and sub_title_text both empty",
    42035: "template_card horizontal_content_list exceed max length 6",
    42037: "template_card option_list length invalid",
    42038: "template_card button_list text invalid",
    42039: "template_card button_list key invalid",
    42045: "Template_Card.card_action missing or invalid",
    42051: "template_card action_menu key duplicated",
    44001: "empty media data",
    44004: "empty content",
    45001: "media size out of limit",
    45002: "content size out of limit",
    45008: "article size out of limit",
    45009: "api freq out of limit",
    45032: "author size out of limit",
    45033: "api concurrent out of limit",
    48002: "api forbidden",
    48009: "api forbidden for contact assistant",
    50001: "redirect_url not trusted domain",
    50002: "user not in app visible range",
    60003: "department not found",
    60011: "no privilege to access/modify contact/party/agent",
    60020: "not allow to access from your ip",
    60111: "userid not found",
    81013: "user & party & tag all invalid",
    81017: "too many members in app visible range, owner_filter required",
    82002: "invalid party list size",
    82003: "invalid tag list size",
    86001: "invalid chatid",
    86003: "chatid not exist",
    86004: "invalid chat name",
    86005: "invalid chat owner",
    86006: "invalid chat member count",
    86007: "invalid chat member",
    86008: "chat not created by this app",
    86216: "invalid chat member userid",
    90500: "the owner of this chat is not resigned",
    90501: "chat is not external group chat",
    93000: "invalid webhook url",
    301017: "voice file only support amr format",
    NOT_IMPLEMENTED: "not implemented by the sandbox tenant",
}


class ApiError(Exception):
    """A business error: becomes ``{"errcode": code, "errmsg": ...}`` with HTTP 200.

    Args:
        code: the WeCom errcode.
        detail: replaces the default text for ``code`` (before the hint/ip suffix).
        extra: additional fields merged into the error body (e.g. ``invaliduser``).
    """

    def __init__(self, code: int, detail: str | None = None, extra: dict[str, Any] | None = None) -> None:
        self.code = int(code)
        self.detail = detail if detail is not None else MESSAGES.get(self.code, f"error {self.code}")
        self.extra = dict(extra or {})
        super().__init__(f"{self.code}: {self.detail}")


def more_info_url(code: int) -> str:
    return f"https://open.work.weixin.qq.com/devtool/query?e={code}"
