"""Serving, clocks and the emulator's independence from the code it tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
import requests

from wecom_plugin.emulator.clock import SHANGHAI, ManualClock, RealClock, local_day
from wecom_plugin.emulator.serve import serve, stop
from wecom_plugin.emulator.state import Tenant


def test_serve_binds_a_free_port_and_stops_promptly_with_a_request_asleep_in_a_fault():
    tenant = Tenant.from_source("generated:10")
    server, thread = serve(tenant, "127.0.0.1", 0)
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/cgi-bin/")
    assert server.server_address[1] != 0
    fault = tenant.add_fault({"action": "latency", "endpoint": "gettoken", "seconds": 30})
    sleeper = threading.Thread(target=requests.get, args=(server.url + "gettoken",), kwargs={"timeout": 40})
    sleeper.start()
    deadline = time.monotonic() + 10
    while fault.hits == 0 and time.monotonic() < deadline:  # until the request is asleep in the fault
        time.sleep(0.01)
    assert fault.hits == 1
    time.sleep(0.05)
    started = time.perf_counter()
    stop(server, thread)
    sleeper.join(5)
    assert not thread.is_alive() and not sleeper.is_alive()
    assert time.perf_counter() - started < 3


def test_two_emulators_run_side_by_side():
    a, b = Tenant.from_source("generated:10:1"), Tenant.from_source("generated:10:2")
    sa, ta = serve(a)
    sb, tb = serve(b)
    try:
        assert sa.url != sb.url
        assert requests.get(sa.base_url + "/_emulator/").json()["corp_id"] == a.data.corp_id
        assert requests.get(sb.base_url + "/_emulator/").json()["corp_id"] == b.data.corp_id
    finally:
        stop(sa, ta)
        stop(sb, tb)


def test_manual_clock_only_moves_forward():
    clock = ManualClock(1000.0)
    assert clock.advance(5) == 1005.0
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(10)


def test_daily_limits_use_the_asia_shanghai_day():
    just_before = datetime(2025, 3, 3, 23, 59, 59, tzinfo=SHANGHAI).timestamp()
    assert local_day(just_before).day == 3
    assert local_day(just_before + 1).day == 4  # 16:00 UTC: still the 3rd in UTC


def test_a_real_clock_tenant_cannot_be_advanced():
    tenant = Tenant.from_source("generated:10", clock=RealClock())
    server, thread = serve(tenant)
    try:
        resp = requests.post(server.base_url + "/_emulator/clock/advance", json={"seconds": 5})
        assert resp.status_code == 400 and "real clock" in resp.json()["error"]
    finally:
        stop(server, thread)


def test_change_listeners_can_unsubscribe():
    tenant = Tenant.from_source("generated:10")
    seen = []
    remove = tenant.on_change(seen.append)
    tenant.hire({"userid": "a1", "name": "甲"})
    remove()
    tenant.hire({"userid": "a2", "name": "乙"})
    assert [c.userid for c in seen] == ["a1"]


def test_the_emulator_imports_nothing_from_the_transport_models_or_services():
    code = (
        "import sys, wecom_plugin.emulator, wecom_plugin.emulator.server, wecom_plugin.emulator.cli\n"
        "import wecom_plugin.emulator.callbacks, wecom_plugin.emulator.ui, wecom_plugin.emulator.wxcrypto\n"
        "bad = [m for m in sys.modules if m.startswith(('wecom_plugin.wecom', 'wecom_plugin.models',"
        " 'wecom_plugin.services', 'wecom_plugin.domain'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_request_asleep_across_a_reset_does_not_touch_the_new_tenant():
    tenant = Tenant.from_source("generated:60:1")
    server, thread = serve(tenant)
    try:
        app = tenant.data.apps[1000002]
        token = requests.get(
            server.url + "gettoken", params={"corpid": tenant.data.corp_id, "corpsecret": app.secret}
        ).json()["access_token"]
        chatid = next(c for c in tenant.data.chats.values() if c.creator == 1000002).chatid
        tenant.add_fault({"action": "latency", "endpoint": "appchat/update", "seconds": 30})
        result = {}

        def call():
            result["body"] = requests.post(
                server.url + "appchat/update",
                params={"access_token": token},
                json={"chatid": chatid, "name": "stale"},
                timeout=10,
            ).json()

        worker = threading.Thread(target=call)
        worker.start()
        time.sleep(0.1)
        tenant.reset()
        worker.join(5)
        assert result["body"]["errcode"] == -1
        assert tenant.data.chats[chatid].name != "stale"
    finally:
        stop(server, thread)
