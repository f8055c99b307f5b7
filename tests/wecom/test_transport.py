"""The client's HTTP transport (urllib3 + orjson) over real sockets: what may have reached WeCom when a
call fails, TLS, proxies from the environment, multipart uploads, keep-alive, and no silent resends.

The servers here are tiny local ones (a recording HTTP server, a TLS server, a forwarding proxy); the
emulator is used where WeCom's own answer matters.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wecom_plugin.errors import ConfigurationError
from wecom_plugin.wecom.api import appchat, department, media, robot
from wecom_plugin.wecom.client import WeComClient, _multipart, environ_proxy, pool_for
from wecom_plugin.wecom.errors import WeComNetworkError
from wecom_plugin.wecom.token_store import MemoryTokenStore, token_key

TOKEN = "TOKEN-VALUE-1234"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def client_for(base_url: str, **options) -> WeComClient:
    """A client with a token already in its store, so every request goes to ``base_url``'s server."""
    store = MemoryTokenStore()
    store.refresh(token_key("ww1", "s"), lambda: (TOKEN, 7200))
    options.setdefault("sleep", lambda _s: None)
    return WeComClient(corp_id="ww1", secret="s", base_url=base_url, token_store=store, **options)


class Recorder:
    """An HTTP/1.1 (keep-alive) server that records every request and answers per ``mode``:

    ``ok``: a JSON object; ``hang_up``: reads the request, then closes the connection without answering.
    """

    def __init__(self, tls: ssl.SSLContext | None = None):
        recorder = self
        self.mode = "ok"
        self.seen: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.seen.append(
                    {"line": self.requestline, "headers": dict(self.headers), "body": body, "peer": self.client_address}
                )
                if recorder.mode == "hang_up":
                    self.close_connection = True
                    return
                if recorder.mode == "garbage":  # raw bytes under the TLS layer: a broken TLS stream
                    os.write(self.connection.fileno(), b"HTTP/1.1 200 OK\r\n\r\nnot a TLS record")
                    self.close_connection = True
                    return
                answer = b'{"errcode":0,"errmsg":"ok","department_id":[{"id":1}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/cgi-bin/"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.stop()


# --- keep-alive and no silent resend -------------------------------------------------------------
def test_calls_reuse_one_keep_alive_connection(recorder):
    with client_for(recorder.url) as client:
        for _ in range(3):
            department.simplelist(client)
    assert len(recorder.seen) == 3
    assert len({r["peer"] for r in recorder.seen}) == 1  # one TCP connection for all three


def test_a_post_whose_connection_drops_after_it_was_sent_is_not_resent(recorder):
    client = client_for(recorder.url)
    department.simplelist(client)  # a pooled keep-alive connection now exists
    recorder.mode = "hang_up"
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client, "chat1", name="x")
    assert info.value.side_effect_possible is True  # it arrived: it may have been applied
    assert [r["line"].split()[0] for r in recorder.seen] == ["GET", "POST"]  # sent once, never again
    assert TOKEN not in str(info.value)
    recorder.mode = "ok"
    assert department.simplelist(client)  # the dropped connection is replaced


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_post_through_a_fresh_pool_had_no_effect():
    port = _free_port()
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client_for(f"http://127.0.0.1:{port}/cgi-bin/"), "chat1", name="x")
    assert info.value.side_effect_possible is False
    assert "NewConnectionError" in str(info.value) and TOKEN not in str(info.value)


def test_a_read_timeout_on_a_post_may_have_had_an_effect():
    server = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does) but never answers
    try:
        client = client_for(f"http://127.0.0.1:{server.getsockname()[1]}/cgi-bin/", timeout=(1.0, 0.3))
        started = time.monotonic()
        with pytest.raises(WeComNetworkError) as info:
            appchat.update(client, "chat1", name="x")
        assert time.monotonic() - started < 1.5
        assert info.value.side_effect_possible is True
        assert "ReadTimeoutError" in str(info.value) and TOKEN not in str(info.value)
        with pytest.raises(WeComNetworkError) as info:
            client.post("user/list_id", {"limit": 1}, idempotent=True)
        assert info.value.side_effect_possible is False  # a read-only POST
    finally:
        server.close()


def test_a_failure_the_caller_was_handling_does_not_make_a_later_one_side_effect_free():
    refused_port = _free_port()
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        try:
            appchat.update(client_for(f"http://127.0.0.1:{refused_port}/cgi-bin/"), "chat1", name="x")
        except WeComNetworkError as first:
            assert first.side_effect_possible is False
            # A fallback call made while handling the first failure: its errors chain to it implicitly.
            client = client_for(f"http://127.0.0.1:{silent.getsockname()[1]}/cgi-bin/", timeout=(1.0, 0.2))
            with pytest.raises(WeComNetworkError) as info:
                appchat.update(client, "chat1", name="x")
        assert info.value.side_effect_possible is True
    finally:
        silent.close()


# --- TLS ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wecom-plugin test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(certificate) -> Iterator[Recorder]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = Recorder(tls=context)
    yield server
    server.stop()


def test_tls_is_verified_against_requests_ca_bundle(tls_server, certificate, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    with client_for(tls_server.url) as client:
        assert department.simplelist(client) == [{"id": 1}]


def test_an_untrusted_certificate_fails_the_handshake_before_anything_is_sent(tls_server, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)  # certifi's store, which does not know our certificate
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client_for(tls_server.url), "chat1", name="x")
    assert info.value.side_effect_possible is False
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert tls_server.seen == []


def test_a_tls_failure_after_the_post_was_sent_may_have_had_an_effect(tls_server, certificate, monkeypatch):
    # urllib3 reports a broken TLS stream with the same SSLError as a failed handshake: only where it
    # was raised tells them apart.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    tls_server.mode = "garbage"
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client_for(tls_server.url), "chat1", name="x")
    assert "SSL" in str(info.value)
    assert info.value.side_effect_possible is True
    assert len(tls_server.seen) == 1


def test_a_missing_ca_bundle_is_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(ConfigurationError, match="REQUESTS_CA_BUNDLE"):
        client_for("https://qyapi.weixin.qq.com/cgi-bin/")


# --- proxies from the environment ---------------------------------------------------------------
class ForwardingProxy:
    """A plain HTTP proxy: records each request line and Proxy-Authorization, forwards to the target."""

    def __init__(self):
        proxy = self
        self.seen: list[tuple[str, str | None]] = []  # (request line, Proxy-Authorization)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                proxy.seen.append((self.requestline, self.headers.get("Proxy-Authorization")))
                target = urlsplit(self.path)  # absolute form: http://host:port/path?query
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "connection")
                }
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
                try:
                    path = target.path + (f"?{target.query}" if target.query else "")
                    upstream.request(self.command, path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("connection", "content-length", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _forward  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def api_lines(self) -> list[str]:
        return [line for line, _auth in self.seen if "/cgi-bin/" in line]

    def api_auth(self) -> set[str | None]:
        return {auth for line, auth in self.seen if "/cgi-bin/" in line}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    server = ForwardingProxy()
    yield server
    server.stop()


def test_calls_go_through_the_proxy_the_environment_names(emulator, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://corp%5Cuser:p%40ss@127.0.0.1:{proxy.port}")
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url) as client:
        assert isinstance(client.pool, urllib3.ProxyManager)
        assert "p@ss" not in repr(client.pool.proxy) and "p%40ss" not in repr(client.pool.proxy)
        assert len(department.simplelist(client)) > 1
        chatid = emulator.our_chats()[0].chatid
        appchat.update(client, chatid, name="经代理改名")
    assert emulator.data.chats[chatid].name == "经代理改名"
    lines = proxy.api_lines()
    host = urlsplit(emulator.url).netloc
    assert [line.split()[0] for line in lines] == ["GET", "GET", "POST"]
    assert all(line.split()[1].startswith(f"http://{host}/cgi-bin/") for line in lines)  # absolute form
    assert [line.split()[1].split("?")[0].rsplit("/cgi-bin/")[1] for line in lines] == [
        "gettoken", "department/simplelist", "appchat/update",
    ]  # fmt: skip
    expected = "Basic " + base64.b64encode(b"corp\\user:p@ss").decode()
    assert proxy.api_auth() == {expected}


def test_no_proxy_sends_the_api_host_direct(emulator, proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.0/8")
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url) as client:
        assert type(client.pool) is urllib3.PoolManager
        department.simplelist(client)
    assert proxy.api_lines() == []


def test_an_unreachable_proxy_means_nothing_was_sent(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(WeComNetworkError) as info:
        appchat.update(client_for("http://203.0.113.10/cgi-bin/"), "chat1", name="x")
    assert "ProxyError" in str(info.value)
    assert info.value.side_effect_possible is False
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "proxy.corp:3128"}, "https://qyapi.weixin.qq.com/cgi-bin/", "http://proxy.corp:3128"),
        ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "https://a.example/", "http://lower:1"),
        ({"ALL_PROXY": "http://all:8080"}, "https://qyapi.weixin.qq.com/cgi-bin/", "http://all:8080"),
        ({"HTTP_PROXY": "http://p:1"}, "https://qyapi.weixin.qq.com/cgi-bin/", None),  # https wants HTTPS_PROXY
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "weixin.qq.com"}, "https://qyapi.weixin.qq.com/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://qyapi.weixin.qq.com/", None),
    ],
)
def test_the_proxy_is_chosen_the_way_requests_chose_it(monkeypatch, env, url, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert environ_proxy(url) == expected
    proxies = requests.Session().merge_environment_settings(url, {}, None, None, None)["proxies"]
    chosen = requests.utils.select_proxy(url, proxies)
    assert (chosen and requests.utils.prepend_scheme_if_needed(chosen, "http")) == expected  # what requests did
    pool = pool_for(url)
    if expected is None:
        assert type(pool) is urllib3.PoolManager
    else:
        assert isinstance(pool, urllib3.ProxyManager) and pool.proxy.url == expected


def test_an_unusable_proxy_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:secret@127.0.0.1:1080")
    with pytest.raises(ConfigurationError) as info:
        client_for("https://qyapi.weixin.qq.com/cgi-bin/")
    assert "secret" not in str(info.value)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://127.0.0.1:21")
    with pytest.raises(ConfigurationError, match="ftp"):
        client_for("https://qyapi.weixin.qq.com/cgi-bin/")


# --- bodies -------------------------------------------------------------------------------------
def test_json_bodies_are_compact_utf8_with_the_charset_in_the_content_type(recorder):
    client = client_for(recorder.url)
    client.post("appchat/update", {"chatid": "c1", "name": "中文群名", "add_user_list": ["a", "b"], "n": 1})
    sent = recorder.seen[0]
    assert sent["body"] == '{"chatid":"c1","name":"中文群名","add_user_list":["a","b"],"n":1}'.encode()
    assert sent["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert sent["line"].startswith("POST /cgi-bin/appchat/update?access_token=TOKEN-VALUE-1234 ")


def test_multipart_bodies_are_byte_for_byte_what_requests_built(monkeypatch):
    files = {"media": ('报告 "一".txt', b"\x00\x01 content", "text/plain")}
    monkeypatch.setattr(urllib3.filepost, "choose_boundary", lambda: "b0undary")
    ours = _multipart(files)
    theirs = requests.models.RequestEncodingMixin._encode_files(files, {})
    assert ours == theirs
    assert ours[1] == "multipart/form-data; boundary=b0undary"


def test_multipart_uploads_reach_the_emulator_with_their_name(emulator):
    with WeComClient(corp_id=emulator.corp_id, secret=emulator.secret(), base_url=emulator.url) as client:
        up = media.upload(client, "file", b"hello world", "周报.txt", "text/plain")
        key = next(iter(emulator.data.robots))
        robot_media = robot.upload_media(client, key, "file", b"robot file", "机器人.txt")
    assert emulator.data.media[up.media_id].filename == "周报.txt"
    assert emulator.data.media[robot_media].filename == "机器人.txt"
    logged = emulator.requests(endpoint="media/upload")[-1]
    assert logged["query"]["type"] == "file" and logged["body"]["media"]["size"] == 11
