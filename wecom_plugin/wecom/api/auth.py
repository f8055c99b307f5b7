"""OAuth identity (contract §9.3): who opened the admin page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient


@dataclass(frozen=True)
class Identity:
    """A member (``userid``, maybe ``user_ticket``) or a non-member (``openid``, maybe ``external_userid``)."""

    userid: str | None = None
    user_ticket: str | None = None
    openid: str | None = None
    external_userid: str | None = None

    @property
    def is_member(self) -> bool:
        return bool(self.userid)


def getuserinfo(client: WeComClient, code: str) -> Identity:
    """``GET /cgi-bin/auth/getuserinfo?code=CODE``: the identity behind an OAuth2 / web-login ``code``.

    Doc: https://developer.work.weixin.qq.com/document/path/91023 (代开发 twin 96442, web login 98177;
    contract §9.3). Limits: exempt from the frequency limits with a valid code; the code is single use
    and expires in 5 minutes (40029 otherwise). 50001: the redirect domain is not the app's trusted
    domain; 50002: the member is outside the app's visibility. The legacy capitalised answer
    (``UserId``/``OpenId``) is accepted too. Cross-corp userids look like ``CorpId/userid``.
    """
    data = client.get("auth/getuserinfo", {"code": code})
    return Identity(
        userid=data.get("userid") or data.get("UserId") or None,
        user_ticket=data.get("user_ticket") or None,
        openid=data.get("openid") or data.get("OpenId") or None,
        external_userid=data.get("external_userid") or None,
    )
