"""The admin API: request log, faults, clock, flags, reset and directory changes (brief: admin.py)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from wecom_plugin.emulator.state import TagUpdated, UserCreated, UserDeleted, UserUpdated


def _chat(emulator, i=0):
    return emulator.our_chats()[i]


def _rename_chat(emulator, chatid, name, **kw):
    return emulator.post("appchat/update", {"chatid": chatid, "name": name}, **kw)


# ---- request log ------------------------------------------------------------------------------
def test_request_log_can_assert_exactly_one_update_for_a_chat(emulator):
    a, b = _chat(emulator, 0), _chat(emulator, 1)
    _rename_chat(emulator, a.chatid, "x")
    _rename_chat(emulator, b.chatid, "y")
    _rename_chat(emulator, b.chatid, "z")
    assert len(emulator.requests(endpoint="appchat/update", chatid=a.chatid)) == 1
    assert len(emulator.requests(endpoint="appchat/update", chatid=b.chatid)) == 2


def test_request_log_records_params_body_ip_principal_and_errcode(emulator):
    emulator.get("user/get", userid="nobody")
    [entry] = emulator.requests(endpoint="user/get")
    assert entry["query"]["userid"] == "nobody" and entry["query"]["access_token"].endswith("...")
    assert entry["ip"] == "127.0.0.1" and entry["errcode"] == 60111 and entry["principal"] == f"app:{emulator.OUR}"
    [tok] = emulator.requests(endpoint="gettoken")
    assert tok["query"]["corpsecret"] == "***"
    assert emulator.requests(errcode=60111) == [entry]
    assert emulator.requests(since=entry["seq"]) == []


def test_request_log_can_be_cleared(emulator):
    emulator.get("tag/list")
    emulator.admin("requests", method="DELETE")
    assert emulator.requests() == []


# ---- faults -----------------------------------------------------------------------------------
def test_errcode_fault_for_one_endpoint_and_chat(emulator):
    a, b = _chat(emulator, 0), _chat(emulator, 1)
    emulator.admin("faults", action="errcode", endpoint="appchat/update", chatid=a.chatid, errcode=-1)
    assert _rename_chat(emulator, a.chatid, "x")["errcode"] == -1
    assert emulator.data.chats[a.chatid].name != "x"
    assert _rename_chat(emulator, b.chatid, "y")["errcode"] == 0


def test_fault_times_budget_runs_out(emulator):
    chat = _chat(emulator)
    emulator.admin("faults", action="errcode", endpoint="appchat/update", errcode=45009, times=2)
    codes = [_rename_chat(emulator, chat.chatid, f"n{i}")["errcode"] for i in range(3)]
    assert codes == [45009, 45009, 0]
    assert emulator.admin("faults")["faults"] == []


def test_faults_can_be_listed_and_removed(emulator):
    fault = emulator.admin("faults", action="errcode", endpoint="tag/list", errcode=-1)
    assert emulator.admin("faults")["faults"][0]["id"] == fault["id"]
    emulator.admin(f"faults/{fault['id']}", method="DELETE")
    assert emulator.get("tag/list")["errcode"] == 0


def test_60020_and_48009_on_demand(emulator):
    emulator.admin("faults", action="errcode", endpoint="user/list", errcode=60020, times=1)
    emulator.admin("faults", action="errcode", endpoint="department/list", errcode=48009, times=1)
    body = emulator.get("user/list", department_id=1)
    assert body["errcode"] == 60020 and body["userlist"] == [] and "from ip: 127.0.0.1" in body["errmsg"]
    assert emulator.get("department/list")["errcode"] == 48009


def test_timeout_fault_does_not_apply_the_change(emulator):
    chat = _chat(emulator)
    token = emulator.token()
    emulator.admin("faults", action="timeout", endpoint="appchat/update", seconds=5, times=1)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            emulator.url + "appchat/update",
            params={"access_token": token},
            json={"chatid": chat.chatid, "name": "late"},
            timeout=0.3,
        )
    emulator.admin("faults/release", method="POST")
    assert emulator.data.chats[chat.chatid].name != "late"


def test_timeout_after_apply_fault_applies_the_change_but_the_client_times_out(emulator):
    chat = _chat(emulator)
    token = emulator.token()
    emulator.admin("faults", action="timeout_after_apply", endpoint="appchat/update", chatid=chat.chatid, seconds=5)
    with pytest.raises(requests.ReadTimeout):
        requests.post(
            emulator.url + "appchat/update",
            params={"access_token": token},
            json={"chatid": chat.chatid, "name": "applied"},
            timeout=0.3,
        )
    assert emulator.data.chats[chat.chatid].name == "applied"
    emulator.admin("faults/release", method="POST")


def test_latency_fault_slows_calls(emulator):
    emulator.token()
    emulator.admin("faults", action="latency", endpoint="tag/list", seconds=0.2)
    started = time.perf_counter()
    assert emulator.get("tag/list")["errcode"] == 0
    assert time.perf_counter() - started >= 0.2


def test_a_sleeping_fault_does_not_block_other_requests(emulator):
    chat = _chat(emulator)
    token = emulator.token()
    emulator.admin("faults", action="latency", endpoint="appchat/update", seconds=10)
    worker = threading.Thread(
        target=requests.post,
        args=(emulator.url + "appchat/update",),
        kwargs={"params": {"access_token": token}, "json": {"chatid": chat.chatid, "name": "slow"}, "timeout": 15},
    )
    worker.start()
    time.sleep(0.05)
    started = time.perf_counter()
    assert emulator.get("department/list")["errcode"] == 0
    assert time.perf_counter() - started < 1.0
    emulator.admin("faults", method="DELETE")  # also wakes the sleeper
    worker.join(5)
    assert not worker.is_alive()


def test_empty_and_truncated_directory_faults(emulator):
    full = emulator.get("user/simplelist", department_id=3)["userlist"]
    emulator.admin("faults", action="truncated_directory", endpoint="user/simplelist", keep=1, times=1)
    assert len(emulator.get("user/simplelist", department_id=3)["userlist"]) == 1
    emulator.admin("faults", action="empty_directory", endpoint="department/list", times=1)
    body = emulator.get("department/list")
    assert body == {"errcode": 0, "errmsg": "ok", "department": []}
    assert len(emulator.get("user/simplelist", department_id=3)["userlist"]) == len(full)


def test_bad_fault_specs_are_400(emulator):
    assert "error" in emulator.admin("faults", expect=400, action="explode")
    assert "error" in emulator.admin("faults", expect=400, action="errcode")


# ---- clock, flags, reset ----------------------------------------------------------------------
def test_manual_clock_moves_only_when_advanced(emulator):
    before = emulator.admin("clock")["now"]
    assert emulator.admin("clock")["now"] == before
    assert emulator.admin("clock/advance", seconds=90)["now"] == before + 90
    assert "error" in emulator.admin("clock/advance", expect=400, seconds=-1)


def test_flags_are_validated(emulator):
    assert "unknown flag" in emulator.admin("flags", expect=400, no_such_flag=1)["error"]
    assert "one of" in emulator.admin("flags", expect=400, on_member_delete="vanish")["error"]
    assert emulator.admin("flags", on_member_delete="keep")["flags"]["on_member_delete"] == "keep"


def test_reset_restores_the_seeded_tenant(emulator):
    chat = _chat(emulator)
    _rename_chat(emulator, chat.chatid, "changed")
    emulator.flags(on_member_delete="keep")
    emulator.admin("reset", method="POST")
    assert emulator.data.chats[chat.chatid].name != "changed"
    assert emulator.admin("flags")["flags"]["on_member_delete"] == "remove"
    assert emulator.admin("reset", source="generated:30:9")["users"] == 30


def test_admin_errors(emulator):
    assert emulator.admin("nope", expect=404)["error"].startswith("unknown admin path")
    resp = emulator.http.post(f"{emulator.base_url}/_emulator/flags", data=b"{bad")
    assert resp.status_code == 400


def test_overview_lists_apps_secrets_and_endpoints(emulator):
    info = emulator.admin("")
    assert info["corp_id"] == emulator.corp_id
    assert {a["agentid"] for a in info["apps"]} == {emulator.OUR, emulator.OTHER, emulator.STORE}
    assert "POST /cgi-bin/appchat/update" in info["endpoints"]


# ---- directory changes ------------------------------------------------------------------------
def test_hire_adds_a_member_and_emits_create_user(emulator):
    seen = []
    remove = emulator.tenant.on_change(seen.append)
    try:
        emulator.admin("directory/hire", userid="NewHire", name="新员工", department=[3], position="文员")
    finally:
        remove()
    assert emulator.get("user/get", userid="newhire")["userid"] == "NewHire"
    assert isinstance(seen[0], UserCreated) and seen[0].change_type == "create_user" and seen[0].userid == "NewHire"
    assert emulator.admin("changes")["changes"][0]["change_type"] == "create_user"


def test_hire_of_an_existing_userid_is_400(emulator):
    uid = emulator.users()[0].userid
    assert "already exists" in emulator.admin("directory/hire", expect=400, userid=uid.upper(), name="x")["error"]


def test_depart_deletes_the_member_removes_them_from_chats_and_moves_ownership(emulator):
    chat = _chat(emulator)
    owner = chat.members[chat.owner]
    seen = []
    remove = emulator.tenant.on_change(seen.append)
    try:
        emulator.admin("directory/depart", userid=owner)
    finally:
        remove()
    assert isinstance(seen[-1], UserDeleted) and seen[-1].userid == owner
    assert emulator.get("user/get", userid=owner)["errcode"] == 60111
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert owner not in info["userlist"] and info["owner"] == info["userlist"][0]


def test_depart_can_keep_the_member_in_chats(emulator):
    emulator.flags(on_member_delete="keep")
    chat = _chat(emulator)
    owner = chat.members[chat.owner]
    emulator.admin("directory/depart", userid=owner)
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert owner in info["userlist"] and info["owner"] == owner


def test_owner_succession_can_leave_a_stale_owner(emulator):
    emulator.flags(owner_succession="none")
    chat = _chat(emulator)
    owner = chat.members[chat.owner]
    emulator.admin("directory/depart", userid=owner)
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert owner not in info["userlist"] and info["owner"] == owner


def test_depart_of_a_customer_group_owner_makes_the_groups_inheritable(emulator):
    group = next(g for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users)
    emulator.admin("directory/depart", userid=group.owner)
    body = emulator.post(
        "externalcontact/groupchat/list", {"limit": 100, "owner_filter": {"userid_list": [group.owner]}}
    )
    assert {"chat_id": group.chat_id, "status": 1} in body["group_chat_list"]


def test_disable_keeps_chat_membership_by_default_and_can_remove_it(emulator):
    chat = _chat(emulator)
    a, b = [v for k, v in chat.members.items() if k != chat.owner][:2]
    emulator.admin("directory/disable", userid=a)
    assert emulator.get("user/get", userid=a)["status"] == 2
    assert a in emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]["userlist"]
    emulator.flags(disabled_member_in_chat="remove")
    emulator.admin("directory/disable", userid=b)
    assert b not in emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]["userlist"]
    emulator.admin("directory/enable", userid=a)
    assert emulator.get("user/get", userid=a)["status"] == 1


def test_move_changes_departments_and_emits_update_user(emulator):
    user = next(u for u in emulator.users() if u.main_department not in (4, 5))
    seen = []
    remove = emulator.tenant.on_change(seen.append)
    try:
        emulator.admin("directory/move", userid=user.userid, department=[4, 5], is_leader_in_dept=[0, 1])
    finally:
        remove()
    body = emulator.get("user/get", userid=user.userid)
    assert body["department"] == [4, 5] and body["main_department"] == 4 and body["is_leader_in_dept"] == [0, 1]
    change = seen[0]
    assert isinstance(change, UserUpdated) and change.changes["department"] == [4, 5] and change.new_userid is None
    assert user.key in emulator.data.dept_members[5]


def test_rename_changes_the_userid_everywhere(emulator):
    chat = _chat(emulator)
    old = next(v for k, v in chat.members.items() if k == chat.owner)
    seen = []
    remove = emulator.tenant.on_change(seen.append)
    try:
        emulator.admin("directory/rename", userid=old, new_userid="Renamed01")
    finally:
        remove()
    assert seen[0].userid == old and seen[0].new_userid == "Renamed01"
    assert emulator.get("user/get", userid=old)["errcode"] == 60111
    info = emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]
    assert info["owner"] == "Renamed01" and "Renamed01" in info["userlist"] and old not in info["userlist"]


def test_tag_change_emits_update_tag(emulator):
    uid = emulator.users()[7].userid
    seen = []
    remove = emulator.tenant.on_change(seen.append)
    try:
        emulator.admin("directory/tag", tagid=2, add_users=[uid], add_parties=[3])
    finally:
        remove()
    assert seen[0] == TagUpdated(seen[0].seq, seen[0].at, 2, (uid,), (), (3,), ())
    body = emulator.get("tag/get", tagid=2)
    assert uid in [u["userid"] for u in body["userlist"]] and 3 in body["partylist"]


def test_department_create_update_delete(emulator):
    dep = emulator.admin("directory/department", name="新门店", parentid=1)
    assert emulator.get("department/get", id=dep["id"])["department"]["name"] == "新门店"
    emulator.admin("directory/department/update", id=dep["id"], name="旗舰店")
    assert emulator.get("department/get", id=dep["id"])["department"]["name"] == "旗舰店"
    emulator.admin("directory/department/delete", id=dep["id"])
    assert emulator.get("department/get", id=dep["id"])["errcode"] == 60003
    kinds = [c["change_type"] for c in emulator.admin("changes")["changes"]]
    assert kinds == ["create_party", "update_party", "delete_party"]
    assert "members" in emulator.admin("directory/department/delete", expect=400, id=3)["error"]


def test_a_failing_listener_does_not_break_the_change(emulator):
    def boom(change):
        raise RuntimeError("listener bug")

    remove = emulator.tenant.on_change(boom)
    try:
        emulator.admin("directory/hire", userid="robust", name="稳")
    finally:
        remove()
    assert emulator.get("user/get", userid="robust")["errcode"] == 0


def test_caller_ip_override_and_clear(emulator):
    emulator.caller_ip("192.0.2.1")
    emulator.get("tag/list")
    emulator.caller_ip(None)
    emulator.get("tag/list")
    assert [e["ip"] for e in emulator.requests(endpoint="tag/list")] == ["192.0.2.1", "127.0.0.1"]


def test_chats_and_customer_groups_can_be_seeded(emulator):
    ids = [u.userid for u in emulator.users()[:3]]
    chat = emulator.admin("chats", members=ids, name="别的应用建的群", creator=emulator.OTHER)
    assert emulator.get("appchat/get", chatid=chat["chatid"])["errcode"] == 86008
    group = emulator.admin("customer-groups", owner=ids[0], name="新客户群")
    assert emulator.post("externalcontact/groupchat/get", {"chat_id": group["chat_id"]})["errcode"] == 0
