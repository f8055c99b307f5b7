"""Members (contract §2.1, §2.4-§2.7).

The 2022 rules (§2.1): an app secret reads only its visibility (outside → 60011), and apps created after
2022-06-20 get no mobile/gender/email/avatar/qr_code/address. The contact-sync (通讯录同步) secret from a
new IP may not read details (``user/get``, ``user/list``, ``user/simplelist`` → 48009) and is the only
secret allowed to call ``user/list_id`` (build the client with ``secret="contact"``). Basic limit for
every read: 10,000/min and 150,000/h per corp per API (§10.2).

Userids are case-insensitive: compare them with :func:`~wecom_plugin.wecom.client.same_userid`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wecom_plugin.wecom.api import cursor_pages
from wecom_plugin.wecom.budget import Ask, read_asks

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

LIST_ID_MAX = 10_000


def get(client: WeComClient, userid: str, *, spend: Iterable[Ask] | None = None) -> dict[str, Any]:
    """``GET /cgi-bin/user/get?userid=ID``: one member (``userid, name, department, status`` ... see §2.4).

    Doc: https://developer.work.weixin.qq.com/document/path/90196 (代开发 twin 96255; contract §2.4).
    Limits: the basic per-API limit. ``status``: 1 active, 2 disabled, 4 not activated, 5 left.
    Errors: 60111 unknown userid, 40003 malformed, 60011 outside the visibility, 48009 contact-sync
    secret from a new IP.
    """
    data = client.get("user/get", {"userid": userid}, spend=read_asks("user/get") if spend is None else spend)
    return {k: v for k, v in data.items() if k not in ("errcode", "errmsg")}


def simplelist(client: WeComClient, department_id: int) -> list[dict[str, Any]]:
    """``GET /cgi-bin/user/simplelist?department_id=ID``: *direct* members ``[{userid, name, department}]``.

    Doc: https://developer.work.weixin.qq.com/document/path/90200 (代开发 twin 96259; contract §2.5).
    Limits: the basic per-API limit. ``fetch_child`` is gone from the doc: walk sub-departments yourself.
    """
    return list(client.get("user/simplelist", {"department_id": int(department_id)}).get("userlist") or [])


def list_users(client: WeComClient, department_id: int, *, spend: Iterable[Ask] | None = None) -> list[dict[str, Any]]:
    """``GET /cgi-bin/user/list?department_id=ID``: the department's direct members with details (``user/get`` shape).

    Doc: https://developer.work.weixin.qq.com/document/path/90201 (contract §2.6). Limits: the basic
    per-API limit; the 2022 field rules apply.
    """
    spend = read_asks("user/list") if spend is None else spend
    return list(client.get("user/list", {"department_id": int(department_id)}, spend=spend).get("userlist") or [])


@dataclass(frozen=True)
class ListIdPage:
    """One page of ``user/list_id``: rows ``{userid, department}`` (one per user and department) and the cursor."""

    rows: tuple[dict[str, Any], ...]
    next_cursor: str


def list_id_pages(client: WeComClient, *, limit: int = LIST_ID_MAX, cursor: str | None = None) -> Iterator[ListIdPage]:
    """``POST /cgi-bin/user/list_id`` ``{"cursor", "limit"}``, page by page until ``next_cursor`` is empty.

    Doc: https://developer.work.weixin.qq.com/document/path/96067 (contract §2.7). Limits: the basic
    per-API limit; ``limit`` 1-10,000 rows a page. **Contact-sync secret only** (an app secret: 48002).
    Start from a saved ``cursor`` to resume. A cursor that repeats raises :class:`PermanentError`
    instead of looping.
    """
    if not 1 <= limit <= LIST_ID_MAX:
        raise ValueError(f"limit must be 1-{LIST_ID_MAX}")
    for rows, nxt in cursor_pages(client, "user/list_id", {"limit": limit}, "dept_user", cursor):
        yield ListIdPage(rows, nxt)


def list_id(client: WeComClient, *, limit: int = LIST_ID_MAX) -> Iterator[dict[str, Any]]:
    """Every ``{userid, department}`` row of ``user/list_id`` (all pages); see :func:`list_id_pages`."""
    for page in list_id_pages(client, limit=limit):
        yield from page.rows
