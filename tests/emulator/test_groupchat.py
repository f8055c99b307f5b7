"""Customer groups: list / get / transfer / onjob_transfer (contract §6; checklist §12.7)."""

from __future__ import annotations


def _list(emulator, **body):
    return emulator.post("externalcontact/groupchat/list", {"limit": 100, **body})


def _resigned(emulator):
    return next(iter(emulator.data.departed.values())).userid


def _resigned_groups(emulator):
    key = _resigned(emulator).lower()
    return [g for g in emulator.data.customer_groups.values() if g.owner.lower() == key]


def _active_group(emulator):
    return next(g for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users)


def _heir(emulator, exclude=()):
    return next(u for u in emulator.users() if u.key not in exclude and u.customer_contact).userid


def test_list_returns_groups_of_active_owners_in_scope(emulator):
    body = _list(emulator)
    assert body["errcode"] == 0 and body["next_cursor"] == ""
    active = [g.chat_id for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users]
    assert [r["chat_id"] for r in body["group_chat_list"]] == active
    assert {r["status"] for r in body["group_chat_list"]} == {0}


def test_customer_group_apis_need_an_app_configured_for_customer_contact_48002(emulator):
    body = emulator.post("externalcontact/groupchat/list", {"limit": 10}, as_=emulator.OTHER)
    assert body["errcode"] == 48002 and body["group_chat_list"] == []
    assert emulator.post("externalcontact/groupchat/list", {"limit": 10}, as_="contact_sync")["errcode"] == 48002


def test_list_limit_is_required_and_1_to_1000(emulator):
    assert emulator.post("externalcontact/groupchat/list", {})["errcode"] == 40058
    assert _list(emulator, limit=1001)["errcode"] == 40058


def test_list_without_owner_filter_over_1000_people_in_scope_is_81017(emulator):
    emulator.flags(groupchat_scope_limit=10)
    assert _list(emulator)["errcode"] == 81017
    owner = _active_group(emulator).owner
    assert _list(emulator, owner_filter={"userid_list": [owner]})["errcode"] == 0


def test_resigned_owners_groups_are_listed_only_when_the_owner_is_filtered(emulator):
    resigned = {g.chat_id for g in _resigned_groups(emulator)}
    assert not resigned & {r["chat_id"] for r in _list(emulator, status_filter=1)["group_chat_list"]}
    body = _list(emulator, owner_filter={"userid_list": [_resigned(emulator)]})
    assert {r["chat_id"] for r in body["group_chat_list"]} == resigned
    assert {r["status"] for r in body["group_chat_list"]} == {1}


def test_observed_mode_lists_resigned_groups_by_status_and_rejects_the_owner_filter(emulator):
    emulator.flags(groupchat_resigned_listing="observed")
    resigned = {g.chat_id for g in _resigned_groups(emulator)}
    assert {r["chat_id"] for r in _list(emulator, status_filter=1)["group_chat_list"]} == resigned
    assert _list(emulator, status_filter=1, owner_filter={"userid_list": [_resigned(emulator)]})["errcode"] == 40003


def test_list_pages_with_a_cursor(emulator):
    seen, cursor = [], None
    while True:
        body = _list(emulator, limit=3, **({"cursor": cursor} if cursor else {}))
        seen += [r["chat_id"] for r in body["group_chat_list"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [r["chat_id"] for r in _list(emulator)["group_chat_list"]]


def test_get_returns_internal_and_external_members(emulator):
    group = _active_group(emulator)
    body = emulator.post("externalcontact/groupchat/get", {"chat_id": group.chat_id, "need_name": 1})
    info = body["group_chat"]
    assert info["owner"] == group.owner and info["member_version"] == group.member_version()
    types = {m["type"] for m in info["member_list"]}
    assert types == {1, 2}
    external = next(m for m in info["member_list"] if m["type"] == 2)
    assert external["userid"].startswith("wm") and external["name"]
    plain = emulator.post("externalcontact/groupchat/get", {"chat_id": group.chat_id})["group_chat"]
    assert "name" not in plain["member_list"][0]


def test_get_of_an_unknown_group_is_40050(emulator):
    assert emulator.post("externalcontact/groupchat/get", {"chat_id": "nope"})["errcode"] == 40050


def test_transfer_only_works_after_the_owner_resigned_90500_top_level_0(emulator):
    group = _active_group(emulator)
    body = emulator.post(
        "externalcontact/groupchat/transfer",
        {"chat_id_list": [group.chat_id], "new_owner": _heir(emulator, {group.owner.lower()})},
    )
    assert body["errcode"] == 0
    assert body["failed_chat_list"] == [
        {"chat_id": group.chat_id, "errcode": 90500, "errmsg": "the owner of this chat is not resigned"}
    ]


def test_transfer_of_a_resigned_owners_groups_hands_them_over(emulator):
    groups = _resigned_groups(emulator)
    heir = _heir(emulator)
    body = emulator.post(
        "externalcontact/groupchat/transfer", {"chat_id_list": [g.chat_id for g in groups], "new_owner": heir}
    )
    assert body == {"errcode": 0, "errmsg": "ok", "failed_chat_list": []}
    info = emulator.post("externalcontact/groupchat/get", {"chat_id": groups[0].chat_id})["group_chat"]
    assert info["owner"] == heir
    statuses = {r["status"] for r in _list(emulator, owner_filter={"userid_list": [heir]})["group_chat_list"]}
    assert 3 in statuses


def test_an_inherited_group_can_be_transferred_again_when_its_heir_leaves(emulator):
    group = _resigned_groups(emulator)[0]
    heir = _heir(emulator)
    emulator.post("externalcontact/groupchat/transfer", {"chat_id_list": [group.chat_id], "new_owner": heir})
    assert {r["status"] for r in _list(emulator, owner_filter={"userid_list": [heir]})["group_chat_list"]} == {3}
    emulator.admin("directory/depart", userid=heir)  # the heir leaves too: 跟进人离职 again
    listed = _list(emulator, owner_filter={"userid_list": [heir]})["group_chat_list"]
    assert {r["chat_id"]: r["status"] for r in listed}[group.chat_id] == 1
    second = _heir(emulator, {heir.lower()})
    body = emulator.post("externalcontact/groupchat/transfer", {"chat_id_list": [group.chat_id], "new_owner": second})
    assert body["failed_chat_list"] == []
    assert emulator.post("externalcontact/groupchat/get", {"chat_id": group.chat_id})["group_chat"]["owner"] == second


def test_transfer_can_stay_in_progress_for_a_while(emulator):
    emulator.flags(groupchat_transfer_delay=3600)
    group = _resigned_groups(emulator)[0]
    heir = _heir(emulator)
    emulator.post("externalcontact/groupchat/transfer", {"chat_id_list": [group.chat_id], "new_owner": heir})
    assert _list(emulator, owner_filter={"userid_list": [heir]}, status_filter=2)["group_chat_list"]
    emulator.advance(3600)
    assert not _list(emulator, owner_filter={"userid_list": [heir]}, status_filter=2)["group_chat_list"]


def test_transfer_of_an_unknown_chat_is_a_per_chat_90501(emulator):
    body = emulator.post("externalcontact/groupchat/transfer", {"chat_id_list": ["nope"], "new_owner": _heir(emulator)})
    assert body["errcode"] == 0 and body["failed_chat_list"][0]["errcode"] == 90501


def test_transfer_to_an_unknown_new_owner_fails_the_call(emulator):
    group = _resigned_groups(emulator)[0]
    body = emulator.post("externalcontact/groupchat/transfer", {"chat_id_list": [group.chat_id], "new_owner": "ghost"})
    assert body["errcode"] == 40003 and body["failed_chat_list"] == []


def test_onjob_transfer_at_most_twice_per_group_per_90_days(emulator):
    group = _active_group(emulator)
    a = _heir(emulator, {group.owner.lower()})
    b = _heir(emulator, {group.owner.lower(), a.lower()})
    original = group.owner

    def move(to):
        return emulator.post(
            "externalcontact/groupchat/onjob_transfer", {"chat_id_list": [group.chat_id], "new_owner": to}
        )

    assert move(a)["failed_chat_list"] == []
    assert move(b)["failed_chat_list"] == []
    third = move(original)
    assert third["errcode"] == 0 and third["failed_chat_list"][0]["errcode"] == 45009
    emulator.advance(90 * 86400)
    assert move(original)["failed_chat_list"] == []


def test_onjob_transfer_of_a_resigned_owners_group_fails_per_chat(emulator):
    group = _resigned_groups(emulator)[0]
    body = emulator.post(
        "externalcontact/groupchat/onjob_transfer", {"chat_id_list": [group.chat_id], "new_owner": _heir(emulator)}
    )
    assert body["errcode"] == 0 and body["failed_chat_list"][0]["chat_id"] == group.chat_id
