"""What to change in WeCom's admin console (管理后台) when an errcode means the setup is wrong.

Some errcodes are not failures of a call but of the installation: the server's IP is not trusted,
the app cannot see the whole directory, a secret is used for an API it may not call. Each gets one
message that names the console page and the change, in Chinese first, then English. Callers put it
in an alert and print it from the CLI; they never retry these.
"""

from __future__ import annotations

from dataclasses import dataclass

from wecom_plugin.wecom import errors as e


@dataclass(frozen=True)
class Diagnosis:
    errcode: int
    zh: str
    en: str

    def text(self) -> str:
        return f"{self.zh}\n{self.en}"


_FIXES: dict[int, tuple[str, str]] = {
    e.IP_NOT_ALLOWED: (
        "60020：本服务器的出口 IP 不在应用的「企业可信IP」中。请在 管理后台 → 应用管理 → 本应用 → 企业可信IP "
        "中加入服务器的固定出口 IP（可在错误信息的 from ip 中看到）。",
        "60020: this server's egress IP is not in the app's trusted IP list. In the admin console, "
        "App Management → this app → Trusted IP (企业可信IP), add the server's static egress IP "
        "(WeCom's error shows it after 'from ip').",
    ),
    e.NO_PRIVILEGE: (
        "60011：应用的可见范围不包含该成员或部门。请在 管理后台 → 应用管理 → 本应用 → 可见范围 中选择根部门"
        "（整个企业），否则目录镜像看不到全部成员，也不能据此判断离职。",
        "60011: the member or department is outside the app's visibility. In the admin console, "
        "App Management → this app → Visible to (可见范围), select the root department (the whole "
        "company); otherwise the directory mirror cannot see everyone, and absence proves nothing.",
    ),
    e.CONTACT_ASSISTANT_FORBIDDEN: (
        "48009：通讯录同步助手的 Secret 从新 IP 不能再读取成员详情（2022-08-15 起）。请把 "
        "WECOM_SECRET 设为自建应用的 Secret 用于读取通讯录，通讯录同步 Secret 只用于 user/list_id。",
        "48009: since 2022-08-15 the contact-sync secret cannot read member details from a new IP. "
        "Use the self-built app's secret (WECOM_SECRET) for directory reads; keep the contact-sync "
        "secret (WECOM_CONTACT_SECRET) for user/list_id only.",
    ),
    e.API_FORBIDDEN: (
        "48002：该 Secret 无权调用此接口。user/list_id 只能用通讯录同步助手的 Secret：请在 管理后台 → "
        "管理工具 → 通讯录同步 中查看 Secret，填入 WECOM_CONTACT_SECRET；其他接口请用自建应用的 Secret。",
        "48002: this secret may not call this API. user/list_id needs the contact-sync assistant's "
        "secret: copy it from Admin console → Management Tools → Contact Sync (通讯录同步) into "
        "WECOM_CONTACT_SECRET; every other API uses the self-built app's secret.",
    ),
}

_CREDENTIAL_FIX = (
    "{code}：企业ID或Secret不正确。请核对 管理后台 → 我的企业 → 企业信息 中的企业ID（WECOM_CORP_ID），"
    "以及 应用管理 → 本应用 中的 Secret（WECOM_SECRET），Secret 重置后需同步更新。",
    "{code}: the corp ID or secret is wrong. Check the CorpID under My Company → Company Info "
    "(WECOM_CORP_ID) and the app's Secret under App Management → this app (WECOM_SECRET); a reset "
    "secret must be updated here too.",
)
_CREDENTIAL_CODES = {e.INVALID_CREDENTIAL, e.INVALID_CORPID, e.INVALID_SECRET, e.CORPID_MISSING, e.SECRET_MISSING}


def diagnose(errcode: int) -> Diagnosis | None:
    """The console fix for a setup errcode, or None when ``errcode`` is not about the setup."""
    if errcode in _FIXES:
        zh, en = _FIXES[errcode]
        return Diagnosis(errcode, zh, en)
    if errcode in _CREDENTIAL_CODES:
        zh, en = _CREDENTIAL_FIX
        return Diagnosis(errcode, zh.format(code=errcode), en.format(code=errcode))
    return None
