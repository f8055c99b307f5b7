"""Directory reads (contract §2, §14.1; checklist §12.3)."""

from __future__ import annotations

from wecom_plugin.emulator.state import SENSITIVE_FIELDS


def _stores_dept(emulator) -> int:
    return next(d.id for d in emulator.data.departments.values() if d.name == "门店运营部")


def _it_dept(emulator) -> int:
    return next(d.id for d in emulator.data.departments.values() if d.name == "信息技术部")


def test_department_list_returns_the_tree_with_leaders(emulator):
    body = emulator.get("department/list")
    assert body["errcode"] == 0
    deps = body["department"]
    assert len(deps) == len(emulator.data.departments)
    root = deps[0]
    assert root["id"] == 1 and root["parentid"] == 0
    hr = next(d for d in deps if d["name"] == "人力资源部")
    assert hr["parentid"] == 1 and len(hr["department_leader"]) == 1
    assert set(hr) >= {"id", "name", "department_leader", "parentid", "order"}


def test_department_list_with_id_returns_the_subtree(emulator):
    it = _it_dept(emulator)
    deps = emulator.get("department/list", id=it)["department"]
    assert [d["id"] for d in deps][0] == it
    assert {d["name"] for d in deps} == {"信息技术部", "运维组", "开发组", "信息安全组"}


def test_department_list_of_an_unknown_department_is_60003(emulator):
    assert emulator.get("department/list", id=424242)["errcode"] == 60003


def test_department_list_is_limited_to_the_app_visibility(emulator):
    deps = emulator.get("department/list", as_=emulator.STORE)["department"]
    names = {d["name"] for d in deps}
    assert "门店运营部" in names and "财务部" not in names and 1 not in {d["id"] for d in deps}


def test_department_outside_the_visibility_is_60011(emulator):
    assert emulator.get("department/list", as_=emulator.STORE, id=_it_dept(emulator))["errcode"] == 60011


def test_department_simplelist_returns_ids_only(emulator):
    rows = emulator.get("department/simplelist")["department_id"]
    assert rows[0] == {"id": 1, "parentid": 0, "order": emulator.data.departments[1].order}
    assert all(set(r) == {"id", "parentid", "order"} for r in rows)


def test_department_get_returns_one_department(emulator):
    it = _it_dept(emulator)
    assert emulator.get("department/get", id=it)["department"]["name"] == "信息技术部"


def test_user_get_strips_sensitive_fields_for_an_app_created_after_2022(emulator):
    user = emulator.users()[5]
    body = emulator.get("user/get", userid=user.userid)
    assert body["errcode"] == 0 and body["name"] == user.name
    assert not set(SENSITIVE_FIELDS) & set(body)
    assert body["department"] == user.departments and body["status"] == 1


def test_user_get_keeps_sensitive_fields_for_an_app_created_before_2022(emulator):
    user = emulator.users()[5]
    body = emulator.get("user/get", as_=emulator.OTHER, userid=user.userid)
    assert body["mobile"] == user.mobile and body["email"] == user.email and body["gender"] == user.gender
    assert body["avatar"].endswith("/0") and body["thumb_avatar"].endswith("/100")


def test_sensitive_fields_can_be_answered_empty_instead_of_absent(emulator):
    emulator.flags(sensitive_fields="empty")
    body = emulator.get("user/get", userid=emulator.users()[5].userid)
    assert all(body[f] == "" for f in SENSITIVE_FIELDS)


def test_user_get_of_an_unknown_userid_is_60111(emulator):
    assert emulator.get("user/get", userid="nobody")["errcode"] == 60111


def test_user_get_of_a_malformed_userid_is_40003(emulator):
    assert emulator.get("user/get", userid="bad id!")["errcode"] == 40003


def test_user_get_outside_the_visibility_is_60011(emulator):
    finance = next(u for u in emulator.users() if emulator.data.departments[u.main_department].name == "财务部")
    assert emulator.get("user/get", as_=emulator.STORE, userid=finance.userid)["errcode"] == 60011


def test_user_visible_by_userid_scope_is_readable(emulator):
    ceo = emulator.users()[0]
    assert emulator.get("user/get", as_=emulator.STORE, userid=ceo.userid)["errcode"] == 0


def test_user_simplelist_returns_direct_members_only(emulator):
    it = _it_dept(emulator)
    body = emulator.get("user/simplelist", department_id=it, fetch_child=1)
    direct = set(emulator.data.dept_members[it])
    assert {u["userid"].lower() for u in body["userlist"]} == direct
    assert set(body["userlist"][0]) == {"userid", "name", "department"}


def test_user_simplelist_can_honour_legacy_fetch_child(emulator):
    emulator.flags(simplelist_fetch_child=True)
    it = _it_dept(emulator)
    body = emulator.get("user/simplelist", department_id=it, fetch_child=1)
    expected = {k for d in emulator.data.subtree(it) for k in emulator.data.dept_members[d]}
    assert {u["userid"].lower() for u in body["userlist"]} == expected


def test_user_list_returns_details_of_every_status(emulator):
    statuses = set()
    for dep in emulator.data.departments:
        for u in emulator.get("user/list", department_id=dep)["userlist"]:
            statuses.add(u["status"])
            assert "enable" in u and "position" in u and "mobile" not in u
    assert statuses == {1, 2, 4, 5}


def test_user_simplelist_of_an_unknown_department_is_60003(emulator):
    assert emulator.get("user/simplelist", department_id=4242)["errcode"] == 60003
    assert emulator.get("user/simplelist")["errcode"] == 60003


def test_contact_sync_from_a_new_ip_cannot_read_details_48009(emulator):
    uid = emulator.users()[0].userid
    assert emulator.get("user/get", as_="contact_sync", userid=uid)["errcode"] == 48009
    assert emulator.get("user/simplelist", as_="contact_sync", department_id=1)["errcode"] == 48009
    assert emulator.get("user/list", as_="contact_sync", department_id=1)["errcode"] == 48009
    body = emulator.get("department/list", as_="contact_sync")
    assert body["errcode"] == 48009 and "api forbidden for contact assistant" in body["errmsg"]


def test_contact_sync_from_an_old_ip_reads_details_with_all_fields(emulator):
    emulator.admin("contact-sync", old_ips=["127.0.0.1"])
    user = emulator.users()[3]
    body = emulator.get("user/get", as_="contact_sync", userid=user.userid)
    assert body["errcode"] == 0 and body["mobile"] == user.mobile


def test_contact_sync_from_a_new_ip_may_use_the_id_only_apis(emulator):
    assert emulator.get("department/simplelist", as_="contact_sync")["errcode"] == 0
    assert emulator.post("user/list_id", {}, as_="contact_sync")["errcode"] == 0


def test_user_list_id_pages_with_a_cursor_one_row_per_department(emulator):
    rows, cursor, pages = [], None, 0
    while True:
        body = emulator.post("user/list_id", {"limit": 7, **({"cursor": cursor} if cursor else {})}, as_="contact_sync")
        assert body["errcode"] == 0
        rows += body["dept_user"]
        pages += 1
        cursor = body["next_cursor"]
        if not cursor:
            break
    expected = sum(len(u.departments) for u in emulator.data.users.values())
    assert len(rows) == expected and pages == -(-expected // 7)
    assert set(rows[0]) == {"userid", "department"}


def test_user_list_id_with_an_app_secret_is_48002(emulator):
    body = emulator.post("user/list_id", {})
    assert body["errcode"] == 48002 and body["dept_user"] == []


def test_user_list_id_rejects_a_limit_out_of_range_and_a_bad_cursor(emulator):
    assert emulator.post("user/list_id", {"limit": 10001}, as_="contact_sync")["errcode"] == 40058
    assert emulator.post("user/list_id", {"cursor": "garbage!"}, as_="contact_sync")["errcode"] == 40058


def test_tag_list_returns_every_tag_even_for_a_scoped_app(emulator):
    body = emulator.get("tag/list", as_=emulator.STORE)
    assert [t["tagname"] for t in body["taglist"]] == ["党员", "新员工", "门店店长", "信息安全联络人", "值班人员"]


def test_tag_get_lists_only_members_in_the_app_visibility(emulator):
    full = emulator.get("tag/get", tagid=1)
    scoped = emulator.get("tag/get", as_=emulator.STORE, tagid=1)
    assert full["tagname"] == "党员" and len(full["userlist"]) == len(emulator.data.tags[1].users)
    assert len(scoped["userlist"]) < len(full["userlist"])
    assert emulator.get("tag/get", tagid=5)["partylist"] == emulator.data.tags[5].parties


def test_tag_get_of_an_unknown_tag_is_40068(emulator):
    assert emulator.get("tag/get", tagid=999)["errcode"] == 40068
