"""Departments (contract §2.2, §2.3): the tree, ids only, one department.

Read with the app secret (only the app's visibility; outside → 60011) or the contact-sync secret (ids
only from a new IP since 2022-08-15: ``department/list`` then answers 48009, use :func:`simplelist`).
Basic limit for every read: 10,000/min and 150,000/h per corp per API (§10.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wecom_plugin.wecom.budget import Ask, read_asks

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient


def list_departments(
    client: WeComClient, department_id: int | None = None, *, spend: Iterable[Ask] | None = None
) -> list[dict[str, Any]]:
    """``GET /cgi-bin/department/list?id=ID``: the department and all its descendants (the whole visible tree
    when ``department_id`` is None), each ``{id, name, name_en, department_leader, parentid, order}``.

    Doc: https://developer.work.weixin.qq.com/document/path/90208 (3rd-party twin 90344; contract §2.2).
    Limits: the basic per-API limit; the doc warns it is slow for big corps and recommends
    :func:`simplelist` + :func:`get`. Contact-sync secret from a new IP: 48009.
    """
    params = {} if department_id is None else {"id": int(department_id)}
    return list(
        client.get("department/list", params, spend=read_asks("department/list") if spend is None else spend).get(
            "department"
        )
        or []
    )


def simplelist(client: WeComClient, department_id: int | None = None) -> list[dict[str, Any]]:
    """``GET /cgi-bin/department/simplelist?id=ID``: ``[{id, parentid, order}]``, ids only.

    Doc: https://developer.work.weixin.qq.com/document/path/95350 (contract §2.3). Limits: the basic
    per-API limit. Allowed for the contact-sync secret from any IP.
    """
    params = {} if department_id is None else {"id": int(department_id)}
    spend = read_asks("department/simplelist")
    return list(client.get("department/simplelist", params, spend=spend).get("department_id") or [])


def get(client: WeComClient, department_id: int, *, spend: Iterable[Ask] | None = None) -> dict[str, Any]:
    """``GET /cgi-bin/department/get?id=ID``: ``{id, name, name_en, department_leader, parentid, order}``.

    Doc: https://developer.work.weixin.qq.com/document/path/95351 (contract §2.3, shape unconfirmed).
    Limits: the basic per-API limit. Unknown id: 60003; outside the visibility: 60011.
    """
    data = client.get(
        "department/get", {"id": int(department_id)}, spend=read_asks("department/get") if spend is None else spend
    )
    return dict(data.get("department") or {})
