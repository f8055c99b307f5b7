"""Every endpoint function against the sandbox tenant over real HTTP: the request as WeCom documents it
(checked in the emulator's request log), the answer unwrapped, and the rules that matter."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.support.emulator import AMR, JPG, MP4, PNG
from wecom_plugin.errors import PermanentError
from wecom_plugin.wecom.api import appchat, auth, department, externalcontact, joined, media, message, robot, split, tag
from wecom_plugin.wecom.api import user as user_api
from wecom_plugin.wecom.api.message import Article, Button, MpArticle
from wecom_plugin.wecom.budget import MemoryBudget
from wecom_plugin.wecom.client import WeComClient, same_userid
from wecom_plugin.wecom.errors import WeComApiError, WeComConfigError


@pytest.fixture
def client(emulator):
    with WeComClient(
        corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url, agent_id=emulator.OUR
    ) as c:
        yield c


@pytest.fixture
def contact(emulator):
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret("contact_sync"), base_url=emulator.url) as c:
        yield c


def last(emulator, endpoint: str) -> dict:
    return emulator.requests(endpoint=endpoint)[-1]


def dept_id(emulator, name: str) -> int:
    return next(d.id for d in emulator.data.departments.values() if d.name == name)


# --- ids ----------------------------------------------------------------------------------------
def test_ids_are_joined_from_ints_or_strings_and_split_back():
    assert joined([2, "3", 4]) == "2|3|4"
    assert joined("a|b") == "a|b" and joined(None) == ""
    assert split("a||b") == ("a", "b") and split(["x", ""]) == ("x",) and split(None) == ()


# --- departments, users, tags -------------------------------------------------------------------
def test_department_list_simplelist_and_get(client, emulator):
    tree = department.list_departments(client)
    assert {d["id"] for d in tree} == set(emulator.data.subtree(1))
    it = dept_id(emulator, "信息技术部")
    sub = department.list_departments(client, it)
    assert {d["id"] for d in sub} == set(emulator.data.subtree(it))
    assert last(emulator, "department/list")["query"]["id"] == str(it)
    ids = department.simplelist(client)
    assert set(ids[0]) == {"id", "parentid", "order"}
    assert department.get(client, it)["name"] == "信息技术部"


def test_user_get_is_case_insensitive_and_returns_the_member(client, emulator):
    member = emulator.users()[0]
    got = user_api.get(client, member.userid.upper())
    assert same_userid(got["userid"], member.userid) and got["name"] == member.name
    assert "errcode" not in got


def test_user_simplelist_and_list_return_direct_members(client, emulator):
    it = dept_id(emulator, "信息技术部")
    for d in emulator.data.subtree(it):
        if emulator.data.dept_members[d]:
            break
    simple = user_api.simplelist(client, d)
    detailed = user_api.list_users(client, d)
    expected = {k.lower() for k in emulator.data.dept_members[d]}
    assert {u["userid"].lower() for u in simple} == expected
    assert {u["userid"].lower() for u in detailed} == expected
    assert "status" in detailed[0]


def test_user_list_id_pages_with_the_contact_secret(contact, emulator):
    pages = list(user_api.list_id_pages(contact, limit=25))
    rows = [r for p in pages for r in p.rows]
    assert len(pages) > 1 and pages[-1].next_cursor == "" and all(p.next_cursor for p in pages[:-1])
    expected = {(u.userid, d) for u in emulator.data.users.values() for d in u.departments}
    assert {(r["userid"], r["department"]) for r in rows} == expected
    assert list(user_api.list_id(contact)) == rows
    assert emulator.requests(endpoint="user/list_id")[1]["body"] == {"limit": 25, "cursor": pages[0].next_cursor}
    with pytest.raises(ValueError):
        next(user_api.list_id_pages(contact, limit=10_001))


def test_user_list_id_with_an_app_secret_is_a_config_error(client):
    with pytest.raises(WeComConfigError) as info:
        list(user_api.list_id(client))
    assert info.value.errcode == 48002


def test_tags_list_and_get_with_integer_ids(client, emulator):
    tags = tag.list_tags(client)
    assert [t["tagid"] for t in tags] == sorted(emulator.data.tags)
    duty = tag.get(client, 5)
    assert duty["tagname"] == emulator.data.tags[5].tagname
    assert duty["partylist"] == list(emulator.data.tags[5].parties)
    assert all(isinstance(p, int) for p in duty["partylist"])
    assert last(emulator, "tag/get")["query"]["tagid"] == "5"


# --- app chats ----------------------------------------------------------------------------------
def test_appchat_create_get_update(client, emulator):
    members = [u.userid for u in emulator.users()[:4]]
    chatid = appchat.create(client, members[:3], name="规则群", owner=members[0], chatid="rules01")
    assert chatid == "rules01"
    assert last(emulator, "appchat/create")["body"] == {
        "name": "规则群", "owner": members[0], "userlist": members[:3], "chatid": "rules01",
    }  # fmt: skip
    info = appchat.get(client, chatid)
    assert info["name"] == "规则群" and same_userid(info["owner"], members[0])
    appchat.update(client, chatid, add_user_list=[members[3]], del_user_list=[members[2]])
    assert last(emulator, "appchat/update")["body"] == {
        "chatid": chatid, "add_user_list": [members[3]], "del_user_list": [members[2]],
    }  # fmt: skip
    after = {u.lower() for u in appchat.get(client, chatid)["userlist"]}
    assert after == {members[0].lower(), members[1].lower(), members[3].lower()}
    with pytest.raises(ValueError):
        appchat.create(client, members[:1])


def test_appchat_create_without_chatid_returns_the_generated_one(client, emulator):
    chatid = appchat.create(client, [u.userid for u in emulator.users()[:2]])
    assert chatid and chatid in emulator.data.chats


def test_a_chat_of_another_app_is_refused(client, emulator):
    with pytest.raises(WeComApiError) as info:
        appchat.get(client, emulator.other_chats()[0].chatid)
    assert info.value.errcode == 86008


def _uploaded(client) -> dict[str, str]:
    return {
        "image": media.upload(client, "image", PNG, "a.png", "image/png").media_id,
        "voice": media.upload(client, "voice", AMR, "a.amr").media_id,
        "video": media.upload(client, "video", MP4, "a.mp4").media_id,
        "file": media.upload(client, "file", b"hello world", "a.txt").media_id,
    }


def test_appchat_send_builds_every_msgtype_exactly_with_safe_at_the_top_level(client, emulator):
    chatid = emulator.our_chats()[0].chatid
    ids = _uploaded(client)
    cases = [
        (message.text("你的快递已到\n请领取"), 1, {"text": {"content": "你的快递已到\n请领取"}, "safe": 1}),
        (message.image(ids["image"]), 0, {"image": {"media_id": ids["image"]}, "safe": 0}),
        (message.voice(ids["voice"]), 0, {"voice": {"media_id": ids["voice"]}, "safe": 0}),
        (message.video(ids["video"], "标题", "描述"), 1,
         {"video": {"media_id": ids["video"], "title": "标题", "description": "描述"}, "safe": 1}),
        (message.file(ids["file"]), 1, {"file": {"media_id": ids["file"]}, "safe": 1}),
        (message.textcard("领奖通知", "<div>描述</div>", "https://example.com", "更多"), 0,
         {"textcard": {"title": "领奖通知", "description": "<div>描述</div>", "url": "https://example.com",
                       "btntxt": "更多"}, "safe": 0}),
        (message.news([Article("中秋节礼品领取", "豪礼", "https://example.com", "https://example.com/p.png")]), 0,
         {"news": {"articles": [{"title": "中秋节礼品领取", "description": "豪礼", "url": "https://example.com",
                                 "picurl": "https://example.com/p.png"}]}}),
        (message.mpnews([MpArticle("标题", ids["image"], "<p>正文</p>", author="IT")]), 1,
         {"mpnews": {"articles": [{"title": "标题", "thumb_media_id": ids["image"], "author": "IT",
                                   "content": "<p>正文</p>"}]}, "safe": 1}),
        (message.markdown("**会议室**已预定"), 0, {"markdown": {"content": "**会议室**已预定"}}),
    ]  # fmt: skip
    for msg, safe, expected in cases:
        appchat.send(client, chatid, msg, safe=safe)
        body = last(emulator, "appchat/send")["body"]
        assert body == {"chatid": chatid, "msgtype": msg.msgtype, **expected}, msg.msgtype
        inner = body[msg.msgtype]
        assert "safe" not in inner  # never copied into the inner object (the wechatpy bug)
    assert all(r["errcode"] == 0 for r in emulator.requests(endpoint="appchat/send"))
    delivered = emulator.admin(f"chats/{chatid}")["messages"]
    assert len(delivered) == len(cases)


def test_appchat_send_refuses_safe_where_wecom_would(client, emulator):
    chatid = emulator.our_chats()[0].chatid
    with pytest.raises(ValueError):
        appchat.send(client, chatid, message.news([Article("t")]), safe=1)
    with pytest.raises(ValueError):
        appchat.send(client, chatid, message.markdown("x"), safe=1)
    with pytest.raises(ValueError):
        appchat.send(client, chatid, message.text("x"), safe=2)
    with pytest.raises(ValueError):
        appchat.send(client, chatid, message.button_card(task_id="t1", title="x", buttons=[Button("ok", key="k")]))
    assert emulator.requests(endpoint="appchat/send") == []


def test_appchat_send_with_members_takes_person_times_from_the_budget(emulator):
    budget = MemoryBudget()
    chat = emulator.our_chats()[0]
    members = list(chat.members.values())
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url, budget=budget) as c:
        appchat.send(c, chat.chatid, message.text("hi"), members=members)
    assert budget.acquire("appchat.send.corp_minute", n=18_000 - len(members)).ok
    assert not budget.acquire("appchat.send.corp_minute").ok
    assert budget.acquire("appchat.send.member_minute", members[0].lower(), n=179).ok
    assert not budget.acquire("appchat.send.member_minute", members[0].lower()).ok


# --- media --------------------------------------------------------------------------------------
def test_media_upload_every_type(client, emulator):
    for media_type, content in (("image", JPG), ("voice", AMR), ("video", MP4), ("file", b"12345678")):
        up = media.upload(client, media_type, content, f"x.{media_type}")
        assert up.type == media_type and up.media_id in emulator.data.media and up.created_at > 0
    logged = last(emulator, "media/upload")
    assert logged["query"]["type"] == "file" and logged["body"]["media"]["size"] == 8
    with pytest.raises(ValueError):
        media.upload(client, "image", b"12345", "tiny.png")
    with pytest.raises(ValueError):
        media.upload(client, "sticker", PNG, "x")


def test_media_upload_wrong_format_is_permanent(client):
    with pytest.raises(WeComApiError) as info:
        media.upload(client, "image", b"GIF89a" + b"\x00" * 20, "x.gif")
    assert info.value.errcode == 40004


# --- message/send -------------------------------------------------------------------------------
def test_message_send_surfaces_partly_invalid_recipients_lower_cased(client, emulator):
    a, b = emulator.users()[:2]
    result = message.send(
        client, message.text("通知"), touser=[a.userid, "GhostUser", b.userid.upper()], toparty=[9999], totag=[777]
    )
    assert result.msgid and not result.all_accepted
    assert result.invaliduser == ("ghostuser",)
    assert result.invalidparty == ("9999",) and result.invalidtag == ("777",)
    body = last(emulator, "message/send")["body"]
    assert body == {
        "touser": f"{a.userid}|GhostUser|{b.userid.upper()}", "toparty": "9999", "totag": "777",
        "msgtype": "text", "text": {"content": "通知"}, "safe": 0, "agentid": emulator.OUR,
        "enable_id_trans": 0, "enable_duplicate_check": 0,
    }  # fmt: skip


def test_message_send_to_departments_and_tags_by_integer_id(client, emulator):
    it = dept_id(emulator, "信息技术部")
    result = message.send(client, message.markdown("**值班**"), toparty=[it], totag=[5])
    assert result.all_accepted
    body = last(emulator, "message/send")["body"]
    assert body["toparty"] == str(it) and body["totag"] == "5" and "safe" not in body


def test_message_send_all_invalid_raises_81013_with_the_echo(client):
    with pytest.raises(WeComApiError) as info:
        message.send(client, message.text("x"), touser=["Ghost", "nobody"])
    assert info.value.errcode == 81013 and info.value.body["invaliduser"] == "ghost|nobody"


def test_message_send_duplicate_check_fields(client, emulator):
    userid = emulator.users()[0].userid
    first = message.send(client, message.text("once"), touser=[userid], enable_duplicate_check=True,
                         duplicate_check_interval=600)  # fmt: skip
    second = message.send(client, message.text("once"), touser=[userid], enable_duplicate_check=True,
                          duplicate_check_interval=600)  # fmt: skip
    body = last(emulator, "message/send")["body"]
    assert body["enable_duplicate_check"] == 1 and body["duplicate_check_interval"] == 600
    assert first.msgid == second.msgid  # WeCom answers the original
    delivered = [m for m in emulator.admin("messages", query={"path": "message"})["messages"] if m["delivered"]]
    assert len(delivered) == 1
    with pytest.raises(ValueError):
        message.send(client, message.text("x"), touser=[userid], enable_duplicate_check=True,
                     duplicate_check_interval=5 * 3600)  # fmt: skip


def test_message_send_checks_what_wecom_would_refuse(client, emulator):
    userid = emulator.users()[0].userid
    with pytest.raises(ValueError):
        message.send(client, message.news([Article("t")]), touser=[userid], safe=1)
    with pytest.raises(ValueError):
        message.send(client, message.text("x"))
    with pytest.raises(ValueError):
        message.send(client, message.text("x"), toparty=list(range(1, 102)))
    with pytest.raises(ValueError):
        message.news([Article(str(i)) for i in range(9)])
    thumb = media.upload(client, "image", PNG, "t.png").media_id
    message.send(client, message.mpnews([MpArticle("t", thumb, "c")]), touser=[userid], safe=2)  # mpnews takes 2
    assert last(emulator, "message/send")["body"]["safe"] == 2
    assert [r["errcode"] for r in emulator.requests(endpoint="message/send")] == [0]


def test_a_button_card_returns_a_response_code_and_update_template_card_greys_it(client, emulator):
    a, b = emulator.users()[:2]
    card = message.button_card(
        task_id="req-42-v1",
        title="VPN 账号申请",
        desc="申请人:张三",
        sub_title_text="请在 24 小时内处理",
        horizontal=[{"keyname": "申请人", "value": "张三"}],
        card_action={"type": 1, "url": "https://example.com/req/42"},
        buttons=[Button("同意", key="approve:42", style=1), Button("驳回", key="reject:42", style=4)],
    )
    result = message.send(client, card, touser=[a.userid, b.userid])
    assert result.response_code and result.all_accepted
    body = last(emulator, "message/send")["body"]
    assert "safe" not in body and "safe" not in body["template_card"]
    assert body["template_card"]["button_list"] == [
        {"text": "同意", "style": 1, "key": "approve:42"},
        {"text": "驳回", "style": 4, "key": "reject:42"},
    ]
    assert (
        body["template_card"]["card_type"] == "button_interaction" and body["template_card"]["task_id"] == "req-42-v1"
    )
    invalid = message.update_template_card(client, result.response_code, replace_name="已同意", atall=True)
    assert invalid == ()
    sent = last(emulator, "message/update_template_card")["body"]
    assert sent == {"atall": 1, "agentid": emulator.OUR, "response_code": result.response_code,
                    "button": {"replace_name": "已同意"}}  # fmt: skip
    with pytest.raises(WeComApiError) as info:  # single use
        message.update_template_card(client, result.response_code, replace_name="again", atall=True)
    assert info.value.errcode == 42022


def test_update_template_card_can_replace_the_card_for_some_users(client, emulator):
    a, b = emulator.users()[:2]
    card = message.button_card(task_id="req-43", title="申请", buttons=[Button("同意", key="ok")])
    code = message.send(client, card, touser=[a.userid]).response_code
    new = message.button_card(task_id="req-43", title="申请 已同意", buttons=[Button("同意", key="ok")])
    invalid = message.update_template_card(client, code, card=new, userids=[a.userid, b.userid], partyids=["2"])
    assert b.userid.lower() in invalid and a.userid.lower() not in invalid
    sent = last(emulator, "message/update_template_card")["body"]
    assert sent["partyids"] == [2] and sent["template_card"]["main_title"]["title"] == "申请 已同意"
    with pytest.raises(ValueError):
        message.update_template_card(client, code)


def test_message_send_takes_each_named_member_from_the_budget(emulator):
    budget = MemoryBudget()
    userid = emulator.users()[0].userid
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url,
                     agent_id=emulator.OUR, budget=budget) as c:  # fmt: skip
        for _ in range(27):
            message.send(c, message.text("x"), touser=[userid])
        from wecom_plugin.wecom.budget import BudgetExhausted

        with pytest.raises(BudgetExhausted):
            message.send(c, message.text("x"), touser=[userid.upper()])
    assert len(emulator.requests(endpoint="message/send")) == 27


# --- the robot ----------------------------------------------------------------------------------
def test_robot_send_uses_the_key_and_no_access_token(emulator):
    key = next(iter(emulator.data.robots))
    chatid = emulator.data.robots[key].chatid
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url) as fresh:
        robot.send(fresh, key, robot.text("广州今日天气：29度", mentioned_list=["@all"]))
        robot.send(fresh, f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={key}", robot.markdown("**md**"))
        robot.send(fresh, key, robot.image(PNG))
        robot.send(fresh, key, robot.news([Article("标题", "描述", "https://example.com")]))
        media_id = robot.upload_media(fresh, key, "file", b"robot file", "r.txt")
        robot.send(fresh, key, robot.file(media_id))
    sends = emulator.requests(endpoint="webhook/send")
    assert [r["errcode"] for r in sends] == [0] * 5
    assert all(r["query"] == {"key": key} for r in sends)  # no access_token, and the full URL became the key
    assert emulator.requests(endpoint="gettoken") == []  # a robot never triggers a token fetch
    assert sends[0]["body"] == {
        "msgtype": "text",
        "text": {"content": "广州今日天气：29度", "mentioned_list": ["@all"]},
    }
    assert sends[2]["body"]["image"] == {
        "base64": base64.b64encode(PNG).decode(), "md5": hashlib.md5(PNG).hexdigest(),
    }  # fmt: skip
    assert len(emulator.admin(f"chats/{chatid}")["messages"]) == 5


def test_robot_with_an_unknown_key_is_a_config_error(client, emulator):
    with pytest.raises(WeComConfigError) as info:
        robot.send(client, "no-such-key", robot.text("x"))
    assert info.value.errcode == 93000
    with pytest.raises(ValueError):
        robot.send(client, "k", message.video("m"))
    with pytest.raises(ValueError):
        robot.webhook_key("https://qyapi.weixin.qq.com/cgi-bin/webhook/send")


# --- customer groups ----------------------------------------------------------------------------
def _resigned(emulator) -> str:
    return next(iter(emulator.data.departed.values())).userid


def _heir(emulator, exclude=()) -> str:
    return next(u for u in emulator.users() if u.key not in exclude and u.customer_contact).userid


def test_groupchat_list_pages_and_get(client, emulator):
    pages = list(externalcontact.groupchat_list_pages(client, limit=3))
    rows = [r for p in pages for r in p.rows]
    active = [g.chat_id for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users]
    assert [r["chat_id"] for r in rows] == active and len(pages) > 1
    assert emulator.requests(endpoint="externalcontact/groupchat/list")[0]["body"] == {"status_filter": 0, "limit": 3}
    resigned = list(externalcontact.groupchat_list(client, owner_userids=[_resigned(emulator)], status_filter=1))
    assert resigned and {r["status"] for r in resigned} == {1}
    info = externalcontact.groupchat_get(client, active[0])
    assert info["chat_id"] == active[0] and {m["type"] for m in info["member_list"]} == {1, 2}
    assert "name" in info["member_list"][0]


def test_groupchat_transfer_returns_per_chat_failures_as_data(client, emulator):
    resigned = [
        g.chat_id for g in emulator.data.customer_groups.values() if g.owner.lower() == _resigned(emulator).lower()
    ]
    active = next(g for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users)
    result = externalcontact.transfer(client, [*resigned, active.chat_id, "nope"], _heir(emulator))
    assert set(result.transferred) == set(resigned)
    failed = {f.chat_id: f.errcode for f in result.failed}
    assert failed == {active.chat_id: 90500, "nope": 90501}
    assert not result.all_transferred
    assert isinstance(result.failed[0].error(), PermanentError)


def test_groupchat_onjob_transfer_reports_the_third_move_per_chat(client, emulator):
    group = next(g for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users)
    original = group.owner
    a = _heir(emulator, {original.lower()})
    b = _heir(emulator, {original.lower(), a.lower()})
    assert externalcontact.onjob_transfer(client, [group.chat_id], a).all_transferred
    assert externalcontact.onjob_transfer(client, [group.chat_id], b).all_transferred
    third = externalcontact.onjob_transfer(client, [group.chat_id], original)
    assert third.transferred == () and third.failed[0].errcode == 45009
    assert third.failed[0].error().retry_after > 0  # a per-chat limit: later, not never
    with pytest.raises(ValueError):
        externalcontact.onjob_transfer(client, [], a)


def test_groupchat_needs_an_app_in_customer_contact(emulator):
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(emulator.OTHER), base_url=emulator.url) as other:
        with pytest.raises(WeComConfigError) as info:
            list(externalcontact.groupchat_list(other))
    assert info.value.errcode == 48002


# --- OAuth --------------------------------------------------------------------------------------
def test_getuserinfo_for_a_member_and_a_non_member(client, emulator):
    member = emulator.users()[2]
    code = emulator.admin("oauth/code", userid=member.userid)["code"]
    identity = auth.getuserinfo(client, code)
    assert identity.is_member and identity.userid == member.userid
    with pytest.raises(WeComApiError) as info:
        auth.getuserinfo(client, code)  # single use
    assert info.value.errcode == 40029
    outsider = auth.getuserinfo(client, emulator.admin("oauth/code", openid="oAbc", external_userid="wmX")["code"])
    assert not outsider.is_member and (outsider.openid, outsider.external_userid) == ("oAbc", "wmX")
    assert "code" in last(emulator, "auth/getuserinfo")["query"]
