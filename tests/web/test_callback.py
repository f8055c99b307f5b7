"""WeCom's receivers over HTTP: URL check, store-then-acknowledge, duplicates, the rejection matrix.

Requests are signed and encrypted with the sandbox tenant's own crypto (emulator/wxcrypto.py), which
shares no code with the transport under test.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from wecom_plugin.emulator.wxcrypto import WXCrypto
from wecom_plugin.extensions import db
from wecom_plugin.jobs.worker import Worker
from wecom_plugin.models import CallbackInbox, Job

CORP = "wwcallbacktest0001"
APP_TOKEN, APP_KEY = "AppToken42", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
CONTACT_TOKEN, CONTACT_KEY = "ContactToken7", "a" * 43
TEXT = (
    "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[zhangsan]]></FromUserName>"
    "<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content>"
    "<MsgId>{msgid}</MsgId><AgentID>1000002</AgentID></xml>"
)
DELETE_USER = (
    "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
    "<CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[change_contact]]></Event>"
    "<ChangeType>delete_user</ChangeType><UserID><![CDATA[lisi]]></UserID></xml>"
)


@pytest.fixture
def callback_app(make_app, db_url):
    return make_app(
        DATABASE_URL=db_url,
        WECOM_CORP_ID=CORP,
        WECOM_CALLBACK_TOKEN=APP_TOKEN,
        WECOM_CALLBACK_AES_KEY=APP_KEY,
        WECOM_CONTACT_CALLBACK_TOKEN=CONTACT_TOKEN,
        WECOM_CONTACT_CALLBACK_AES_KEY=CONTACT_KEY,
    )


def _post(client, path, xml, token=APP_TOKEN, key=APP_KEY, **tamper):
    ts = str(int(time.time()))
    body, query = WXCrypto(token, key, CORP).envelope(xml, ts, "n0nce", 1000002)
    query.update(tamper)
    return client.post(path, query_string=query, data=body.encode())


def _inbox(app):
    with app.app_context():
        return db.session.scalars(sa.select(CallbackInbox).order_by(CallbackInbox.id)).all()


def test_url_verification_echoes_the_plaintext_exactly(callback_app):
    client = callback_app.test_client()
    for path, token, key in (("/wecom/callback", APP_TOKEN, APP_KEY),
                             ("/wecom/callback/contacts", CONTACT_TOKEN, CONTACT_KEY)):  # fmt: skip
        query = WXCrypto(token, key, CORP).echostr("1616140317555161061", str(int(time.time())), "abc")
        response = client.get(path, query_string=query)
        assert response.status_code == 200
        assert response.get_data() == b"1616140317555161061"


def test_a_callback_is_stored_once_however_often_it_is_delivered(callback_app):
    client = callback_app.test_client()
    xml = TEXT.format(corp=CORP, ts=int(time.time()), msgid="7131813")
    responses = [_post(client, "/wecom/callback", xml) for _ in range(4)]  # the original and 3 retries
    assert [(r.status_code, r.get_data()) for r in responses] == [(200, b"")] * 4
    [row] = _inbox(callback_app)
    assert (row.receiver, row.kind, row.deliveries, row.state) == ("app", "text", 4, "new")
    assert "你好" in row.plaintext
    with callback_app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1


def test_concurrent_copies_of_one_delivery_are_stored_once(callback_app):
    xml = DELETE_USER.format(corp=CORP, ts=int(time.time()))
    ts = str(int(time.time()))
    body, query = WXCrypto(CONTACT_TOKEN, CONTACT_KEY, CORP).envelope(xml, ts, "n1", None)
    codes: list[int] = []

    def send():
        codes.append(callback_app.test_client().post("/wecom/callback/contacts", query_string=query,
                                                     data=body.encode()).status_code)  # fmt: skip

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 4
    [row] = _inbox(callback_app)
    assert (row.receiver, row.kind, row.deliveries) == ("contacts", "event/change_contact/delete_user", 4)


def test_the_worker_dispatches_and_keeps_events_without_a_handler(callback_app):
    _post(callback_app.test_client(), "/wecom/callback", TEXT.format(corp=CORP, ts=int(time.time()), msgid="1"))
    Worker(callback_app).run_once()
    [row] = _inbox(callback_app)
    assert row.state == "unhandled" and row.processed_at is not None


@pytest.mark.parametrize(
    "tamper",
    [
        {"msg_signature": "0" * 40},
        {"timestamp": "1000000000"},
        {"timestamp": "soon"},
        {"nonce": "other"},
        {"msg_signature": ""},
    ],
)
def test_every_rejection_gets_the_same_answer_and_stores_nothing(callback_app, tamper):
    xml = TEXT.format(corp=CORP, ts=int(time.time()), msgid="2")
    response = _post(callback_app.test_client(), "/wecom/callback", xml, **tamper)
    assert (response.status_code, response.get_data()) == (400, b"invalid callback")
    assert _inbox(callback_app) == []


def test_wrong_keys_a_wrong_corp_and_junk_are_rejected_alike(callback_app):
    client = callback_app.test_client()
    xml = TEXT.format(corp=CORP, ts=int(time.time()), msgid="3")
    answers = [
        _post(client, "/wecom/callback", xml, token="WrongToken"),
        _post(client, "/wecom/callback", xml, key="b" * 43),
        # Signed for the contact receiver, sent to the app's.
        _post(client, "/wecom/callback", xml, token=CONTACT_TOKEN, key=CONTACT_KEY),
        client.post(
            "/wecom/callback",
            query_string={"msg_signature": "x", "timestamp": "1", "nonce": "n"},
            data=b"<!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>",
        ),  # fmt: skip
        client.post("/wecom/callback", data=b"not xml at all"),
        client.get("/wecom/callback", query_string={"echostr": "junk"}),
    ]
    assert [(r.status_code, r.get_data()) for r in answers] == [(400, b"invalid callback")] * len(answers)
    assert _inbox(callback_app) == []


def test_oversized_bodies_are_refused_before_parsing(callback_app):
    response = callback_app.test_client().post("/wecom/callback", data=b"<xml>" + b"a" * (64 * 1024) + b"</xml>")
    assert response.status_code == 413
    assert _inbox(callback_app) == []


def test_an_unconfigured_receiver_is_not_found(make_app):
    app = make_app()  # sandbox: only the app's receiver has keys
    assert app.test_client().post("/wecom/callback/contacts", data=b"<xml/>").status_code == 404


def test_the_sandbox_tenant_delivers_real_callbacks_to_the_running_receiver(make_app, emulator):
    creds = emulator.admin("")
    # The fixture's tenant runs on a manual clock (2025); real WeCom stamps callbacks with the real time.
    emulator.flags(callback_timestamp="wall")
    app = make_app(
        WECOM_CORP_ID=emulator.corp_id,
        WECOM_CALLBACK_TOKEN=APP_TOKEN,
        WECOM_CALLBACK_AES_KEY=APP_KEY,
        WECOM_CONTACT_CALLBACK_TOKEN=CONTACT_TOKEN,
        WECOM_CONTACT_CALLBACK_AES_KEY=CONTACT_KEY,
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}/wecom/callback/contacts"
        emulator.admin("callbacks/receivers", receiver="contact_sync", url=url, token=CONTACT_TOKEN,
                       aes_key=CONTACT_KEY)  # fmt: skip  # the tenant verifies the URL first, as WeCom does
        leaver = emulator.users()[5].userid
        emulator.admin("directory/depart", userid=leaver)
        emulator.admin("callbacks/drain", method="POST")
        rows = _inbox(app)
        assert [r.kind for r in rows] == ["event/change_contact/delete_user"]
        assert leaver in rows[0].plaintext
        assert creds["corp_id"] == emulator.corp_id
    finally:
        server.shutdown()
        thread.join()
