"""``gettoken``: the access token of one (corp id, secret). Used by the client only.

Callers never fetch tokens themselves: :class:`~wecom_plugin.wecom.client.WeComClient` keeps the token in
the shared :class:`~wecom_plugin.wecom.token_store.TokenStore` and calls :func:`gettoken` under the
store's lock when it must.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wecom_plugin.wecom.errors import WeComNetworkError

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

DOC = "https://developer.work.weixin.qq.com/document/path/91039"
DEFAULT_EXPIRES_IN = 7200


def gettoken(client: WeComClient, secret: str) -> tuple[str, float]:
    """``GET /cgi-bin/gettoken?corpid=ID&corpsecret=SECRET`` → ``(access_token, expires_in)``.

    Doc: https://developer.work.weixin.qq.com/document/path/91039 (contract §1).

    Limits: no numeric quota is documented, but the token must be cached ("不能频繁调用gettoken接口");
    about 2,000 *failing* calls an hour block the caller for an hour (45009). Tokens are per secret,
    normally valid 7,200 s, at most 512 bytes, and may be invalidated early. Errors: 40013 corp id,
    40001 secret (configuration, never retried), 40091 another corp's secret, 41002/41004 missing.

    One attempt, unguarded and not retried: the client calls it while holding the token store's lock.
    """
    body = client._gettoken_body(secret)
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise WeComNetworkError("gettoken: the answer has no access_token", "gettoken", side_effect_possible=False)
    try:
        expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (TypeError, ValueError):
        expires_in = float(DEFAULT_EXPIRES_IN)
    return token, expires_in
