"""The ``emulator`` fixture: the sandbox tenant over real HTTP, for every test (a pytest plugin
registered by tests/conftest.py).

One emulator server runs per test session (127.0.0.1, port 0, in a thread); before every test the
tenant is reset to ``generated:60:1`` on a fresh manual clock, with default flags, no faults and an
empty request log, so tests are independent and deterministic. Everything goes over real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from wecom_plugin.emulator.org import OTHER_AGENTID, OUR_AGENTID, STORE_APP_AGENTID
from wecom_plugin.emulator.serve import serve, stop
from wecom_plugin.emulator.state import Tenant

SEED = "generated:60:1"


class Emulator:
    """What a test needs: ``url`` (API base ending in /cgi-bin/), ``tenant``, ``admin(...)`` and helpers."""

    OUR = OUR_AGENTID
    OTHER = OTHER_AGENTID
    STORE = STORE_APP_AGENTID

    def __init__(self, server: Any, tenant: Tenant) -> None:
        self.url: str = server.url
        self.base_url: str = server.base_url
        self.tenant = tenant
        self.http = requests.Session()
        self._tokens: dict[Any, str] = {}

    # ---- state shortcuts -----------------------------------------------------------------------
    @property
    def data(self):
        return self.tenant.data

    @property
    def corp_id(self) -> str:
        return self.tenant.data.corp_id

    def secret(self, who: int | str = OUR_AGENTID) -> str:
        if who == "contact_sync":
            return self.tenant.data.contact_sync.secret
        return self.tenant.data.apps[who].secret

    def plugin_settings(self) -> dict[str, str]:
        """The plugin's settings for talking to this tenant as our app (and its contact-sync secret)."""
        return {
            "WECOM_API_BASE_URL": self.url,
            "WECOM_CORP_ID": self.corp_id,
            "WECOM_AGENT_ID": str(self.OUR),
            "WECOM_SECRET": self.secret(),
            "WECOM_CONTACT_SECRET": self.secret("contact_sync"),
        }

    def users(self, status: int | None = 1) -> list:
        return [u for u in self.tenant.data.users.values() if status is None or u.status == status]

    def our_chats(self) -> list:
        return [c for c in self.tenant.data.chats.values() if c.creator == OUR_AGENTID]

    def other_chats(self) -> list:
        return [c for c in self.tenant.data.chats.values() if c.creator != OUR_AGENTID]

    # ---- admin ---------------------------------------------------------------------------------
    def admin(
        self,
        path_: str,
        method: str | None = None,
        expect: int = 200,
        query: dict[str, Any] | None = None,
        **payload: Any,
    ) -> dict[str, Any]:
        """Call ``/_emulator/<path_>``: POST with ``payload`` as JSON when given, else GET with ``query``."""
        method = method or ("POST" if payload else "GET")
        url = f"{self.base_url}/_emulator/{path_.lstrip('/')}"
        resp = self.http.request(method, url, json=payload or None, params=query)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def advance(self, seconds: float) -> None:
        self.admin("clock/advance", seconds=seconds)

    def flags(self, **flags: Any) -> None:
        self.admin("flags", **flags)

    def caller_ip(self, ip: str | None) -> None:
        self.http.post(f"{self.base_url}/_emulator/caller-ip", json={"ip": ip}).raise_for_status()

    def requests(self, **filters: Any) -> list[dict[str, Any]]:
        resp = self.http.get(f"{self.base_url}/_emulator/requests", params=filters)
        resp.raise_for_status()
        return resp.json()["requests"]

    # ---- API -----------------------------------------------------------------------------------
    def token(self, who: int | str = OUR_AGENTID, fresh: bool = False) -> str:
        if fresh or who not in self._tokens:
            r = self.http.get(self.url + "gettoken", params={"corpid": self.corp_id, "corpsecret": self.secret(who)})
            body = r.json()
            assert body["errcode"] == 0, body
            self._tokens[who] = body["access_token"]
        return self._tokens[who]

    def get(self, endpoint: str, as_: int | str | None = OUR_AGENTID, **params: Any) -> dict[str, Any]:
        return self._call("GET", endpoint, as_, params, {})

    def post(
        self,
        endpoint: str,
        body: Any = None,
        as_: int | str | None = OUR_AGENTID,
        raw: bytes | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        return self._call("POST", endpoint, as_, params, {"data": raw} if raw is not None else {"json": body})

    def _call(self, method: str, endpoint: str, as_: Any, params: dict[str, Any], kw: dict[str, Any]) -> dict[str, Any]:
        """One call; with an automatic token (no explicit access_token) a 40014/42001 refreshes once."""
        auto = as_ is not None and "access_token" not in params
        for attempt in (1, 2):
            if auto:
                params["access_token"] = self.token(as_, fresh=attempt == 2)
            resp = self.http.request(method, self.url + endpoint, params=params, **kw)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            if not (auto and body.get("errcode") in (40014, 42001)):
                break
        return body

    def upload(self, content: bytes, media_type: str = "file", filename: str = "a.bin") -> dict[str, Any]:
        resp = self.http.post(
            self.url + "media/upload",
            params={"access_token": self.token(), "type": media_type},
            files={"media": (filename, content, "application/octet-stream")},
        )
        assert resp.status_code == 200
        return resp.json()


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
AMR = b"#!AMR\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[tuple[Any, Tenant]]:
    tenant = Tenant.from_source(SEED)
    server, thread = serve(tenant, "127.0.0.1", 0)
    yield server, tenant
    stop(server, thread)


@pytest.fixture
def emulator(_emulator_server: tuple[Any, Tenant]) -> Iterator[Emulator]:
    server, tenant = _emulator_server
    tenant.reset(SEED)
    emu = Emulator(server, tenant)
    yield emu
    emu.http.close()
    tenant.release_sleepers()
