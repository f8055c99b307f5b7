"""WeCom endpoints: one module per area, each function a thin wrapper over the client.

Every function takes the client first, builds the request exactly as the contract
(/work/shared/wecom-api.md) shows it, and unwraps the answer. Its docstring links the WeCom doc page and
states the limits that matter; the limits are also named constants in :mod:`wecom_plugin.wecom.budget`.

| module | endpoints |
|---|---|
| :mod:`.token` | ``gettoken`` (used by the client) |
| :mod:`.department` | ``department/list``, ``department/simplelist``, ``department/get`` |
| :mod:`.user` | ``user/get``, ``user/list``, ``user/simplelist``, ``user/list_id`` (contact-sync secret) |
| :mod:`.tag` | ``tag/list``, ``tag/get`` |
| :mod:`.appchat` | ``appchat/create``, ``appchat/update``, ``appchat/get``, ``appchat/send`` |
| :mod:`.media` | ``media/upload`` |
| :mod:`.message` | message builders, ``message/send``, ``message/update_template_card`` |
| :mod:`.robot` | the group-robot webhook ``webhook/send?key=`` (no access token) |
| :mod:`.externalcontact` | ``externalcontact/groupchat/list``, ``get``, ``transfer``, ``onjob_transfer`` |
| :mod:`.auth` | ``auth/getuserinfo`` |

Ids: userids are strings (compare them with :func:`~wecom_plugin.wecom.client.same_userid`); department
and tag ids are integers, sent as JSON integers or ``|``-joined strings exactly where WeCom expects
each (:func:`joined`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from wecom_plugin.errors import PermanentError


def joined(ids: Iterable[object] | str | None) -> str:
    """``|``-joined ids for ``message/send``'s touser/toparty/totag; ints and strings alike.

    (wechatpy joins with ``'|'.join`` and raises TypeError on ints.) A string is taken as already joined.
    """
    if ids is None:
        return ""
    if isinstance(ids, str):
        return ids
    return "|".join(str(i) for i in ids)


def split(value: object) -> tuple[str, ...]:
    """The ids of a ``|``-joined answer field (or a list), empty parts dropped."""
    if value is None or value == "":
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value if str(v))
    return tuple(part for part in str(value).split("|") if part)


def cursor_pages(
    client: Any, path: str, body: Mapping[str, Any], rows_field: str, cursor: str | None = None
) -> Iterator[tuple[tuple[dict[str, Any], ...], str]]:
    """``POST path`` page by page (a read: ``idempotent``), yielding ``(rows, next_cursor)`` until
    ``next_cursor`` is empty. ``body`` is sent with each page's ``cursor`` added; start from a saved
    ``cursor`` to resume. A cursor WeCom already returned raises :class:`PermanentError` instead of looping.
    """
    seen: set[str] = set()
    while True:
        page = dict(body)
        if cursor:
            page["cursor"] = cursor
        data = client.post(path, page, idempotent=True)
        nxt = str(data.get("next_cursor") or "")
        yield tuple(data.get(rows_field) or ()), nxt
        if not nxt:
            return
        if nxt in seen:
            raise PermanentError(f"{path}: WeCom returned a cursor it had returned before")
        seen.add(nxt)
        cursor = nxt
