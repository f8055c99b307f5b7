"""wechatpy 1.8.18's own enterprise client, unmodified, against the emulator.

wechatpy builds API URLs as ``API_BASE_URL + endpoint`` (``BaseWeChatClient._request``), so a subclass
setting ``API_BASE_URL`` to the emulator covers every API call. ``WeChatClient.fetch_access_token``
however hard-codes ``https://qyapi.weixin.qq.com/cgi-bin/gettoken``; a requests transport adapter
mounted on the client's own session sends that host to the emulator, leaving the client code as is.
"""

from __future__ import annotations

import io

import pytest
from requests.adapters import HTTPAdapter
from wechatpy.enterprise import WeChatClient
from wechatpy.exceptions import APILimitedException, WeChatClientException

from .conftest import AMR, MP4, PNG

REAL_BASE = "https://qyapi.weixin.qq.com/cgi-bin/"


class _ToEmulator(HTTPAdapter):
    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request, **kwargs):
        request.url = request.url.replace(REAL_BASE, self.base, 1)
        return super().send(request, **kwargs)


def make_client(emulator, who=None) -> WeChatClient:
    cls = type("EmulatorWeChatClient", (WeChatClient,), {"API_BASE_URL": emulator.url})
    client = cls(emulator.corp_id, emulator.secret(who or emulator.OUR), timeout=10)
    client._http.mount(REAL_BASE, _ToEmulator(emulator.url))
    return client


@pytest.fixture
def client(emulator):
    return make_client(emulator)


def _file(content: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(content)
    f.name = name
    return f


def test_wechatpy_gets_its_token_from_the_emulator(emulator, client):
    assert client.access_token == emulator.data.current_token[f"app:{emulator.OUR}"]
    assert len(emulator.requests(endpoint="gettoken")) == 1


def test_wechatpy_department_list(emulator, client):
    deps = client.department.get()
    assert len(deps) == len(emulator.data.departments) and deps[0]["id"] == 1
    assert [d["name"] for d in client.department.get(id=6)][0] == emulator.data.departments[6].name


def test_wechatpy_user_get_list_and_simplelist(emulator, client):
    user = emulator.users()[4]
    assert client.user.get(user.userid)["name"] == user.name
    detail = client.user.list(3)
    assert {u["userid"].lower() for u in detail} == set(emulator.data.dept_members[3])
    simple = client.department.get_users(3)
    assert set(simple[0]) == {"userid", "name", "department"}
    assert client.user.list(3, simple=True) == simple


def test_wechatpy_tags(emulator, client):
    assert [t["tagid"] for t in client.tag.list()] == [1, 2, 3, 4, 5]
    assert client.tag.get_users(3)["tagname"] == "门店店长"


def test_wechatpy_appchat_create_update_get(emulator, client):
    ids = [u.userid for u in emulator.users()[:3]]
    chat_id = client.appchat.create(name="wechatpy 群", owner=ids[0], user_list=ids[:2])["chatid"]
    client.appchat.update(chat_id, name="改名", add_user_list=[ids[2]])
    info = client.appchat.get(chat_id)
    assert info["name"] == "改名" and info["userlist"] == ids and info["owner"] == ids[0]


def test_wechatpy_appchat_send_every_type(emulator, client):
    chat = emulator.our_chats()[0].chatid
    image = client.media.upload("image", _file(PNG, "pic.png"))["media_id"]
    voice = client.media.upload("voice", _file(AMR, "v.amr"))["media_id"]
    video = client.media.upload("video", _file(MP4, "v.mp4"))["media_id"]
    doc = client.media.upload("file", _file(b"quarterly report", "r.txt"))["media_id"]
    client.appchat.send_text(chat, "你好")
    client.appchat.send(chat, "image", media_id=image)
    client.appchat.send(chat, "voice", media_id=voice)
    client.appchat.send(chat, "file", media_id=doc)
    client.appchat.send(chat, "video", media_id=video, title="t", description="d")
    client.appchat.send(chat, "textcard", title="t", description="d", url="https://example.com", btntxt="更多")
    client.appchat.send(chat, "news", articles=[{"title": "t", "description": "d", "url": "https://example.com"}])
    client.appchat.send(
        chat,
        "mpnews",
        articles=[{"title": "t", "thumb_media_id": image, "author": "a", "content": "<p>c</p>", "digest": "d"}],
    )
    client.appchat.send(chat, "markdown", content="**粗体**")
    types = [m["msgtype"] for m in emulator.admin(f"chats/{chat}")["messages"]]
    assert types == ["text", "image", "voice", "file", "video", "textcard", "news", "mpnews", "markdown"]


def test_wechatpy_message_send_variants(emulator, client):
    ids = [u.userid for u in emulator.users()[:2]]
    agent = emulator.OUR
    image = client.media.upload("image", _file(PNG, "p.png"))["media_id"]
    result = client.message.send_text(agent, ids + ["Ghost"], "hello")
    assert result["invaliduser"] == "ghost"
    client.message.send_text_card(agent, ids, "标题", "描述", "https://example.com")
    client.message.send_image(agent, ids, image)
    client.message.send_voice(agent, ids, client.media.upload("voice", _file(AMR, "v.amr"))["media_id"])
    client.message.send_video(agent, ids, client.media.upload("video", _file(MP4, "v.mp4"))["media_id"], title="t")
    client.message.send_file(agent, ids, client.media.upload("file", _file(b"content!", "f.txt"))["media_id"])
    client.message.send_articles(agent, ids, [{"title": "t", "description": "d", "url": "https://x", "image": ""}])
    client.message.send_mp_articles(
        agent,
        ids,
        [
            {
                "thumb_media_id": image,
                "author": "a",
                "title": "t",
                "content": "c",
                "content_source_url": "",
                "digest": "d",
                "show_cover_pic": 0,
            }
        ],  # fmt: skip
    )
    client.message.send_markdown(agent, ids, "**hi**")
    card = {"card_type": "button_interaction", "main_title": {"title": "审批"}, "task_id": "wechatpy-1",
            "button_list": [{"text": "同意", "key": "ok"}]}  # fmt: skip
    sent = client.message.send(agent, ids, msg={"msgtype": "template_card", "template_card": card})
    assert sent["response_code"]
    types = [m["msgtype"] for m in emulator.admin("messages", query={"path": "message"})["messages"]]
    assert types == [
        "text",
        "textcard",
        "image",
        "voice",
        "video",
        "file",
        "news",
        "mpnews",
        "markdown",
        "template_card",
    ]


def test_wechatpy_customer_groups(emulator, client):
    owner = next(g.owner for g in emulator.data.customer_groups.values() if g.owner.lower() in emulator.data.users)
    chats = client.external_contact_group_chat.list_all(owner_userid_list=[owner], limit=1)
    assert chats and all(c["status"] == 0 for c in chats)
    detail = client.external_contact_group_chat.get(chats[0]["chat_id"])
    assert detail["group_chat"]["owner"] == owner


def test_wechatpy_oauth_user_info(emulator, client):
    user = emulator.users()[1]
    code = emulator.admin("oauth/code", userid=user.userid)["code"]
    assert client.oauth.get_user_info(code)["UserId"] == user.userid


def test_wechatpy_raises_on_business_errors(emulator, client):
    other = emulator.other_chats()[0].chatid
    with pytest.raises(WeChatClientException) as exc:
        client.appchat.get(other)
    assert exc.value.errcode == 86008


def test_wechatpy_refreshes_after_early_invalidation(emulator, client):
    client.tag.list()
    emulator.admin("tokens/invalidate", errcode=42001)
    assert client.tag.list()
    assert len(emulator.requests(endpoint="gettoken")) == 2


def test_wechatpy_maps_45009_to_api_limited(emulator, client):
    emulator.flags(appchat_updates_per_hour=0)
    with pytest.raises(APILimitedException):
        client.appchat.update(emulator.our_chats()[0].chatid, name="x")
