"""The read-only HTML page ``/_emulator/ui`` (brief: HTML page): renders, shows what the plugin did
(dropped messages included), and escapes user data."""

from __future__ import annotations

import re


def page(emulator, path="ui", status=200):
    resp = emulator.http.get(f"{emulator.base_url}/_emulator/{path}")
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["Content-Type"].startswith("text/html")
    return resp.text


def test_the_overview_renders_the_org_chats_and_logs(emulator):
    chat = emulator.our_chats()[0]
    emulator.post("appchat/send", {"chatid": chat.chatid, "msgtype": "text", "text": {"content": "大家好"}})
    html = page(emulator)
    assert "<script" not in html  # no JavaScript needed
    assert emulator.data.corp_name in html and "组织架构" in html and "Organisation" in html
    ceo = emulator.users()[0]
    assert ceo.name in html and "负责人 leader" in html and "已激活 active" in html
    assert chat.name in html and "群主 Owner" in html and "创建者 Created by" in html and "大家好" in html
    assert "请求日志 Request log" in html and "appchat/send" in html
    assert "已禁用 disabled" in html and "未激活 unactivated" in html


def test_names_are_escaped(emulator):
    evil = "<script>alert(1)</script>"
    emulator.admin("directory/hire", userid="xss01", name=evil, position='"><img src=x>')
    emulator.admin("chats", members=["xss01", emulator.users()[0].userid], name="<b>群</b>")
    html = page(emulator)
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x>" not in html and "&lt;b&gt;群&lt;/b&gt;" in html
    assert "<script" not in page(emulator, "ui/users/xss01")


def test_silently_dropped_messages_are_marked(emulator):
    emulator.flags(message_member_per_minute=1)
    uid = emulator.users()[0].userid
    for text in ("第一条", "第二条"):
        emulator.post(
            "message/send", {"touser": uid, "msgtype": "text", "agentid": emulator.OUR, "text": {"content": text}}
        )
    html = page(emulator, f"ui/users/{uid}")
    assert "第一条" in html and "第二条" in html
    assert re.search(r"被丢弃 dropped: [^<]*over the per-member minute limit", html)
    assert "已送达 delivered" in html
    assert "被丢弃 dropped" in page(emulator)


def test_chat_page_shows_every_message_per_member_with_drops(emulator):
    chat = emulator.our_chats()[0]
    disabled = emulator.users(status=2)[0].userid
    emulator.post("appchat/update", {"chatid": chat.chatid, "add_user_list": [disabled]})
    emulator.post("appchat/send", {"chatid": chat.chatid, "msgtype": "markdown", "markdown": {"content": "**注意**"}})
    html = page(emulator, f"ui/chats/{chat.chatid}")
    assert "**注意**" in html and f"被丢弃 dropped → {disabled}" in html and "成员已禁用 member disabled" in html


def test_callbacks_and_their_outcome_are_listed(emulator, receivers):
    contact = receivers("contact_sync")
    contact.close()  # every attempt fails
    emulator.flags(callback_retries=0)
    emulator.admin("directory/hire", userid="cb01", name="回调员工")
    emulator.admin("callbacks/drain", timeout=5)
    html = page(emulator)
    assert "回调 Callbacks" in html and "create_user cb01" in html and "失败 failed" in html
    assert "通过 passed" in html  # the receiver passed URL verification when it was configured


def test_a_template_card_shows_its_buttons_and_the_replacement(emulator):
    uid = emulator.users()[0].userid
    card = {"card_type": "button_interaction", "main_title": {"title": "审批"}, "task_id": "t-1",
            "button_list": [{"text": "同意", "key": "ok"}, {"text": "驳回", "key": "no"}]}  # fmt: skip
    sent = emulator.post("message/send", {"touser": uid, "msgtype": "template_card", "agentid": emulator.OUR,
                                          "template_card": card})  # fmt: skip
    html = page(emulator, f"ui/users/{uid}")
    assert "同意" in html and "驳回" in html
    emulator.post("message/update_template_card", {"userids": [uid], "agentid": emulator.OUR,
                  "response_code": sent["response_code"], "button": {"replace_name": "已处理"}})  # fmt: skip
    html = page(emulator, f"ui/users/{uid}")
    assert "已处理" in html and '<span class="btn">同意</span>' not in html


def test_unknown_pages_are_404_and_refresh_is_optional(emulator):
    page(emulator, "ui/users/nobody", status=404)
    page(emulator, "ui/chats/nochat", status=404)
    page(emulator, "ui/whatever", status=404)
    assert 'http-equiv="refresh" content="5"' in page(emulator, "ui?refresh=5")
    assert emulator.http.post(f"{emulator.base_url}/_emulator/ui").status_code == 405
