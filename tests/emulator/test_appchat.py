"""App group chats: create / update / get (contract §3.1-§3.3, §3.5; checklist §12.4)."""

from __future__ import annotations


def _ids(emulator, n, start=0):
    return [u.userid for u in emulator.users()[start : start + n]]


def test_create_returns_a_chatid_and_get_shows_the_chat(emulator):
    members = _ids(emulator, 3)
    body = emulator.post("appchat/create", {"name": "测试群", "owner": members[1], "userlist": members})
    assert body["errcode"] == 0
    info = emulator.get("appchat/get", chatid=body["chatid"])["chat_info"]
    assert info == {
        "chatid": body["chatid"],
        "name": "测试群",
        "owner": members[1],
        "userlist": members,
        "chat_type": 0,
    }


def test_create_needs_root_department_visibility_60011(emulator):
    body = emulator.post("appchat/create", {"userlist": _ids(emulator, 2)}, as_=emulator.STORE)
    assert body["errcode"] == 60011


def test_appchat_is_for_self_built_apps_only_48002(emulator):
    assert emulator.post("appchat/create", {"userlist": _ids(emulator, 2)}, as_="contact_sync")["errcode"] == 48002


def test_create_needs_at_least_two_members_86006(emulator):
    assert emulator.post("appchat/create", {"userlist": _ids(emulator, 1)})["errcode"] == 86006
    assert emulator.post("appchat/create", {"name": "x"})["errcode"] == 86006


def test_duplicate_userids_count_once(emulator):
    uid = emulator.users()[0].userid
    assert emulator.post("appchat/create", {"userlist": [uid, uid.upper()]})["errcode"] == 86006


def test_member_cap_counts_the_app(emulator):
    emulator.flags(appchat_max_members=5)
    assert emulator.post("appchat/create", {"userlist": _ids(emulator, 5)})["errcode"] == 86006
    assert emulator.post("appchat/create", {"userlist": _ids(emulator, 4)})["errcode"] == 0
    emulator.flags(appchat_app_counts_as_member=False)
    assert emulator.post("appchat/create", {"userlist": _ids(emulator, 5)})["errcode"] == 0


def test_default_member_cap_is_2000_including_the_app(emulator):
    emulator.admin("reset", source="generated:2100:3")
    ids = [u.userid for u in list(emulator.data.users.values())]
    assert emulator.post("appchat/create", {"userlist": ids[:2000]})["errcode"] == 86006
    assert emulator.post("appchat/create", {"userlist": ids[:1999]})["errcode"] == 0


def test_create_truncates_the_name_at_50_characters(emulator):
    body = emulator.post("appchat/create", {"name": "群" * 60, "userlist": _ids(emulator, 2)})
    assert emulator.get("appchat/get", chatid=body["chatid"])["chat_info"]["name"] == "群" * 50


def test_create_with_an_unknown_userid_fails_the_whole_call(emulator):
    before = len(emulator.data.chats)
    body = emulator.post("appchat/create", {"userlist": [*_ids(emulator, 2), "ghost"]})
    assert body["errcode"] == 60111 and "ghost" in body["errmsg"]
    assert len(emulator.data.chats) == before


def test_unknown_member_errcode_is_configurable(emulator):
    emulator.flags(appchat_unknown_member_errcode=86216)
    assert emulator.post("appchat/create", {"userlist": [*_ids(emulator, 2), "ghost"]})["errcode"] == 86216


def test_create_with_an_owner_outside_the_userlist_is_86005(emulator):
    ids = _ids(emulator, 3)
    assert emulator.post("appchat/create", {"owner": ids[2], "userlist": ids[:2]})["errcode"] == 86005
    emulator.flags(appchat_owner_must_be_member=False)
    body = emulator.post("appchat/create", {"owner": ids[2], "userlist": ids[:2]})
    assert emulator.get("appchat/get", chatid=body["chatid"])["chat_info"]["owner"] == ids[2]


def test_create_picks_an_owner_from_the_members_when_omitted(emulator):
    ids = _ids(emulator, 4)
    body = emulator.post("appchat/create", {"userlist": ids})
    assert emulator.get("appchat/get", chatid=body["chatid"])["chat_info"]["owner"] in ids


def test_create_accepts_a_chosen_chatid_and_rejects_bad_or_taken_ones_86001(emulator):
    ids = _ids(emulator, 2)
    assert emulator.post("appchat/create", {"chatid": "mychat01", "userlist": ids})["chatid"] == "mychat01"
    assert emulator.post("appchat/create", {"chatid": "mychat01", "userlist": ids})["errcode"] == 86001
    assert emulator.post("appchat/create", {"chatid": "bad-id", "userlist": ids})["errcode"] == 86001
    assert emulator.post("appchat/create", {"chatid": "x" * 33, "userlist": ids})["errcode"] == 86001


def test_creates_per_corp_per_day_are_limited_45009_until_the_next_shanghai_day(emulator):
    emulator.flags(appchat_creates_per_day=2)
    ids = _ids(emulator, 2)
    assert [emulator.post("appchat/create", {"userlist": ids})["errcode"] for _ in range(3)] == [0, 0, 45009]
    emulator.advance(14 * 3600)  # 09:07 + 14 h = 23:07 Shanghai, same day
    assert emulator.post("appchat/create", {"userlist": ids})["errcode"] == 45009
    emulator.advance(3600)  # past midnight Asia/Shanghai
    assert emulator.post("appchat/create", {"userlist": ids})["errcode"] == 0


def test_update_adds_and_removes_members(emulator):
    chat = emulator.our_chats()[0]
    outsider = next(u for u in emulator.users() if u.key not in chat.members)
    victim = next(v for k, v in chat.members.items() if k != chat.owner)
    body = emulator.post(
        "appchat/update", {"chatid": chat.chatid, "add_user_list": [outsider.userid], "del_user_list": [victim]}
    )
    assert body == {"errcode": 0, "errmsg": "ok"}
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert outsider.userid in info["userlist"] and victim not in info["userlist"]


def test_update_renames_with_truncation(emulator):
    chat = emulator.our_chats()[0]
    emulator.post("appchat/update", {"chatid": chat.chatid, "name": "新" * 55})
    assert emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]["name"] == "新" * 50


def test_a_chat_created_by_another_app_cannot_be_touched_86008(emulator):
    chat = emulator.other_chats()[0]
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "x"})["errcode"] == 86008
    assert emulator.get("appchat/get", chatid=chat.chatid)["errcode"] == 86008
    body = emulator.post("appchat/send", {"chatid": chat.chatid, "msgtype": "text", "text": {"content": "x"}})
    assert body["errcode"] == 86008


def test_update_of_an_unknown_chat_is_86003(emulator):
    assert emulator.post("appchat/update", {"chatid": "nosuchchat", "name": "x"})["errcode"] == 86003
    assert emulator.get("appchat/get", chatid="nosuchchat")["errcode"] == 86003


def test_removing_the_owner_needs_a_new_owner_86005(emulator):
    chat = emulator.our_chats()[0]
    owner = chat.members[chat.owner]
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "del_user_list": [owner]})["errcode"] == 86005
    assert emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]["owner"] == owner


def test_removing_the_owner_with_a_new_owner_succeeds(emulator):
    chat = emulator.our_chats()[0]
    owner = chat.members[chat.owner]
    heir = next(v for k, v in chat.members.items() if k != chat.owner)
    body = emulator.post("appchat/update", {"chatid": chat.chatid, "owner": heir, "del_user_list": [owner]})
    assert body["errcode"] == 0
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert info["owner"] == heir and owner not in info["userlist"]


def test_update_with_an_unknown_userid_fails_the_whole_call(emulator):
    chat = emulator.our_chats()[0]
    outsider = next(u for u in emulator.users() if u.key not in chat.members)
    body = emulator.post("appchat/update", {"chatid": chat.chatid, "add_user_list": [outsider.userid, "ghost"]})
    assert body["errcode"] == 60111
    assert outsider.key not in emulator.data.chats[chat.chatid].members
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "del_user_list": ["ghost"]})["errcode"] == 60111


def test_update_cannot_exceed_the_member_cap_86006(emulator):
    chat = emulator.our_chats()[0]
    emulator.flags(appchat_max_members=len(chat.members) + 1)
    outsiders = [u.userid for u in emulator.users() if u.key not in chat.members][:2]
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "add_user_list": outsiders})["errcode"] == 86006


def test_updates_per_corp_per_hour_are_limited_45009(emulator):
    emulator.flags(appchat_updates_per_hour=2)
    chat = emulator.our_chats()[0]
    codes = [emulator.post("appchat/update", {"chatid": chat.chatid, "name": f"n{i}"})["errcode"] for i in range(3)]
    assert codes == [0, 0, 45009]
    emulator.advance(3600)
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "again"})["errcode"] == 0


def test_hourly_window_is_sliding_by_default_and_fixed_on_demand(emulator):
    emulator.flags(appchat_updates_per_hour=1)
    chat = emulator.our_chats()[0]
    emulator.advance(3000)  # 09:57
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "a"})["errcode"] == 0
    emulator.advance(600)  # 10:07: a new clock hour, but not 3600 s later
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "b"})["errcode"] == 45009
    emulator.flags(rate_window="fixed")
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "c"})["errcode"] == 0
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "d"})["errcode"] == 45009


def test_after_a_45009_the_hourly_limit_stays_blocked_for_an_hour_from_the_hit(emulator):
    # §10.2: an hourly limit blocks for 60 minutes once hit, even when the window has room again.
    emulator.flags(appchat_updates_per_hour=1)
    chat = emulator.our_chats()[0]
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "a"})["errcode"] == 0
    emulator.advance(3000)
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "b"})["errcode"] == 45009  # the hit
    emulator.advance(1200)  # the first update left the window 10 minutes ago, but the block runs 60
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "c"})["errcode"] == 45009
    emulator.advance(2401)
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "d"})["errcode"] == 0


def test_the_block_after_a_45009_can_be_switched_off(emulator):
    emulator.flags(appchat_updates_per_hour=1, block_after_limit=False)
    chat = emulator.our_chats()[0]
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "a"})["errcode"] == 0
    emulator.advance(3000)
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "b"})["errcode"] == 45009
    emulator.advance(1200)
    assert emulator.post("appchat/update", {"chatid": chat.chatid, "name": "c"})["errcode"] == 0
