"""Callback payloads: the decrypted XML WeCom puts inside ``<Encrypt>`` (contract §8, §14.3, §7.5).

Pure functions: a change record or an app event in, the XML text out. Shapes follow the official
samples field by field, including their quirks: ``ChangeType`` is bare for member and department
events and CDATA-wrapped for ``update_tag`` and ``change_external_chat``; numbers are bare.

Contact-sync receivers configured after 2022-08-15 (the default) get **minimised** payloads (§2.1,
§8.1, §8.4): members carry only ``UserID`` (``NewUserID`` on a rename) and ``Department``,
departments only ``Id`` and ``ParentId``, and ``update_party`` fires only when the parent changes.
``full=True`` gives the pre-2022 payloads with every field.
"""

from __future__ import annotations

from typing import Any

from .state import (
    Change,
    DepartmentCreated,
    DepartmentDeleted,
    DepartmentUpdated,
    ExternalChatChanged,
    TagUpdated,
    UserCreated,
    UserDeleted,
    UserUpdated,
)
from .wxcrypto import cdata

# user_record field -> (XML element, bare number?) in the order of the §8.1 sample
USER_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("name", "Name", False),
    ("department", "Department", False),
    ("main_department", "MainDepartment", True),
    ("is_leader_in_dept", "IsLeaderInDept", False),
    ("direct_leader", "DirectLeader", False),
    ("position", "Position", False),
    ("mobile", "Mobile", True),
    ("gender", "Gender", True),
    ("email", "Email", False),
    ("biz_mail", "BizMail", False),
    ("status", "Status", True),
    ("avatar", "Avatar", False),
    ("alias", "Alias", False),
    ("telephone", "Telephone", False),
    ("address", "Address", False),
    ("english_name", "EnglishName", False),
)
ALWAYS_IN_CREATE_USER = {"name", "department", "main_department", "is_leader_in_dept", "status"}


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(x) for x in value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _el(tag: str, value: Any, bare: bool = False) -> str:
    text = _value(value)
    return f"<{tag}>{text if bare else cdata(text)}</{tag}>"


def _header(corp_id: str, from_user: str, create_time: int, msg_type: str = "event") -> str:
    return (
        f"<ToUserName>{cdata(corp_id)}</ToUserName><FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{int(create_time)}</CreateTime><MsgType>{cdata(msg_type)}</MsgType>"
    )


def _contact(corp_id: str, create_time: int, change_type: str, body: str, cdata_type: bool = False) -> str:
    kind = cdata(change_type) if cdata_type else change_type
    return (
        f"<xml>{_header(corp_id, 'sys', create_time)}<Event>{cdata('change_contact')}</Event>"
        f"<ChangeType>{kind}</ChangeType>{body}</xml>"
    )


def _user_fields(values: dict[str, Any], keep: set[str] | None) -> str:
    out = []
    for name, tag, bare in USER_FIELDS:
        if name not in values or (keep is not None and name not in keep):
            continue
        out.append(_el(tag, values[name], bare))
    return "".join(out)


def change_contact_xml(
    change: Change,
    corp_id: str,
    create_time: int,
    *,
    full: bool,
    all_fields: bool = False,
    current_user: dict[str, Any] | None = None,
    current_department: dict[str, Any] | None = None,
    minimal_update_user: str = "always",
) -> str | None:
    """The change_contact XML for ``change``, or None when WeCom would send nothing.

    Args:
        full: pre-2022 contact-sync receiver (every field) instead of the minimised payload.
        all_fields: update events carry every field, not only the changed ones.
        current_user / current_department: the entity after the change (for ``all_fields``).
        minimal_update_user: minimised mode only: ``"always"`` sends update_user for any change (UserID at
            least); ``"ids_changed"`` only when the userid or the departments changed.
    """
    if isinstance(change, UserCreated):
        user = change.user
        if full:
            fields = {k: v for k, v in user.items() if k in ALWAYS_IN_CREATE_USER or v not in ("", [], None)}
            body = _el("UserID", user["userid"]) + _user_fields(fields, None)
        else:
            body = _el("UserID", user["userid"]) + _el("Department", user["department"])
        return _contact(corp_id, create_time, "create_user", body)
    if isinstance(change, UserUpdated):
        changes = dict(change.changes)
        if all_fields and current_user is not None:
            changes = {**{k: v for k, v in current_user.items() if k != "userid"}, **changes}
        body = _el("UserID", change.userid)
        if change.new_userid:
            body += _el("NewUserID", change.new_userid)
        if full:
            body += _user_fields(changes, None)
        else:
            if "department" in changes:
                body += _el("Department", changes["department"])
            elif minimal_update_user == "ids_changed" and not change.new_userid:
                return None
        return _contact(corp_id, create_time, "update_user", body)
    if isinstance(change, UserDeleted):
        return _contact(corp_id, create_time, "delete_user", _el("UserID", change.userid))
    if isinstance(change, DepartmentCreated):
        if full:
            body = (
                f"<Id>{change.id}</Id>{_el('Name', change.name)}{_el('ParentId', change.parentid)}"
                f"<Order>{change.order}</Order>"
            )
        else:
            body = f"<Id>{change.id}</Id>{_el('ParentId', change.parentid)}"
        return _contact(corp_id, create_time, "create_party", body)
    if isinstance(change, DepartmentUpdated):
        changes = dict(change.changes)
        if all_fields and current_department is not None:
            changes = {"name": current_department["name"], "parentid": current_department["parentid"], **changes}
        if not full:
            if "parentid" not in change.changes:
                return None  # post-2022: update_party fires only on a parent change
            return _contact(
                corp_id, create_time, "update_party", f"<Id>{change.id}</Id>{_el('ParentId', changes['parentid'])}"
            )
        body = f"<Id>{change.id}</Id>"
        if "name" in changes:
            body += _el("Name", changes["name"])
        if "parentid" in changes:
            body += _el("ParentId", changes["parentid"])
        if body == f"<Id>{change.id}</Id>":
            return None  # only order/name_en changed: not part of the event
        return _contact(corp_id, create_time, "update_party", body)
    if isinstance(change, DepartmentDeleted):
        return _contact(corp_id, create_time, "delete_party", f"<Id>{change.id}</Id>")
    if isinstance(change, TagUpdated):
        items = (
            ("AddUserItems", change.add_users),
            ("DelUserItems", change.del_users),
            ("AddPartyItems", change.add_parties),
            ("DelPartyItems", change.del_parties),
        )
        if not any(v for _k, v in items):
            return None  # a rename only: no update_tag
        body = f"<TagId>{change.tagid}</TagId>" + "".join(_el(k, v) for k, v in items if v)
        return _contact(corp_id, create_time, "update_tag", body, cdata_type=True)
    return None


def external_chat_xml(change: ExternalChatChanged, corp_id: str, create_time: int) -> str:
    """change_external_chat (§8.6): create / update (UpdateDetail…) / dismiss."""
    body = (
        f"<xml>{_header(corp_id, 'sys', create_time)}<Event>{cdata('change_external_chat')}</Event>"
        f"{_el('ChatId', change.chat_id)}{_el('ChangeType', change.kind)}"
    )
    if change.kind == "update" and change.update_detail:
        body += _el("UpdateDetail", change.update_detail)
        if change.update_detail in ("add_member", "del_member"):
            body += f"<JoinScene>{change.join_scene or 0}</JoinScene><QuitScene>{change.quit_scene or 0}</QuitScene>"
            body += f"<MemChangeCnt>{len(change.members)}</MemChangeCnt>"
            body += "<MemChangeList>" + "".join(f"<Item>{cdata(m)}</Item>" for m in change.members) + "</MemChangeList>"
            if change.last_mem_ver:
                body += _el("LastMemVer", change.last_mem_ver)
            if change.cur_mem_ver:
                body += _el("CurMemVer", change.cur_mem_ver)
    return body + "</xml>"


def text_xml(corp_id: str, userid: str, create_time: int, content: str, msgid: str, agentid: int) -> str:
    """A text message a member sent to the app, laid out like Vector A (§7.5): one element per line."""
    return (
        f"<xml><ToUserName>{cdata(corp_id)}</ToUserName>\n<FromUserName>{cdata(userid)}</FromUserName>\n"
        f"<CreateTime>{int(create_time)}</CreateTime>\n<MsgType>{cdata('text')}</MsgType>\n"
        f"<Content>{cdata(content)}</Content>\n<MsgId>{msgid}</MsgId>\n<AgentID>{agentid}</AgentID>\n</xml>"
    )


def template_card_event_xml(
    corp_id: str,
    userid: str,
    create_time: int,
    *,
    event: str,
    event_key: str,
    task_id: str,
    card_type: str,
    response_code: str,
    agentid: int,
    selected: list[tuple[str, list[str]]] | None = None,
) -> str:
    """template_card_event / template_card_menu_event (§14.3), FromUserName = the member who clicked."""
    body = (
        f"<xml>{_header(corp_id, userid, create_time)}<Event>{cdata(event)}</Event>"
        f"{_el('EventKey', event_key)}{_el('TaskId', task_id)}{_el('CardType', card_type)}"
        f"{_el('ResponseCode', response_code)}<AgentID>{agentid}</AgentID>"
    )
    if selected:
        body += "<SelectedItems>"
        for question, options in selected:
            body += f"<SelectedItem>{_el('QuestionKey', question)}<OptionIds>"
            body += "".join(f"<OptionId>{cdata(o)}</OptionId>" for o in options)
            body += "</OptionIds></SelectedItem>"
        body += "</SelectedItems>"
    return body + "</xml>"


def enter_agent_xml(corp_id: str, userid: str, create_time: int, agentid: int) -> str:
    """enter_agent: a member opened the app in the client."""
    return (
        f"<xml>{_header(corp_id, userid, create_time)}<Event>{cdata('enter_agent')}</Event>"
        f"<EventKey>{cdata('')}</EventKey><AgentID>{agentid}</AgentID></xml>"
    )
