"""The ``emulator`` command and ``start_sandbox`` (brief: CLI): credentials block, UI, callbacks
configured at start-up, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import requests
from click.testing import CliRunner

from wecom_plugin.emulator.cli import emulator_command, register, start_sandbox, stop_sandbox
from wecom_plugin.emulator.clock import ManualClock

from .callback_receiver import CallbackReceiver

REPO_ROOT = Path(__file__).resolve().parents[2]


def _read_until_serving(proc: subprocess.Popen, timeout: float = 15) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Serving"):
            return lines
    proc.kill()
    raise AssertionError("the emulator did not start:\n" + "\n".join(lines) + proc.stderr.read())


def test_the_cli_prints_credentials_serves_and_stops_on_sigterm(tmp_path):
    probe = start_sandbox("generated:30:3")  # to learn the corp id the receiver must expect
    corp_id = probe[2].corp_id
    stop_sandbox(probe[0], probe[1])
    receiver = CallbackReceiver(corp_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "wecom_plugin.emulator", "--port", "0", "--org", "generated:30:3",
         "--callback-url", receiver.url, "--callback-token", receiver.token, "--callback-aes-key", receiver.aes_key],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _read_until_serving(proc)
        env = dict(line.split("=", 1) for line in lines if line.startswith("WECOM_"))
        assert env["WECOM_CORP_ID"] == corp_id and env["WECOM_AGENT_ID"] == "1000002"
        assert env["WECOM_CALLBACK_TOKEN"] == receiver.token and env["WECOM_CALLBACK_AES_KEY"] == receiver.aes_key
        assert {"WECOM_API_BASE_URL", "WECOM_SECRET", "WECOM_CONTACT_SECRET", "WECOM_SANDBOX",
                "WECOM_CONTACT_CALLBACK_TOKEN", "WECOM_CONTACT_CALLBACK_AES_KEY"} <= set(env)  # fmt: skip
        [ui] = [line.split()[-1] for line in lines if line.strip().startswith("UI:")]
        assert requests.get(ui, timeout=5).status_code == 200
        assert any("URL verification passed" in line for line in lines)
        api = env["WECOM_API_BASE_URL"]
        token = requests.get(api + "gettoken", params={"corpid": corp_id, "corpsecret": env["WECOM_SECRET"]}).json()
        assert token["errcode"] == 0
        base = api.removesuffix("/cgi-bin/")
        requests.post(base + "/_emulator/callbacks/app/enter", json={"userid": _first_user(base)}, timeout=5)
        assert requests.post(base + "/_emulator/callbacks/drain", json={"timeout": 5}, timeout=10).json()["idle"]
        assert [e["Event"] for e in receiver.events()] == ["enter_agent"]
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        receiver.close()


def _first_user(base: str) -> str:
    users = requests.get(base + "/_emulator/org", timeout=5).json()["users"]
    return next(u["userid"] for u in users if u["status"] == 1)


def test_start_sandbox_patches_credentials_and_keeps_receivers_across_resets():
    receiver = CallbackReceiver("wwdemo0000000001")
    server, thread, creds = start_sandbox(
        "generated:20:2", corp_id="wwdemo0000000001", agent_id=1000042, secret="s" * 43, contact_secret="c" * 43,
        contact_callback_url=receiver.url, contact_callback_token=receiver.token,
        contact_callback_aes_key=receiver.aes_key, clock=ManualClock(), flags={"contact_callback_pre_2022": True},
    )  # fmt: skip
    try:
        tenant = server.tenant
        assert creds.corp_id == "wwdemo0000000001" and creds.agent_id == 1000042 and creds.secret == "s" * 43
        assert 1000042 in tenant.data.apps and 1000002 not in tenant.data.apps
        assert any(c.creator == 1000042 for c in tenant.data.chats.values())  # our chats follow the renumbering
        assert creds.contact_secret == "c" * 43 and creds.verification["contact_sync"]["ok"] is True
        env = creds.env()
        assert env["WECOM_API_BASE_URL"] == server.url and env["WECOM_CONTACT_CALLBACK_TOKEN"] == receiver.token
        tenant.reset()
        assert tenant.flags.contact_callback_pre_2022 is True  # start-up flags survive a reset
        requests.post(server.base_url + "/_emulator/directory/hire", json={"userid": "demo01", "name": "演示"})
        tenant.callbacks.drain(5)
        [event] = receiver.events()
        assert event["UserID"] == "demo01" and event["Name"] == "演示"
    finally:
        stop_sandbox(server, thread)
        receiver.close()


def test_the_plugin_accepts_the_printed_settings(tmp_path):
    from wecom_plugin.settings import load_settings

    server, thread, creds = start_sandbox("generated:10")
    try:
        settings = load_settings(environ=creds.env(), instance_path=tmp_path)
        assert settings.api_base_url == creds.api_base_url and settings.corp_id == creds.corp_id
        assert [k.token for k in settings.callback_keys] == [creds.callback_token]
        assert [k.aes_key for k in settings.contact_callback_keys] == [creds.contact_callback_aes_key]
    finally:
        stop_sandbox(server, thread)


def test_derived_callback_credentials_are_stable_and_admin_receivers_default_to_them():
    a = start_sandbox("generated:10:4")
    b = start_sandbox("generated:10:4")
    try:
        assert (
            a[2].callback_token == b[2].callback_token
            and a[2].contact_callback_aes_key == b[2].contact_callback_aes_key
        )
        url = a[0].base_url + "/_emulator/callbacks/receivers"
        body = requests.post(url, json={"receiver": "app", "url": "http://127.0.0.1:1/", "verify": False}).json()
        assert body["receiver"]["token"] == a[2].callback_token
    finally:
        stop_sandbox(a[0], a[1])
        stop_sandbox(b[0], b[1])


def test_register_adds_the_command_to_a_click_group():
    @click.group()
    def group() -> None:
        pass

    register(group)
    result = CliRunner().invoke(group, ["emulator", "--help"])
    assert result.exit_code == 0 and "--contact-callback-aes-key" in result.output and "--org" in result.output


def test_bad_options_are_clear_errors():
    result = CliRunner().invoke(emulator_command, ["--org", "generated:x", "--port", "0"])
    assert result.exit_code != 0 and "generated:N" in result.output
    result = CliRunner().invoke(emulator_command, ["--flag", "nonsense", "--port", "0"])
    assert result.exit_code != 0 and "NAME=VALUE" in result.output
    result = CliRunner().invoke(emulator_command, ["--flag", "no_such_flag=1", "--port", "0"])
    assert result.exit_code != 0 and "no_such_flag" in result.output
