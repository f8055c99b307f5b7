"""Typed events from the contract's samples (§8, §14.3, §7.5); anything else is an UnknownEvent."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wecom import fixture
from wecom_plugin.wecom import safexml
from wecom_plugin.wecom.events import (
    REGISTRY,
    BatchJobResult,
    Event,
    ExternalChatChanged,
    PartyCreated,
    PartyDeleted,
    PartyUpdated,
    SelectedItem,
    TagUpdated,
    TemplateCardEvent,
    TextMessage,
    UnknownEvent,
    UserCreated,
    UserDeleted,
    UserId,
    UserUpdated,
    parse_event,
)


def event_of(name: str) -> Event:
    return parse_event(safexml.parse(fixture(name)))


def test_create_user():
    event = event_of("create_user.xml")
    assert type(event) is UserCreated
    assert (event.msg_type, event.event, event.change_type) == ("event", "change_contact", "create_user")
    assert event.from_user == "sys" and event.to_user == "toUser" and event.create_time == 1403610513
    assert event.agent_id is None  # contact-sync callbacks carry no AgentID
    assert event.user_id == "zhangsan" and event.new_user_id is None and event.current_user_id == "zhangsan"
    assert event.name == "张三" and event.position == "产品经理" and event.address == "广州市"
    assert event.departments == (1, 2, 3) and event.main_department == 1 and event.is_leader_in_dept == (1, 0, 0)
    assert event.direct_leader == ("lisi", "wangwu") and all(isinstance(u, UserId) for u in event.direct_leader)
    assert (event.status, event.gender, event.mobile) == (1, 1, "13800000000")
    assert event.email == "zhangsan@gzdev.com" and event.biz_mail == "zhangsan@qyycs2.wecom.work"
    items = event.ext_attr["Item"]
    assert items[0] == {"Name": "爱好", "Type": "0", "Text": {"Value": "旅游"}}
    assert items[1]["Web"] == {"Title": "企业微信", "Url": "https://work.weixin.qq.com"}


def test_update_user_with_a_new_userid():
    event = event_of("update_user.xml")
    assert type(event) is UserUpdated
    assert event.user_id == "zhangsan" and event.new_user_id == "zhangsan001"
    assert event.current_user_id == "zhangsan001"
    assert event.status == 1 and event.departments == (1, 2, 3)
    assert event.biz_mail is None and event.direct_leader is None  # absent means "not changed", not ""


def test_update_user_after_2022_carries_only_ids():
    xml = (
        fixture("delete_user.xml")
        .replace(b"delete_user", b"update_user")
        .replace(b"</xml>", b"<Department><![CDATA[4]]></Department></xml>")
    )
    event = parse_event(safexml.parse(xml))
    assert type(event) is UserUpdated and event.departments == (4,)
    assert all(getattr(event, name) is None for name in ("name", "status", "mobile", "main_department", "ext_attr"))


def test_status_change_arrives_as_update_user():
    xml = (
        fixture("delete_user.xml")
        .replace(b"delete_user", b"update_user")
        .replace(b"</xml>", b"<Status>5</Status></xml>")
    )
    event = parse_event(safexml.parse(xml))
    assert type(event) is UserUpdated and event.status == 5


def test_delete_user():
    event = event_of("delete_user.xml")
    assert type(event) is UserDeleted and event.user_id == "zhangsan"


@pytest.mark.parametrize(
    "name, cls, fields",
    [
        ("create_party.xml", PartyCreated, {"party_id": 2, "name": "张三", "parent_id": 1, "order": 1}),
        ("update_party.xml", PartyUpdated, {"party_id": 2, "name": "张三", "parent_id": 1, "order": None}),
        ("delete_party.xml", PartyDeleted, {"party_id": 2, "name": None, "parent_id": None, "order": None}),
    ],
)
def test_party_events(name, cls, fields):
    event = event_of(name)
    assert type(event) is cls
    assert {k: getattr(event, k) for k in fields} == fields


def test_update_tag():
    event = event_of("update_tag.xml")
    assert type(event) is TagUpdated and event.tag_id == 1
    assert event.add_user_items == ("zhangsan", "lisi") and event.del_user_items == ("zhangsan1", "lisi1")
    assert event.add_party_items == (1, 2) and event.del_party_items == (3, 4)


def test_update_tag_without_items():
    xml = (
        b"<xml><MsgType>event</MsgType><Event>change_contact</Event>"
        b"<ChangeType>update_tag</ChangeType><TagId>7</TagId></xml>"
    )
    event = parse_event(safexml.parse(xml))
    assert type(event) is TagUpdated
    assert (event.add_user_items, event.del_user_items, event.add_party_items, event.del_party_items) == ((),) * 4


def test_change_external_chat_update():
    event = event_of("change_external_chat_update.xml")
    assert type(event) is ExternalChatChanged and event.change_type == "update"
    assert event.chat_id == "CHAT_ID" and event.update_detail == "add_member"
    assert (event.join_scene, event.quit_scene, event.mem_change_cnt) == (1, 0, 10)
    assert event.mem_change_list == ("Jack", "Rose")
    assert event.last_mem_ver == "9c3f97c2ada667dfb5f6d03308d963e1"
    assert event.cur_mem_ver == "71217227bbd112ecfe3a49c482195cb4"


@pytest.mark.parametrize("kind", ["create", "dismiss"])
def test_change_external_chat_create_and_dismiss(kind):
    event = event_of(f"change_external_chat_{kind}.xml")
    assert type(event) is ExternalChatChanged and event.change_type == kind and event.chat_id == "CHAT_ID"
    assert event.mem_change_list == () and event.update_detail is None


def test_change_external_chat_with_one_member_changed():
    xml = fixture("change_external_chat_update.xml").replace(b"<Item>Rose</Item>", b"")
    assert parse_event(safexml.parse(xml)).mem_change_list == ("Jack",)


def test_batch_job_result():
    event = event_of("batch_job_result.xml")
    assert type(event) is BatchJobResult
    assert event.job_id == "S0MrnndvRG5fadSlLwiBqiDDbM143UqTmKP3152FZk4" and event.job_type == "sync_user"
    assert (event.err_code, event.err_msg) == (0, "ok")
    assert event.from_user == "FromUser" and event.to_user == "wx28dbb14e3720FAKE"


def test_text_message():
    event = event_of("text.xml")
    assert type(event) is TextMessage
    assert event.msg_id == "4561255354251345929" and event.content == "hello"
    assert event.from_user == "mycreate" and event.agent_id == 218 and event.create_time == 1409659813


def test_template_card_event():
    event = event_of("template_card_event.xml")
    assert type(event) is TemplateCardEvent
    assert (event.event_key, event.task_id, event.card_type) == ("key111", "taskid111", "text_notice")
    assert event.response_code == "ResponseCode" and event.agent_id == 1 and event.from_user == "FromUser"
    assert event.selected_items == (
        SelectedItem("QuestionKey1", ("OptionId1", "OptionId2")),
        SelectedItem("QuestionKey2", ("OptionId3", "OptionId4")),
    )


def test_template_card_event_with_one_question_and_one_option():
    xml = (
        b"<xml><MsgType>event</MsgType><Event>template_card_event</Event><EventKey>approve:42</EventKey>"
        b"<TaskId>req-42-v1</TaskId><CardType>button_interaction</CardType>"
        b"<SelectedItems><SelectedItem><QuestionKey>dur</QuestionKey><OptionIds><OptionId>7d</OptionId>"
        b"</OptionIds></SelectedItem></SelectedItems></xml>"
    )
    event = parse_event(safexml.parse(xml))
    assert event.selected_items == (SelectedItem("dur", ("7d",)),) and event.event_key == "approve:42"


def test_template_card_event_without_selection():
    xml = fixture("template_card_event.xml")
    xml = xml[: xml.index(b"<SelectedItems>")] + b"</xml>"
    assert parse_event(safexml.parse(xml)).selected_items == ()


# --- ChangeType with or without CDATA, whitespace, case -----------------------------------------
@pytest.mark.parametrize("name, change", [("create_user.xml", "create_user"), ("update_tag.xml", "update_tag")])
def test_change_type_with_or_without_cdata_parses_identically(name, change):
    xml = fixture(name)
    plain = xml.replace(f"<![CDATA[{change}]]>".encode(), change.encode())
    wrapped = plain.replace(f"<ChangeType>{change}<".encode(), f"<ChangeType><![CDATA[{change}]]><".encode())
    assert plain != wrapped
    assert b"<![CDATA[" + change.encode() in wrapped and b"<ChangeType>" + change.encode() in plain
    assert safexml.parse(plain) == safexml.parse(wrapped)
    assert parse_event(safexml.parse(plain)) == parse_event(safexml.parse(wrapped))
    assert parse_event(safexml.parse(plain)).change_type == change


def test_keys_are_trimmed_and_matched_case_insensitively():
    xml = fixture("delete_user.xml").replace(b"<ChangeType>delete_user<", b"<ChangeType>\n  Delete_User \n<")
    event = parse_event(safexml.parse(xml))
    assert type(event) is UserDeleted and event.change_type == "delete_user"


# --- userids --------------------------------------------------------------------------------------
def test_userids_are_kept_as_sent_and_offer_a_folded_form():
    xml = fixture("delete_user.xml").replace(b"zhangsan", b"ZhangSan")
    event = parse_event(safexml.parse(xml))
    assert event.user_id == "ZhangSan" and event.user_id.folded == "zhangsan"
    tag = parse_event(safexml.parse(fixture("update_tag.xml").replace(b"zhangsan,lisi]", b"zhangsan,LiSi]")))
    assert [u.folded for u in tag.add_user_items] == ["zhangsan", "lisi"] and tag.add_user_items[1] == "LiSi"
    assert UserId("Straße").folded == "strasse"


# --- unknown and malformed -----------------------------------------------------------------------
def test_unregistered_events_are_unknown_and_keep_their_fields():
    event = event_of("unknown_enter_agent.xml")
    assert type(event) is UnknownEvent and event.event == "enter_agent" and event.agent_id == 1
    assert event.fields["EventKey"] == "" and event.fields["Event"] == "enter_agent"


@pytest.mark.parametrize(
    "xml",
    [
        b"<xml/>",
        b"<xml><MsgType>image</MsgType><PicUrl>u</PicUrl></xml>",
        b"<xml><MsgType>event</MsgType><Event>change_contact</Event><ChangeType>create_robot</ChangeType></xml>",
        b"<xml><MsgType>event</MsgType><Event>change_contact</Event></xml>",
        b"<xml><Event>change_contact</Event><ChangeType>create_user</ChangeType></xml>",
    ],
)
def test_anything_else_is_an_unknown_event(xml):
    assert type(parse_event(safexml.parse(xml))) is UnknownEvent


def test_malformed_values_become_none_instead_of_errors():
    xml = (
        b"<xml><MsgType>event</MsgType><Event>change_contact</Event><ChangeType>create_user</ChangeType>"
        b"<CreateTime>soon</CreateTime><UserID>u1</UserID><Department>1,x,3</Department><MainDepartment>--1"
        b"</MainDepartment><Status><a>1</a></Status><AgentID>99999999999999999999999</AgentID></xml>"
    )
    event = parse_event(safexml.parse(xml))
    assert type(event) is UserCreated and event.user_id == "u1"
    assert (event.create_time, event.departments, event.main_department, event.status, event.agent_id) == (None,) * 5


def test_registry_covers_the_contract_events():
    assert set(REGISTRY) == {
        ("event", "change_contact", "create_user"),
        ("event", "change_contact", "update_user"),
        ("event", "change_contact", "delete_user"),
        ("event", "change_contact", "create_party"),
        ("event", "change_contact", "update_party"),
        ("event", "change_contact", "delete_party"),
        ("event", "change_contact", "update_tag"),
        ("event", "change_external_chat", None),
        ("event", "batch_job_result", None),
        ("event", "template_card_event", None),
        ("text", None, None),
    }


def test_events_are_frozen_and_hashable():
    event = event_of("create_user.xml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.user_id = UserId("x")  # type: ignore[misc]
    assert hash(event) == hash(event_of("create_user.xml"))
    assert hash(event_of("unknown_enter_agent.xml")) is not None


xml_values = st.recursive(
    st.text(max_size=20),
    lambda inner: st.dictionaries(st.text(max_size=12), inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "MsgType": st.sampled_from(["event", "text", "EVENT", "", "image"]) | xml_values,
        "Event": st.sampled_from(["change_contact", "change_external_chat", "batch_job_result", "template_card_event"])
        | xml_values,
        "ChangeType": st.sampled_from([k[2] for k in REGISTRY if k[2]] + ["update", "x"]) | xml_values,
    },
)
names = st.sampled_from(
    ["UserID", "NewUserID", "Department", "IsLeaderInDept", "Status", "Id", "TagId", "AddUserItems", "ChatId",
     "MemChangeList", "BatchJob", "MsgId", "Content", "SelectedItems", "CreateTime", "AgentID", "ExtAttr", "Other"]
)  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(header=headers, body=st.dictionaries(names, xml_values, max_size=8))
def test_parse_event_never_raises(header, body):
    event = parse_event({**body, **header})
    assert isinstance(event, Event)
