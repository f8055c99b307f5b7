"""appchat/send: message types, `safe`, size limits and silent per-member/per-corp drops
(contract §3.4, §14.6, §14.7; checklist §12.4)."""

from __future__ import annotations

import pytest

from .conftest import AMR, MP4, PNG


def _chat(emulator):
    return emulator.our_chats()[0]


def _send(emulator, chatid, msgtype, obj, **extra):
    return emulator.post("appchat/send", {"chatid": chatid, "msgtype": msgtype, msgtype: obj, **extra})


def _messages(emulator, chatid):
    return emulator.admin(f"chats/{chatid}")["messages"]


def _media(emulator, kind):
    content = {"image": PNG, "voice": AMR, "video": MP4, "file": b"report-2025.pdf contents"}[kind]
    return emulator.upload(content, kind)["media_id"]


BODIES = {
    "text": lambda e: {"content": "你的快递已到\n请携带工卡前往邮件中心领取"},
    "image": lambda e: {"media_id": _media(e, "image")},
    "voice": lambda e: {"media_id": _media(e, "voice")},
    "video": lambda e: {"media_id": _media(e, "video"), "title": "Title", "description": "Description"},
    "file": lambda e: {"media_id": _media(e, "file")},
    "textcard": lambda e: {
        "title": "领奖通知",
        "description": "<div>恭喜</div>",
        "url": "https://example.com",
        "btntxt": "更多",
    },
    "news": lambda e: {"articles": [{"title": "中秋节礼品领取", "description": "豪礼", "url": "https://example.com"}]},
    "mpnews": lambda e: {
        "articles": [
            {"title": "地球一小时", "thumb_media_id": _media(e, "image"), "author": "IT", "content": "<p>x</p>"}
        ]
    },
    "markdown": lambda e: {"content": '**事项详情**\n>会议室：<font color="info">301</font>'},
}


@pytest.mark.parametrize("msgtype", sorted(BODIES))
def test_every_appchat_msgtype_is_accepted_and_recorded_for_each_member(emulator, msgtype):
    chat = _chat(emulator)
    assert _send(emulator, chat.chatid, msgtype, BODIES[msgtype](emulator)) == {"errcode": 0, "errmsg": "ok"}
    [msg] = _messages(emulator, chat.chatid)
    assert msg["msgtype"] == msgtype and msg["path"] == "appchat"
    deliverable = [v for k, v in chat.members.items() if emulator.data.users[k].status not in (2, 5)]
    assert msg["delivered"] == deliverable


def test_template_card_is_not_an_appchat_msgtype_40008(emulator):
    card = {"card_type": "text_notice", "main_title": {"title": "t"}, "card_action": {"type": 1, "url": "https://x"}}
    assert _send(emulator, _chat(emulator).chatid, "template_card", card)["errcode"] == 40008
    assert _send(emulator, _chat(emulator).chatid, "sticker", {"x": 1})["errcode"] == 40008


def test_empty_text_is_44004(emulator):
    assert _send(emulator, _chat(emulator).chatid, "text", {"content": ""})["errcode"] == 44004


def test_text_over_2048_bytes_is_45002(emulator):
    assert _send(emulator, _chat(emulator).chatid, "text", {"content": "字" * 683})["errcode"] == 45002
    assert _send(emulator, _chat(emulator).chatid, "text", {"content": "字" * 682})["errcode"] == 0


def test_safe_is_recorded(emulator):
    chat = _chat(emulator)
    assert _send(emulator, chat.chatid, "text", {"content": "机密"}, safe=1)["errcode"] == 0
    assert _messages(emulator, chat.chatid)[0]["safe"] == 1


def test_safe_on_news_is_40074(emulator):
    assert _send(emulator, _chat(emulator).chatid, "news", BODIES["news"](emulator), safe=1)["errcode"] == 40074
    assert _send(emulator, _chat(emulator).chatid, "news", BODIES["news"](emulator), safe=0)["errcode"] == 0


def test_safe_on_markdown_is_rejected(emulator):
    assert _send(emulator, _chat(emulator).chatid, "markdown", {"content": "x"}, safe=1)["errcode"] == 40058


def test_safe_2_is_not_for_appchat(emulator):
    body = BODIES["mpnews"](emulator)
    assert _send(emulator, _chat(emulator).chatid, "mpnews", body, safe=2)["errcode"] == 40058


def test_unknown_or_expired_media_is_40007(emulator):
    chat = _chat(emulator)
    assert _send(emulator, chat.chatid, "image", {"media_id": "nope"})["errcode"] == 40007
    media_id = _media(emulator, "image")
    emulator.advance(3 * 86400)
    assert _send(emulator, chat.chatid, "image", {"media_id": media_id})["errcode"] == 40007


def test_media_of_the_wrong_type_is_40007(emulator):
    assert _send(emulator, _chat(emulator).chatid, "image", {"media_id": _media(emulator, "file")})["errcode"] == 40007


def test_missing_media_id_is_41006(emulator):
    assert _send(emulator, _chat(emulator).chatid, "file", {})["errcode"] == 41006


def test_news_with_more_than_8_articles_is_45008(emulator):
    arts = [{"title": f"t{i}", "url": "https://x"} for i in range(9)]
    assert _send(emulator, _chat(emulator).chatid, "news", {"articles": arts})["errcode"] == 45008


def test_news_article_without_title_is_41016(emulator):
    assert _send(emulator, _chat(emulator).chatid, "news", {"articles": [{"url": "https://x"}]})["errcode"] == 41016


def test_textcard_without_description_is_41033(emulator):
    body = {"title": "t", "url": "https://x"}
    assert _send(emulator, _chat(emulator).chatid, "textcard", body)["errcode"] == 41033


def test_textcard_fields_are_truncated(emulator):
    chat = _chat(emulator)
    body = {"title": "标" * 50, "description": "d", "url": "https://x", "btntxt": "查看详情更多"}
    _send(emulator, chat.chatid, "textcard", body)
    content = _messages(emulator, chat.chatid)[0]["content"]
    assert len(content["title"].encode()) == 126 and content["btntxt"] == "查看详情"


def test_more_than_200_per_member_per_minute_are_dropped_silently(emulator):
    chat = _chat(emulator)
    codes = {_send(emulator, chat.chatid, "text", {"content": f"m{i}"})["errcode"] for i in range(201)}
    assert codes == {0}
    msgs = _messages(emulator, chat.chatid)
    assert "member_per_minute" not in msgs[199]["dropped"].values() and msgs[199]["delivered"]
    assert set(msgs[200]["dropped"].values()) == {"member_per_minute"} and msgs[200]["delivered"] == []
    emulator.advance(60)
    _send(emulator, chat.chatid, "text", {"content": "later"})
    assert _messages(emulator, chat.chatid)[-1]["delivered"]


def test_per_member_daily_cap_resets_at_shanghai_midnight(emulator):
    emulator.flags(appchat_member_per_day=2)
    chat = _chat(emulator)
    for i in range(3):
        assert _send(emulator, chat.chatid, "text", {"content": f"m{i}"})["errcode"] == 0
    assert set(_messages(emulator, chat.chatid)[2]["dropped"].values()) == {"member_per_day"}
    emulator.advance(15 * 3600)
    _send(emulator, chat.chatid, "text", {"content": "tomorrow"})
    assert _messages(emulator, chat.chatid)[-1]["delivered"]


def test_corp_person_times_per_minute_cap_drops_silently(emulator):
    chat = _chat(emulator)
    _send(emulator, chat.chatid, "text", {"content": "first"})
    first = _messages(emulator, chat.chatid)[0]["delivered"]
    emulator.flags(appchat_corp_per_minute=len(first) + 1)
    assert _send(emulator, chat.chatid, "text", {"content": "second"})["errcode"] == 0
    msg = _messages(emulator, chat.chatid)[-1]
    assert msg["delivered"] == first[:1]
    assert [msg["dropped"][u] for u in first[1:]] == ["corp_per_minute"] * (len(first) - 1)


def test_corp_hourly_cap_depends_on_corp_size_and_drops_silently(emulator):
    chat = _chat(emulator)
    emulator.flags(appchat_corp_per_hour=3)
    assert _send(emulator, chat.chatid, "text", {"content": "x"})["errcode"] == 0
    msg = _messages(emulator, chat.chatid)[0]
    assert len(msg["delivered"]) == 3 and set(msg["dropped"].values()) >= {"corp_per_hour"}


def test_departed_member_kept_in_the_chat_receives_nothing(emulator):
    emulator.flags(on_member_delete="keep")
    chat = _chat(emulator)
    victim = next(v for k, v in chat.members.items() if k != chat.owner)
    emulator.admin("directory/depart", userid=victim)
    assert victim in emulator.get("appchat/get", chatid=chat.chatid)["chat_info"]["userlist"]
    _send(emulator, chat.chatid, "text", {"content": "x"})
    assert _messages(emulator, chat.chatid)[0]["dropped"][victim] == "departed"
