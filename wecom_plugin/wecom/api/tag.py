"""Tags (contract §2.8, §14.1).

A self-built app sees every tag of the corp in ``tag/list``; ``tag/get`` lists only the members in the
app's visibility, and departments tagged as a whole stay in ``partylist`` (not expanded). Basic limit:
10,000/min and 150,000/h per corp per API (§10.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wecom_plugin.wecom.budget import Ask, read_asks

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient


def list_tags(client: WeComClient, *, spend: Iterable[Ask] | None = None) -> list[dict[str, Any]]:
    """``GET /cgi-bin/tag/list``: ``[{tagid, tagname}]`` (every tag of the corp for a self-built app).

    Doc: https://developer.work.weixin.qq.com/document/path/90216 (3rd-party twin 90352; contract §14.1).
    Limits: the basic per-API limit; at most 3,000 tags per corp, no pagination.
    """
    return list(client.get("tag/list", spend=read_asks("tag/list") if spend is None else spend).get("taglist") or [])


def get(client: WeComClient, tagid: int, *, spend: Iterable[Ask] | None = None) -> dict[str, Any]:
    """``GET /cgi-bin/tag/get?tagid=ID``: ``{tagname, userlist: [{userid, name}], partylist: [int]}``.

    Doc: https://developer.work.weixin.qq.com/document/path/90213 (3rd-party twin 90349; contract §2.8).
    Limits: the basic per-API limit. ``userlist`` holds only members in the app's visibility; ``partylist``
    is not expanded (reconcile departments with :mod:`.user`). Unknown tag: 40068.
    """
    data = client.get("tag/get", {"tagid": int(tagid)}, spend=read_asks("tag/get") if spend is None else spend)
    return {
        "tagname": data.get("tagname", ""),
        "userlist": list(data.get("userlist") or []),
        "partylist": [int(p) for p in data.get("partylist") or []],
    }
