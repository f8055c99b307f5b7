"""Seeding: generated companies and org files (brief: org.py; docs/emulator.md "Org file")."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
import yaml

from wecom_plugin.emulator.org import OTHER_AGENTID, OUR_AGENTID, OrgError, generate_org, load_org
from wecom_plugin.emulator.state import Tenant

CJK = re.compile(r"^[\u4e00-\u9fff]{2,4}$")


def test_same_seed_gives_the_same_tenant():
    assert generate_org(200, 7) == generate_org(200, 7)
    a, b = load_org("generated:200:7"), load_org("generated:200:7")
    assert [asdict(u) for u in a.users.values()] == [asdict(u) for u in b.users.values()]
    assert a.apps[OUR_AGENTID].secret == b.apps[OUR_AGENTID].secret


def test_different_seeds_give_different_tenants():
    a, b = generate_org(200, 1), generate_org(200, 2)
    assert a["corp_id"] != b["corp_id"] and [u["userid"] for u in a["users"]] != [u["userid"] for u in b["users"]]


def test_generated_company_looks_like_a_real_one():
    org = generate_org(300, 5)
    users = org["users"]
    names = {d["name"] for d in org["departments"]}
    assert {
        "总经理办公室",
        "综合办公室",
        "人力资源部",
        "财务部",
        "信息技术部",
        "销售部",
        "门店运营部",
        "运维组",
    } <= names
    assert sum(1 for d in org["departments"] if d["name"].endswith("店")) >= 10
    assert len(users) == 300
    assert sum(1 for u in users if CJK.match(u["name"])) > 280
    assert any(u["userid"] != u["userid"].lower() for u in users)
    assert all(re.fullmatch(r"[A-Za-z0-9_.@-]+", u["userid"]) for u in users)
    assert {u["status"] for u in users} == {1, 2, 4, 5}
    assert any(u["name"] == u["userid"] for u in users if u["userid"] != "test01")
    assert any(u["userid"] == "test01" for u in users)
    assert any(len(u["department"]) > 1 for u in users)
    assert sum(u["is_leader_in_dept"][0] for u in users) >= 20
    assert sum(1 for u in users if u["direct_leader"]) >= 290
    assert len({u["mobile"] for u in users}) == 300
    creators = {c["creator"] for c in org["appchats"]}
    assert creators == {OUR_AGENTID, OTHER_AGENTID}
    groups = org["customer_groups"]
    assert any(m["type"] == 2 for g in groups for m in g["members"])
    assert any(g["owner"] == org["departed_users"][0]["userid"] for g in groups)
    assert [t["tagname"] for t in org["tags"]] == ["党员", "新员工", "门店店长", "信息安全联络人", "值班人员"]


@pytest.mark.parametrize("n", [5, 12, 1000])
def test_generated_sizes_build(n):
    data = load_org(f"generated:{n}")
    assert len(data.users) == n
    assert all(d in data.departments for u in data.users.values() for d in u.departments)


def test_generated_rejects_a_bad_spec():
    with pytest.raises(OrgError):
        load_org("generated:abc")
    with pytest.raises(OrgError):
        load_org("generated:2")


MINIMAL = {
    "corp_id": "ww0000000000000001",
    "apps": [{"agentid": 1000002, "secret": "s" * 43, "visibility": {"departments": [1]}}],
    "departments": [{"id": 1, "name": "示例"}, {"id": 2, "name": "研发部", "parentid": 1}],
    "users": [
        {"userid": "ZhangSan", "name": "张三", "department": [2], "is_leader_in_dept": [1]},
        {"userid": "lisi", "name": "李四", "department": [2], "direct_leader": ["ZhangSan"]},
    ],
    "appchats": [{"chatid": "chat1", "name": "研发群", "owner": "zhangsan", "members": ["ZhangSan", "lisi"]}],
}


def test_a_yaml_org_file_loads(tmp_path):
    path = tmp_path / "org.yaml"
    path.write_text(yaml.safe_dump(MINIMAL, allow_unicode=True), encoding="utf-8")
    tenant = Tenant.from_source(str(path))
    assert tenant.find_user("zhangsan").userid == "ZhangSan"
    assert tenant.data.department_leaders(2) == ["ZhangSan"]
    assert tenant.data.chats["chat1"].creator == 1000002


def test_a_json_org_file_loads(tmp_path):
    path = tmp_path / "org.json"
    path.write_text(json.dumps(MINIMAL, ensure_ascii=False), encoding="utf-8")
    assert len(load_org(path).users) == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["users"].append({"userid": "zhangsan", "name": "重复"}), "duplicate userid"),
        (lambda o: o["users"].append({"userid": "wang", "name": "王", "department": [9]}), "unknown department 9"),
        (lambda o: o["users"].append({"userid": "bad id", "name": "x"}), "invalid userid"),
        (lambda o: o["departments"].append({"id": 3, "name": "孤儿", "parentid": 42}), "unknown parentid"),
        (lambda o: o.pop("apps"), "at least one self-built app"),
        (lambda o: o["appchats"][0].update(owner="nobody"), "owner must be a member"),
        (lambda o: o["users"][0].update(status=3), "status"),
    ],
)
def test_org_errors_name_the_bad_entry(mutate, message):
    org = json.loads(json.dumps(MINIMAL))
    mutate(org)
    with pytest.raises(OrgError, match=message):
        load_org(org)


def test_an_unreadable_org_file_is_a_clear_error(tmp_path):
    with pytest.raises(OrgError, match="cannot read"):
        load_org(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(OrgError, match="invalid JSON"):
        load_org(str(bad))
