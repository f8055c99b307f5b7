"""The lean HTTP/1.1 server the emulator runs on (httpserver.py): keep-alive, bodies, errors, shutdown."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from wecom_plugin.emulator.httpserver import LeanWSGIServer


def echo_app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("app bug")
    body = environ["wsgi.input"].read()
    out = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "body": body.decode("utf-8"),
        "content_type": environ.get("CONTENT_TYPE"),
        "x_test": environ.get("HTTP_X_TEST"),
        "remote": environ["REMOTE_ADDR"],
    }
    data = json.dumps(out, ensure_ascii=False).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


@pytest.fixture
def server():
    httpd = LeanWSGIServer(("127.0.0.1", 0), echo_app)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(2)


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
    return sock


def read_response(f, head=False):
    status = f.readline().decode()
    headers = {}
    while True:
        line = f.readline().decode()
        if line in ("\r\n", ""):
            break
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b"" if head else f.read(int(headers.get("content-length", 0)))
    return status, headers, body


def test_two_requests_on_one_connection_with_percent_decoded_path_and_headers(server):
    with connect(server) as sock, sock.makefile("rb") as f:
        for i in range(2):
            sock.sendall(
                f"POST /a%20b/%E5%BC%A0?x={i} HTTP/1.1\r\nHost: h\r\nX-Test: yes\r\nContent-Type: application/json\r\n"
                f"Content-Length: 7\r\n\r\n".encode()
                + b'{"a":1}'
            )
            status, headers, body = read_response(f)
            assert status.startswith("HTTP/1.1 200") and "connection" not in headers
            got = json.loads(body)
            assert got["path"].encode("latin-1").decode("utf-8") == "/a b/张" and got["query"] == f"x={i}"
            assert got["body"] == '{"a":1}' and got["x_test"] == "yes" and got["content_type"] == "application/json"


def test_chunked_bodies_expect_continue_head_and_connection_close(server):
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
        assert json.loads(read_response(f)[2])["body"] == "abcde"
        sock.sendall(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 100")
        f.readline()
        sock.sendall(b"ok")
        assert json.loads(read_response(f)[2])["body"] == "ok"
        sock.sendall(b"HEAD /h HTTP/1.1\r\n\r\n")
        status, headers, _ = read_response(f, head=True)
        assert status.startswith("HTTP/1.1 200") and int(headers["content-length"]) > 0
        sock.sendall(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
        # HEAD sent no body, so the next response follows directly
        status, headers, body = read_response(f)
        assert headers["connection"] == "close" and json.loads(body)["path"] == "/last"
        assert f.read() == b""  # the server closed the connection


def test_http_1_0_closes_after_the_response(server):
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        status, headers, _ = read_response(f)
        assert status.startswith("HTTP/1.1 200") and headers["connection"] == "close" and f.read() == b""


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"NONSENSE\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", "413"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
        # int() would accept these; read(-1) would read to EOF, past the body cap.
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\n", "400"),
        (b"GET /boom HTTP/1.1\r\n\r\n", "500"),
    ],
)
def test_bad_requests_get_an_error_status(server, raw, status):
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(raw)
        assert f.readline().split()[1].decode() == status


def test_closing_the_server_ends_idle_keep_alive_connections(server):
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(b"GET /x HTTP/1.1\r\n\r\n")
        read_response(f)
        server.shutdown()
        server.server_close()
        assert f.read() == b""
