"""XML attacks against the envelope and the decrypted payload (reliability §3.3, X1–X5; W7).

Each attack is refused with CallbackRejected in < 0.5 s. Where the pre-parse DOCTYPE/ENTITY check
would hide the parser's own behaviour, the attack is repeated with that check switched off, to show
defusedxml refuses it as well (defence in depth).
"""

from __future__ import annotations

import importlib.metadata
import pyexpat
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.wecom import CORP_ID, KEY, POST_QUERY, signed
from wecom_plugin.wecom import safexml
from wecom_plugin.wecom.callbacks import MAX_BODY_BYTES, PUBLIC_MESSAGE, CallbackRejected, open_callback

REPO = Path(__file__).resolve().parents[2]
NOW = int(POST_QUERY["timestamp"])
LIMIT_SECONDS = 0.5
LIMIT_BYTES = 5 * 1024 * 1024


def _lol_dtd() -> str:
    """The classic bomb: lol9 expands to 10**9 "lol"s."""
    entities = ['<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        refs = f"&lol{i - 1};" * 10
        entities.append(f'<!ENTITY lol{i} "{refs}">')
    return "<!DOCTYPE xml [" + "".join(entities) + "]>"


LOL_DTD = _lol_dtd()
BILLION_LAUGHS_TEXT = f'<?xml version="1.0"?>{LOL_DTD}<xml><Encrypt>&lol9;</Encrypt></xml>'.encode()
BILLION_LAUGHS_ATTR = f'<?xml version="1.0"?>{LOL_DTD}<xml><Encrypt a="&lol9;">x</Encrypt></xml>'.encode()


def quadratic(size: int, refs: int) -> bytes:
    return f'<!DOCTYPE xml [<!ENTITY a "{"A" * size}">]><xml><Encrypt>{"&a;" * refs}</Encrypt></xml>'.encode()


def measured(fn, *args, **kwargs) -> tuple[BaseException, float, int]:
    """Run ``fn``, expecting an exception; return it with the seconds and peak Python bytes it took."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn(*args, **kwargs)
    except (CallbackRejected, safexml.XmlRejected) as exc:
        caught = exc
    else:
        pytest.fail("no exception")
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < LIMIT_SECONDS, f"took {elapsed:.3f}s"
    assert peak < LIMIT_BYTES, f"peak {peak} bytes"
    return caught, elapsed, peak


def open_envelope(body: bytes) -> CallbackRejected:
    exc, _, _ = measured(open_callback, POST_QUERY, body, (KEY,), CORP_ID, NOW, 300)
    assert isinstance(exc, CallbackRejected) and str(exc) == PUBLIC_MESSAGE
    return exc


def open_inner(plaintext: bytes) -> CallbackRejected:
    query, body = signed(plaintext)
    exc, _, _ = measured(open_callback, query, body, (KEY,), CORP_ID, NOW, 300)
    assert isinstance(exc, CallbackRejected) and str(exc) == PUBLIC_MESSAGE
    return exc


@pytest.fixture
def no_precheck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Switch off the DOCTYPE/ENTITY byte check, leaving only defusedxml's own refusals."""
    monkeypatch.setattr(safexml, "refuse_declarations", lambda data: None)


# --- X1: billion laughs ----------------------------------------------------------------------------
@pytest.mark.parametrize("bomb", [BILLION_LAUGHS_TEXT, BILLION_LAUGHS_ATTR], ids=["text", "attribute"])
def test_billion_laughs_in_the_envelope(bomb):
    assert open_envelope(bomb).reason == "dtd_or_entity"


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS_TEXT, BILLION_LAUGHS_ATTR], ids=["text", "attribute"])
def test_billion_laughs_in_the_decrypted_xml(bomb):
    rejected = open_inner(bomb)
    assert (rejected.reason, rejected.detail) == ("inner_xml", "dtd_or_entity")


@pytest.mark.parametrize("bomb", [BILLION_LAUGHS_TEXT, BILLION_LAUGHS_ATTR], ids=["text", "attribute"])
def test_billion_laughs_is_refused_by_the_parser_too(no_precheck, bomb):
    exc, _, _ = measured(safexml.parse, bomb)
    assert exc.reason == "DTDForbidden"
    assert open_envelope(bomb).reason == "envelope_xml"


def test_lowercase_or_entity_only_declarations_are_refused():
    for body in (b"<!doctype xml><xml/>", b'<xml><!ENTITY a "b"></xml>', b"<xml><!EnTiTy></xml>"):
        assert open_envelope(body).reason == "dtd_or_entity"


# --- X2: quadratic blowup --------------------------------------------------------------------------
def test_quadratic_blowup_full_size_is_refused_by_the_size_cap():
    bomb = quadratic(20_000, 20_000)
    assert len(bomb) > MAX_BODY_BYTES
    assert open_envelope(bomb).reason == "body_too_large"


def test_quadratic_blowup_within_the_cap():
    bomb = quadratic(20_000, 10_000)
    assert len(bomb) <= MAX_BODY_BYTES
    assert open_envelope(bomb).reason == "dtd_or_entity"
    exc, _, _ = measured(safexml.parse, quadratic(20_000, 20_000), max_bytes=1 << 20)
    assert exc.reason == "dtd_or_entity"


def test_quadratic_blowup_in_the_decrypted_xml():
    assert open_inner(quadratic(5_000, 5_000)).detail == "dtd_or_entity"


def test_quadratic_blowup_is_refused_by_the_parser_too(no_precheck):
    exc, _, _ = measured(safexml.parse, quadratic(20_000, 20_000), max_bytes=1 << 20)
    assert exc.reason == "DTDForbidden"


# --- X3: XXE and external DTDs ---------------------------------------------------------------------
@pytest.fixture
def listener() -> Iterator[tuple[int, list[int]]]:
    """A local TCP listener counting the connections it gets."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    connections = [0]
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            connections[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], connections
    stop.set()
    thread.join()
    server.close()


def xxe_bodies(canary: Path, port: int) -> dict[str, bytes]:
    url = f"http://127.0.0.1:{port}/x.dtd"
    return {
        "file entity": f'<!DOCTYPE xml [<!ENTITY x SYSTEM "file://{canary}">]><xml><Encrypt>&x;</Encrypt></xml>'.encode(),
        "file entity in attribute": (
            f'<!DOCTYPE xml [<!ENTITY x SYSTEM "file://{canary}">]><xml><Encrypt a="&x;">y</Encrypt></xml>'.encode()
        ),
        "external dtd": f'<!DOCTYPE xml SYSTEM "{url}"><xml><Encrypt>y</Encrypt></xml>'.encode(),
        "public external dtd": f'<!DOCTYPE xml PUBLIC "-//X//EN" "{url}"><xml><Encrypt>y</Encrypt></xml>'.encode(),
        "parameter entity": (
            f'<!DOCTYPE xml [<!ENTITY % p SYSTEM "{url}"> %p;]><xml><Encrypt>y</Encrypt></xml>'.encode()
        ),
        "http entity": f'<!DOCTYPE xml [<!ENTITY x SYSTEM "{url}">]><xml><Encrypt>&x;</Encrypt></xml>'.encode(),
    }


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary.txt"
    path.write_text("CANARY-7f3a9c", encoding="utf-8")
    return path


@pytest.mark.parametrize("precheck", [True, False], ids=["with-precheck", "parser-only"])
def test_xxe_and_external_dtds_are_refused_without_any_fetch(canary, listener, monkeypatch, precheck):
    port, connections = listener
    if not precheck:
        monkeypatch.setattr(safexml, "refuse_declarations", lambda data: None)
    for name, body in xxe_bodies(canary, port).items():
        rejected = open_envelope(body)
        assert rejected.reason == ("dtd_or_entity" if precheck else "envelope_xml"), name
        assert "CANARY" not in f"{rejected} {rejected.detail} {rejected.args}"
        inner = open_inner(body)
        assert inner.reason == "inner_xml", name
        with pytest.raises(safexml.XmlRejected) as info:
            safexml.parse(body)
        assert "CANARY" not in str(info.value)
    time.sleep(0.2)  # give any stray fetch time to arrive
    assert connections[0] == 0


def test_the_listener_does_count_connections(listener):
    port, connections = listener
    socket.create_connection(("127.0.0.1", port)).close()
    for _ in range(100):
        if connections[0]:
            break
        time.sleep(0.01)
    assert connections[0] == 1


# --- X4: depth and size ----------------------------------------------------------------------------
def test_ten_thousand_deep_nesting_in_the_envelope():
    unclosed = b"<a>" * 10_000
    assert open_envelope(unclosed).detail == "too_deep"
    closed = b"<a>" * 10_000 + b"</a>" * 10_000
    assert open_envelope(closed).reason == "body_too_large"


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_stops_at_the_depth_cap_without_recursion(depth):
    body = b"<a>" * depth + b"x" + b"</a>" * depth
    exc, _, _ = measured(safexml.parse, body, max_bytes=len(body))
    assert exc.reason == "too_deep"


def test_deep_nesting_in_the_decrypted_xml():
    assert open_inner(b"<a>" * 5_000 + b"</a>" * 5_000).detail == "too_deep"


def test_depth_cap_is_exact():
    nested = lambda n: b"<a>" * n + b"x" + b"</a>" * n  # noqa: E731
    assert safexml.parse(nested(safexml.MAX_DEPTH))
    with pytest.raises(safexml.XmlRejected):
        safexml.parse(nested(safexml.MAX_DEPTH + 1))


def test_one_mib_text_node():
    body = b"<xml><Encrypt>" + b"A" * (1 << 20) + b"</Encrypt></xml>"
    assert open_envelope(body).reason == "body_too_large"
    exc, _, _ = measured(safexml.parse, body)
    assert exc.reason == "too_large"


def test_body_one_byte_over_the_cap():
    head, tail = b"<xml><Encrypt>", b"</Encrypt></xml>"
    over = head + b"A" * (MAX_BODY_BYTES + 1 - len(head) - len(tail)) + tail
    assert len(over) == MAX_BODY_BYTES + 1
    assert open_envelope(over).reason == "body_too_large"
    at_cap = over[:14] + over[15:]
    assert len(at_cap) == MAX_BODY_BYTES
    assert open_envelope(at_cap).reason == "signature"  # parsed, then refused for what it is


# --- X5: versions ----------------------------------------------------------------------------------
def _pin(name: str) -> str:
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    return re.search(rf"^{re.escape(name)}==(\S+)$", text, re.MULTILINE | re.IGNORECASE).group(1)


def test_expat_version_guard_or_documented_waiver():
    status = safexml.check_expat()
    assert status.version == tuple(pyexpat.version_info)
    assert status.ok == (status.version >= (2, 6, 0))
    if not status.ok:
        # Waiver (reliability §3.2 rule 4): Expat < 2.6.0 lacks the large-token fix; the 64 KiB cap on
        # every parse is the documented mitigation.
        assert MAX_BODY_BYTES == safexml.MAX_BYTES == 64 * 1024
        assert "large tokens" in (safexml.__doc__ or "").lower() and "64 KiB" in (safexml.__doc__ or "")


@pytest.mark.parametrize("package, version", [("defusedxml", "0.7.1"), ("xmltodict", "1.0.4")])
def test_xml_libraries_are_the_pinned_versions(package, version):
    assert importlib.metadata.version(package) == version == _pin(package)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_declarations_in_another_encoding_cannot_slip_past_the_byte_check(encoding):
    body = f'<?xml version="1.0" encoding="{encoding}"?>{LOL_DTD}<xml><Encrypt>&lol9;</Encrypt></xml>'.encode(encoding)
    assert b"<!doctype" not in body.lower()  # the byte check cannot see it...
    assert open_envelope(body).reason == "envelope_xml"  # ...but the parser is held to UTF-8
