"""Customer groups (客户群) and their transfer to a new owner (contract §6).

All of these need a self-built app configured in 客户联系 → 可调用接口的应用 (48002 otherwise), and the
group owners must be in the app's visibility. Customer groups are not app chats (:mod:`.appchat`).
Transfers answer errcode 0 even when some chats failed: the failures come back as data
(:class:`TransferResult`), one errcode per chat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wecom_plugin.wecom.api import cursor_pages
from wecom_plugin.wecom.errors import WeComError, classify

if TYPE_CHECKING:
    from wecom_plugin.wecom.client import WeComClient

LIST_LIMIT_MAX = 1000
OWNER_FILTER_MAX = 100
TRANSFER_MAX_CHATS = 100


@dataclass(frozen=True)
class GroupChatPage:
    rows: tuple[dict[str, Any], ...]  # {"chat_id", "status"}
    next_cursor: str


def groupchat_list_pages(
    client: WeComClient,
    *,
    status_filter: int = 0,
    owner_userids: Sequence[str] | None = None,
    limit: int = LIST_LIMIT_MAX,
    cursor: str | None = None,
) -> Iterator[GroupChatPage]:
    """``POST /cgi-bin/externalcontact/groupchat/list``, page by page: ``{chat_id, status}`` rows.

    Doc: https://developer.work.weixin.qq.com/document/path/92120 (3rd-party twin 93414; contract §6.1).
    Limits: ``limit`` 1-1,000 a page; ``owner_userids`` ≤100; without an owner filter a scope over 1,000
    people answers 81017. ``status_filter``: 0 all, 1 owner resigned, 2 inheriting, 3 inherited. Groups of
    resigned owners appear only when the owner is filtered explicitly (also observed otherwise, §14.8).
    """
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise ValueError(f"limit must be 1-{LIST_LIMIT_MAX}")
    if owner_userids is not None and len(owner_userids) > OWNER_FILTER_MAX:
        raise ValueError(f"owner_userids holds at most {OWNER_FILTER_MAX} userids")
    body: dict[str, Any] = {"status_filter": int(status_filter), "limit": limit}
    if owner_userids:
        body["owner_filter"] = {"userid_list": list(owner_userids)}
    for rows, nxt in cursor_pages(client, "externalcontact/groupchat/list", body, "group_chat_list", cursor):
        yield GroupChatPage(rows, nxt)


def groupchat_list(client: WeComClient, **options: Any) -> Iterator[dict[str, Any]]:
    """Every ``{chat_id, status}`` row of :func:`groupchat_list_pages` (all pages)."""
    for page in groupchat_list_pages(client, **options):
        yield from page.rows


def groupchat_get(client: WeComClient, chat_id: str, *, need_name: bool = True) -> dict[str, Any]:
    """``POST /cgi-bin/externalcontact/groupchat/get``: one customer group with its members.

    Doc: https://developer.work.weixin.qq.com/document/path/92122 (代开发 twin 96338; contract §6.2).
    Limits: the basic per-API limit. ``member_list[].type``: 1 member of the corp, 2 external contact
    (``userid`` is then an external_userid). Unknown chat: 40050; owner outside the scope: 60011.
    """
    data = client.post(
        "externalcontact/groupchat/get", {"chat_id": chat_id, "need_name": int(need_name)}, idempotent=True
    )
    return dict(data.get("group_chat") or {})


@dataclass(frozen=True)
class FailedChat:
    """One chat a transfer did not move: WeCom's per-chat errcode and errmsg."""

    chat_id: str
    errcode: int
    errmsg: str

    def error(self, endpoint: str = "externalcontact/groupchat/transfer") -> WeComError:
        """The exception this per-chat errcode would be (permanent, retryable, rate-limited...)."""
        return classify(self.errcode, self.errmsg, endpoint, limit="day")


@dataclass(frozen=True)
class TransferResult:
    """Which chats moved (``transferred``) and which did not (``failed``), as WeCom answered."""

    transferred: tuple[str, ...]
    failed: tuple[FailedChat, ...]
    #: Chats the answer does not settle (a ``failed_chat_list`` entry that is not an object, has no
    #: numeric errcode or says errcode 0): read them again (``groupchat/get``) before counting them moved.
    unknown: tuple[str, ...] = ()

    @property
    def all_transferred(self) -> bool:
        return not self.failed and not self.unknown


def transfer(client: WeComClient, chat_ids: Sequence[str], new_owner: str) -> TransferResult:
    """``POST /cgi-bin/externalcontact/groupchat/transfer``: groups of a **resigned** owner to ``new_owner``.

    Doc: https://developer.work.weixin.qq.com/document/path/92127 (代开发 twin 96334; contract §6.3).
    Limits: 1-100 chats a call; **≤300 groups a day from one person to a new owner** (budget
    ``groupchat.transfer_day``, keyed by :func:`~wecom_plugin.wecom.budget.handover_key`: the caller knows
    the old owner). The old owner must have resigned (per-chat 90500 otherwise); the new owner needs
    customer-contact rights and recent activity. Errcode 0 at the top even when chats failed.
    """
    return _transfer(client, "externalcontact/groupchat/transfer", chat_ids, new_owner)


def onjob_transfer(client: WeComClient, chat_ids: Sequence[str], new_owner: str) -> TransferResult:
    """``POST /cgi-bin/externalcontact/groupchat/onjob_transfer``: groups of an **active** owner to ``new_owner``.

    Doc: https://developer.work.weixin.qq.com/document/path/95703 (contract §6.4).
    Limits: 1-100 chats a call; **each group at most twice per 90 natural days**; ≤300 a day per person.
    Not for external groups (per-chat 90501) or resigned owners. Errcode 0 at the top even when chats failed.
    """
    return _transfer(client, "externalcontact/groupchat/onjob_transfer", chat_ids, new_owner)


def _transfer(client: WeComClient, path: str, chat_ids: Sequence[str], new_owner: str) -> TransferResult:
    ids = list(dict.fromkeys(chat_ids))
    if not 1 <= len(ids) <= TRANSFER_MAX_CHATS:
        raise ValueError(f"a transfer moves 1-{TRANSFER_MAX_CHATS} chats")
    data = client.post(path, {"chat_id_list": ids, "new_owner": new_owner})
    failed: list[FailedChat] = []
    unknown: set[str] = set()
    unreadable = False  # an entry naming no chat: no chat of the call counts as moved
    for item in data.get("failed_chat_list") or ():
        chat_id = str(item.get("chat_id") or "") if isinstance(item, dict) else ""
        if not chat_id:
            unreadable = True
            continue
        try:
            errcode = int(item.get("errcode"))
        except (TypeError, ValueError):
            errcode = 0
        if errcode == 0:  # not a failure WeCom explains: check the chat again
            unknown.add(chat_id)
            continue
        failed.append(FailedChat(chat_id, errcode, str(item.get("errmsg") or "")))
    failed_ids = {f.chat_id for f in failed}
    if unreadable:
        unknown.update(c for c in ids if c not in failed_ids)
    moved = tuple(c for c in ids if c not in failed_ids and c not in unknown)
    return TransferResult(moved, tuple(failed), tuple(c for c in ids if c in unknown and c not in failed_ids))
