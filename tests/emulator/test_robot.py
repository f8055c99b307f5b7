"""The group robot webhook (contract §5; checklist §12.6)."""

from __future__ import annotations

import base64
import hashlib

from .conftest import PNG


def _robot(emulator):
    return next(iter(emulator.data.robots.values()))


def _send(emulator, body, key=None):
    key = _robot(emulator).key if key is None else key
    return emulator.post("webhook/send", body, as_=None, key=key)


def test_webhook_send_needs_no_token_and_delivers_to_the_chat(emulator):
    robot = _robot(emulator)
    body = {"msgtype": "text", "text": {"content": "广州今日天气：29度", "mentioned_list": ["@all"]}}
    assert _send(emulator, body) == {"errcode": 0, "errmsg": "ok"}
    [msg] = emulator.admin(f"chats/{robot.chatid}")["messages"]
    assert msg["path"] == "robot" and msg["robot_key"] == robot.key
    assert msg["content"]["mentioned_list"] == ["@all"] and msg["delivered"]


def test_webhook_is_not_trusted_ip_checked(emulator):
    emulator.caller_ip("203.0.113.50")
    assert _send(emulator, {"msgtype": "text", "text": {"content": "x"}})["errcode"] == 0


def test_unknown_key_is_93000(emulator):
    body = _send(emulator, {"msgtype": "text", "text": {"content": "x"}}, key="nope")
    assert body["errcode"] == 93000 and "invalid webhook url" in body["errmsg"]
    assert emulator.post("webhook/send", {"msgtype": "text", "text": {"content": "x"}}, as_=None)["errcode"] == 93000


def test_full_url_passed_as_key_is_93000(emulator):
    url = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={_robot(emulator).key}"
    assert _send(emulator, {"msgtype": "text", "text": {"content": "x"}}, key=url)["errcode"] == 93000


def test_more_than_20_per_minute_per_robot_is_45009(emulator):
    codes = [_send(emulator, {"msgtype": "text", "text": {"content": str(i)}})["errcode"] for i in range(21)]
    assert codes == [0] * 20 + [45009]
    emulator.advance(60)
    assert _send(emulator, {"msgtype": "text", "text": {"content": "again"}})["errcode"] == 0


def test_each_robot_has_its_own_budget(emulator):
    chat = emulator.our_chats()[1]
    other = emulator.admin("robots", chatid=chat.chatid)["key"]
    for i in range(20):
        _send(emulator, {"msgtype": "text", "text": {"content": str(i)}})
    assert _send(emulator, {"msgtype": "text", "text": {"content": "x"}}, key=other)["errcode"] == 0


def test_markdown_over_4096_bytes_is_40058(emulator):
    body = _send(emulator, {"msgtype": "markdown", "markdown": {"content": "a" * 4097}})
    assert body["errcode"] == 40058 and "markdown.content exceed max length 4096" in body["errmsg"]
    assert _send(emulator, {"msgtype": "markdown", "markdown": {"content": "a" * 4096}})["errcode"] == 0


def test_image_is_base64_with_md5(emulator):
    b64 = base64.b64encode(PNG).decode()
    good = {"msgtype": "image", "image": {"base64": b64, "md5": hashlib.md5(PNG).hexdigest()}}
    assert _send(emulator, good)["errcode"] == 0
    bad = {"msgtype": "image", "image": {"base64": b64, "md5": "0" * 32}}
    assert _send(emulator, bad)["errcode"] == 40058


def test_video_textcard_and_mpnews_are_not_robot_types_40008(emulator):
    for msgtype in ("video", "textcard", "mpnews"):
        assert _send(emulator, {"msgtype": msgtype, msgtype: {}})["errcode"] == 40008


def test_robot_template_card_must_be_a_notice_card(emulator):
    card = {"card_type": "text_notice", "main_title": {"title": "t"}, "card_action": {"type": 1, "url": "https://x"}}
    assert _send(emulator, {"msgtype": "template_card", "template_card": card})["errcode"] == 0
    card["card_type"] = "button_interaction"
    assert _send(emulator, {"msgtype": "template_card", "template_card": card})["errcode"] == 42031


def test_robot_file_via_upload_media(emulator):
    key = _robot(emulator).key
    resp = emulator.http.post(
        emulator.url + "webhook/upload_media",
        params={"key": key, "type": "file"},
        files={"media": ("r.txt", b"report!")},
    )
    body = resp.json()
    assert body["errcode"] == 0 and body["type"] == "file"
    assert _send(emulator, {"msgtype": "file", "file": {"media_id": body["media_id"]}})["errcode"] == 0


def test_a_robot_over_its_minute_limit_is_blocked_for_60_seconds_from_the_hit(emulator):
    for i in range(20):
        _send(emulator, {"msgtype": "text", "text": {"content": str(i)}})
    emulator.advance(30)
    assert _send(emulator, {"msgtype": "text", "text": {"content": "hit"}})["errcode"] == 45009
    emulator.advance(40)  # the first 20 left the window 10 s ago; the block (from the hit) lasts 60 s
    assert _send(emulator, {"msgtype": "text", "text": {"content": "still"}})["errcode"] == 45009
    emulator.advance(21)
    assert _send(emulator, {"msgtype": "text", "text": {"content": "again"}})["errcode"] == 0
