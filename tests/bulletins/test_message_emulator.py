"""Rendered bulletin messages through the sandbox tenant over real HTTP: sizes at the limit arrive unchanged,
confidential messages arrive with safe=1, and the confidentiality table (SAFE_SUPPORT) agrees with the
emulator in strict mode (contract §14.6, §14.7)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from wecom_plugin.domain.bulletin_message import (
    PATH_APPCHAT,
    PATH_MESSAGE,
    PATH_ROBOT,
    SAFE_SUPPORT,
    BulletinMessageError,
    MessageSpec,
    Rendered,
    render,
    template_context,
)
from wecom_plugin.wecom.api import appchat, robot
from wecom_plugin.wecom.api import message as wmessage
from wecom_plugin.wecom.client import WeComClient

URL = "https://example.com/report"
LOCAL = datetime(2026, 11, 26, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


@pytest.fixture
def client(emulator):
    with WeComClient(
        corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url, agent_id=emulator.OUR, budget=None
    ) as c:
        yield c


def _chat(emulator):
    return emulator.our_chats()[0]


def _user(emulator) -> str:
    return emulator.users()[0].userid


def _inbox(emulator, userid: str) -> list[dict]:
    return emulator.admin("messages", query={"userid": userid})["messages"]


def _send(client, emulator, out: Rendered) -> dict:
    """Send ``out`` by its path through the transport; answer what one recipient received."""
    if out.path == PATH_APPCHAT:
        chatid = _chat(emulator).chatid
        appchat.send(client, chatid, out.message, safe=out.safe)
        [msg] = emulator.admin(f"chats/{chatid}")["messages"][-1:]
        assert msg["delivered"], msg
        received = _inbox(emulator, msg["delivered"][0])[-1]
    elif out.path == PATH_MESSAGE:
        userid = _user(emulator)
        assert wmessage.send(client, out.message, touser=[userid], safe=out.safe).all_accepted
        received = _inbox(emulator, userid)[-1]
    else:
        key = next(iter(emulator.data.robots))
        robot.send(client, key, out.message)
        chatid = emulator.data.robots[key].chatid
        msg = emulator.admin("messages", query={"chatid": chatid})["messages"][-1]
        received = _inbox(emulator, msg["delivered"][0])[-1]
    assert received["delivered"] is True and received["path"] == out.path
    return received


def _exactly(n: int) -> str:
    return "字" * (n // 3) + "a" * (n % 3)


@pytest.mark.parametrize("path", [PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT])
def test_a_text_of_exactly_2048_bytes_arrives_unchanged(client, emulator, path):
    name = _chat(emulator).name
    ctx = template_context(LOCAL, group_name=name, bulletin_name="日报")
    head = f"【日报 {name}】\n{ctx['date_zh']} {ctx['weekday']}\n"
    filler = _exactly(2048 - len(head.encode()))
    spec = MessageSpec(
        "text", title="{{ bulletin_name }} {{ group_name }}", content="{{ date_zh }} {{ weekday }}\n" + filler
    )
    out = render(spec, path, ctx, confidential=False)
    content = out.message.body["content"]
    assert len(content.encode()) == 2048 and content == head + filler
    received = _send(client, emulator, out)
    assert received["content"]["content"] == content and received["safe"] == 0
    with pytest.raises(BulletinMessageError):  # one byte more is refused before anything is sent
        render(MessageSpec("text", content=spec.content + "a", title=spec.title), path, ctx, confidential=False)


def test_why_we_refuse_rather_than_send_message_send_would_truncate_silently(client, emulator):
    userid = _user(emulator)
    sent = _exactly(2049)
    wmessage.send(client, wmessage.text(sent), touser=[userid])
    received = _inbox(emulator, userid)[-1]["content"]["content"]
    assert sent.startswith(received) and len(received.encode()) <= 2048 < len(sent.encode())  # §14.7: truncated


@pytest.mark.parametrize("path", [PATH_APPCHAT, PATH_MESSAGE])
def test_a_confidential_text_arrives_with_safe_1(client, emulator, path):
    out = render(
        MessageSpec("text", title="机密", content="{{ 上月 }}薪资核对"),
        path,
        template_context(LOCAL),
        confidential=True,
    )
    assert out.safe == 1
    received = _send(client, emulator, out)
    assert received["safe"] == 1 and received["content"]["content"] == "【机密】\n2026年10月薪资核对"


def _spec(msgtype: str) -> MessageSpec:
    return MessageSpec(
        msgtype, title="机密通报", content="内容 {{ date }}", url=URL if msgtype in ("textcard", "news") else ""
    )


SUPPORTED = sorted(cell for cell, (ok, _zh, _en) in SAFE_SUPPORT.items() if ok)
UNSUPPORTED_WITH_SAFE_FIELD = sorted(
    cell for cell, (ok, _zh, _en) in SAFE_SUPPORT.items() if not ok and cell[1] != PATH_ROBOT
)


def test_the_table_under_test_is_not_empty():
    assert SUPPORTED == [("text", PATH_APPCHAT), ("text", PATH_MESSAGE), ("textcard", PATH_APPCHAT)]
    assert len(UNSUPPORTED_WITH_SAFE_FIELD) == 5


@pytest.mark.parametrize(("msgtype", "path"), SUPPORTED)
def test_every_supported_cell_is_accepted_in_strict_mode(client, emulator, msgtype, path):
    emulator.flags(strict_safe=True)
    out = render(_spec(msgtype), path, template_context(LOCAL), confidential=True)
    assert out.safe == 1
    received = _send(client, emulator, out)
    assert received["safe"] == 1 and received["msgtype"] == msgtype
    assert [r["errcode"] for r in emulator.requests(endpoint=f"{path}/send")] == [0]


EXPECTED_ERRCODE = {"markdown": 40058, "news": 40074, "textcard": 40058}


@pytest.mark.parametrize(("msgtype", "path"), UNSUPPORTED_WITH_SAFE_FIELD)
def test_every_unsupported_cell_is_refused_by_the_emulator_when_forced(emulator, msgtype, path):
    """The cells we refuse at save are the ones the strict emulator refuses (the transport would not even
    build them, so the request is posted raw)."""
    emulator.flags(strict_safe=True)
    out = render(_spec(msgtype), path, template_context(LOCAL), confidential=False)
    body = {**out.message.payload(), "safe": 1}
    if path == PATH_APPCHAT:
        body["chatid"] = _chat(emulator).chatid
    else:
        body.update(touser=_user(emulator), agentid=emulator.OUR)
    answer = emulator.post(f"{path}/send", body)
    assert answer["errcode"] == EXPECTED_ERRCODE[msgtype], answer
    with pytest.raises(BulletinMessageError):
        render(_spec(msgtype), path, template_context(LOCAL), confidential=True)


@pytest.mark.parametrize("msgtype", ["text", "markdown", "news"])
def test_the_robot_cannot_honour_safe_it_is_silently_ignored(emulator, msgtype):
    out = render(_spec(msgtype), PATH_ROBOT, template_context(LOCAL), confidential=False)
    key = next(iter(emulator.data.robots))
    resp = emulator.http.post(
        emulator.url + "webhook/send", params={"key": key}, json={**out.message.payload(), "safe": 1}
    )
    assert resp.json()["errcode"] == 0
    chatid = emulator.data.robots[key].chatid
    assert emulator.admin("messages", query={"chatid": chatid})["messages"][-1]["safe"] == 0  # not confidential
    with pytest.raises(BulletinMessageError):
        render(_spec(msgtype), PATH_ROBOT, template_context(LOCAL), confidential=True)


def test_markdown_and_news_reach_every_path_when_not_confidential(client, emulator):
    for msgtype in ("markdown", "news"):
        for path in (PATH_APPCHAT, PATH_MESSAGE, PATH_ROBOT):
            out = render(_spec(msgtype), path, template_context(LOCAL), confidential=False)
            assert _send(client, emulator, out)["msgtype"] == msgtype
