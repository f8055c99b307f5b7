"""The directory's alerts about the installation, raised by the full sync and the callback handlers alike.

A setup errcode (60020, 48009, 48002, a wrong secret...) is one alert per errcode naming the console
fix and quoting WeCom's own errmsg (its "from ip: ..." is the IP to trust for 60020). A visibility
problem (60011) is one warning, and never a departure.
"""

from __future__ import annotations

from typing import Any

from wecom_plugin.services.alerts import raise_alert
from wecom_plugin.wecom import errors as wecom_errors
from wecom_plugin.wecom.diagnosis import diagnose
from wecom_plugin.wecom.errors import WeComError


def raise_setup_alert(
    session: Any, exc: WeComError, *, title_zh: str, title_en: str, severity: str = "error", **detail: Any
) -> dict[str, Any]:
    """Raise (or bump) ``directory.setup.<errcode>`` for ``exc``; returns the alert's detail."""
    diagnosis = diagnose(exc.errcode)
    full = {
        "errcode": exc.errcode,
        "fix": diagnosis.text() if diagnosis else str(exc),
        "endpoint": exc.endpoint,
        "wecom_errmsg": wecom_errors.redact(exc.errmsg_raw)[:500],
        **detail,
    }
    raise_alert(
        f"directory.setup.{exc.errcode}",
        title_zh=f"{title_zh}：{wecom_errors.describe(exc.errcode)}",
        title_en=f"{title_en}: WeCom errcode {exc.errcode}",
        severity=severity,
        detail=full,
        session=session,
    )
    return full


def raise_scope_alert(session: Any, detail: dict[str, Any]) -> None:
    """One open alert for a visibility (60011) problem, with the console fix; never a departure."""
    fix = diagnose(wecom_errors.NO_PRIVILEGE)
    raise_alert(
        "directory.scope",
        title_zh="应用可见范围不是整个企业：目录镜像不完整，不会据此判断离职",
        title_en="The app cannot see the whole directory (60011): nobody is treated as departed for it",
        severity="warning",
        detail={"fix": fix.text() if fix else "", **detail},
        session=session,
    )
