"""Settings are parsed strictly; a bad value stops the process with one line and a non-zero exit."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from tests.support.procs import REPO_ROOT
from wecom_plugin.settings import SettingsError, load_settings

AES_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"  # WeCom's published sample EncodingAESKey
FERNET = base64.urlsafe_b64encode(b"k" * 32).decode()

PRODUCTION = {
    "DATABASE_URL": "sqlite:////tmp/does-not-matter.sqlite3",
    "SECRET_KEY": "x7" * 20,
    "WECOM_CORP_ID": "ww1234567890abcdef",
    "WECOM_AGENT_ID": "1000002",
    "WECOM_SECRET": "app-secret-value",
    "WECOM_CALLBACK_TOKEN": "QDG6eK",
    "WECOM_CALLBACK_AES_KEY": AES_KEY,
    "WECOM_PLUGIN_ENCRYPTION_KEY": FERNET,
}


def _load(**values):
    return load_settings(environ={}, overrides=values)


def test_a_complete_production_configuration_loads():
    settings = _load(**PRODUCTION)
    assert settings.sandbox is False
    assert settings.agent_id == 1000002
    assert settings.api_base_url == "https://qyapi.weixin.qq.com/cgi-bin/"
    assert [k.token for k in settings.callback_keys] == ["QDG6eK"]
    assert settings.contact_callback_keys == ()
    assert settings.timezone == "Asia/Shanghai"


def test_the_environment_overrides_defaults_and_overrides_win_over_the_environment():
    settings = load_settings(environ={**PRODUCTION, "WECOM_CORP_SIZE": "large"}, overrides={"JOB_LEASE_SECONDS": "9"})
    assert settings.corp_size == "large"
    assert settings.job_lease_seconds == 9.0


def test_sandbox_mode_needs_no_secrets_and_points_at_the_emulator():
    settings = _load(WECOM_SANDBOX="true")
    assert settings.sandbox is True
    assert settings.api_base_url.startswith("http://127.0.0.1:")
    assert len(settings.secret_key) >= 32


def test_secrets_are_not_in_the_repr():
    text = repr(_load(**PRODUCTION))
    for secret in (PRODUCTION["SECRET_KEY"], PRODUCTION["WECOM_SECRET"], AES_KEY, FERNET):
        assert secret not in text


def test_a_second_callback_key_pair_is_accepted_for_rotation():
    settings = _load(**PRODUCTION, WECOM_CALLBACK_TOKEN_2="NewToken2", WECOM_CALLBACK_AES_KEY_2="a" * 43)
    assert [k.token for k in settings.callback_keys] == ["QDG6eK", "NewToken2"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"WECOM_AGENT_ID": "abc"}, "WECOM_AGENT_ID: must be an integer, got 'abc'"),
        ({"JOB_LEASE_SECONDS": "soon"}, "JOB_LEASE_SECONDS: must be a number"),
        ({"WORKER_BATCH_SIZE": "0"}, "WORKER_BATCH_SIZE: must be at least 1"),
        ({"CLOCK_PREPARE_SECONDS": "601"}, "CLOCK_PREPARE_SECONDS: must be at most 600"),
        ({"CLOCK_PREPARE_SECONDS": "-1"}, "CLOCK_PREPARE_SECONDS: must be at least 0"),
        ({"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL: unsupported scheme 'mysql'"),
        ({"WECOM_CALLBACK_AES_KEY": "short"}, "WECOM_CALLBACK_AES_KEY: must be exactly 43 characters, got 5"),
        ({"WECOM_CALLBACK_AES_KEY": "!" * 43}, "WECOM_CALLBACK_AES_KEY: is not valid base64"),
        ({"WECOM_CALLBACK_TOKEN": "has space"}, "WECOM_CALLBACK_TOKEN: must be 1-32 ASCII letters or digits"),
        ({"WECOM_CALLBACK_TOKEN_2": "Tok2"}, "WECOM_CALLBACK_AES_KEY_2: is required when WECOM_CALLBACK_TOKEN_2"),
        ({"SECRET_KEY": ""}, "SECRET_KEY: is required"),
        ({"SECRET_KEY": "change-me"}, "SECRET_KEY: is a well-known placeholder"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY: must be at least 32 bytes"),
        ({"WECOM_SECRET": ""}, "WECOM_SECRET: is required"),
        ({"WECOM_CALLBACK_TOKEN": "", "WECOM_CALLBACK_AES_KEY": ""}, "WECOM_CALLBACK_TOKEN: is required"),
        ({"WECOM_PLUGIN_ENCRYPTION_KEY": ""}, "WECOM_PLUGIN_ENCRYPTION_KEY: is required"),
        ({"WECOM_PLUGIN_ENCRYPTION_KEY": "abcd"}, "WECOM_PLUGIN_ENCRYPTION_KEY: must decode to 32 bytes"),
        ({"WECOM_TIMEZONE": "Mars/Olympus"}, "WECOM_TIMEZONE: unknown time zone"),
        ({"WECOM_CORP_SIZE": "huge"}, "WECOM_CORP_SIZE: must be one of small, medium, large"),
        ({"WECOM_BUDGET_HEADROOM": "1.5"}, "WECOM_BUDGET_HEADROOM: must be a share between 0 and 1"),
        ({"WECOM_BUDGET_HEADROOM": "0"}, "WECOM_BUDGET_HEADROOM: must be at least 0.01"),
        ({"WECOM_SANDBOX": "yes-ish"}, "WECOM_SANDBOX: must be true or false"),
        ({"DIRECTORY_SYNC_MINUTES": "-5"}, "DIRECTORY_SYNC_MINUTES: must be at least 0"),
        ({"DIRECTORY_SYNC_MINUTES": "hourly"}, "DIRECTORY_SYNC_MINUTES: must be an integer, got 'hourly'"),
        ({"DIRECTORY_SYNC_CONCURRENCY": "0"}, "DIRECTORY_SYNC_CONCURRENCY: must be at least 1"),
        ({"DIRECTORY_SYNC_CONCURRENCY": "500"}, "DIRECTORY_SYNC_CONCURRENCY: must be at most 32"),
        ({"DIRECTORY_DEPARTED_RETENTION_DAYS": "0"}, "DIRECTORY_DEPARTED_RETENTION_DAYS: must be at least 1"),
        ({"WECOM_API_BASE_URL": "ftp://x"}, "WECOM_API_BASE_URL: must be an http(s) URL"),
        ({"GOVERNANCE_MODE": "remove-everyone"}, "GOVERNANCE_MODE: must be one of observe, dry_run, enforce"),
        ({"MEMBER_CHECK_TIME": "7am"}, "MEMBER_CHECK_TIME: must be a time of day as HH:MM"),
        ({"MEMBER_CHECK_TIME": "24:00"}, "MEMBER_CHECK_TIME: must be a time of day as HH:MM"),
        ({"MEMBER_CHECK_BRAKE_TOTAL": "0"}, "MEMBER_CHECK_BRAKE_TOTAL: must be at least 1"),
        ({"REAL_NAME_PLACEHOLDER_PATTERNS": "测试.*"}, "REAL_NAME_PLACEHOLDER_PATTERNS: must be a JSON list"),
        ({"REAL_NAME_PLACEHOLDER_PATTERNS": '["("]'}, "REAL_NAME_PLACEHOLDER_PATTERNS: '(' is not a valid"),
        ({"REAL_NAME_GRACE_DAYS": "-1"}, "REAL_NAME_GRACE_DAYS: must be at least 0"),
        ({"EXEMPTION_MAX_DAYS": "0"}, "EXEMPTION_MAX_DAYS: must be at least 1"),
        ({"ALERT_WEBHOOK_URL": "not a url"}, "ALERT_WEBHOOK_URL: must be an http(s) URL"),
    ],
)
def test_bad_values_name_the_variable_and_the_problem(changes, message):
    with pytest.raises(SettingsError) as excinfo:
        _load(**{**PRODUCTION, **changes})
    assert str(excinfo.value).startswith(message)
    assert "\n" not in str(excinfo.value)


def test_the_sandbox_refuses_the_real_wecom_api():
    with pytest.raises(SettingsError, match="WECOM_API_BASE_URL: sandbox mode refuses the real WeCom API"):
        _load(WECOM_SANDBOX="true", WECOM_API_BASE_URL="https://qyapi.weixin.qq.com/cgi-bin/")


def test_turning_off_callback_freshness_outside_the_sandbox_is_warned_about():
    assert any("freshness" in w for w in _load(**PRODUCTION, WECOM_CALLBACK_MAX_SKEW="0").warnings)
    assert _load(WECOM_SANDBOX="true", WECOM_CALLBACK_MAX_SKEW="0").warnings == ()


def test_governance_starts_in_observe_mode_and_reads_its_settings():
    settings = _load(WECOM_SANDBOX="true")
    assert settings.governance_mode == "observe"  # safe by default: nothing changes in WeCom
    assert settings.member_check_time == "07:00" and settings.real_name_patterns == ()
    custom = _load(
        WECOM_SANDBOX="true", GOVERNANCE_MODE="Enforce", MEMBER_CHECK_TIME=" 6:30 ",
        REAL_NAME_PLACEHOLDER_PATTERNS='["临时[0-9]*", "test"]', GENERAL_OFFICE_USERIDS="zhangsan, lisi",
    )  # fmt: skip
    assert custom.governance_mode == "enforce" and custom.member_check_time == "06:30"
    assert custom.real_name_patterns == ("临时[0-9]*", "test")
    assert custom.general_office_userids == ("zhangsan", "lisi")


def test_postgres_urls_use_psycopg_3():
    assert _load(**{**PRODUCTION, "DATABASE_URL": "postgres://u@h/db"}).database_url == "postgresql+psycopg://u@h/db"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WECOM_") and k not in PRODUCTION}
    return subprocess.run(
        args, cwd=REPO_ROOT, env={**base, "PYTHONPATH": str(REPO_ROOT), **env}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "env, expected",
    [
        ({**PRODUCTION, "WECOM_AGENT_ID": "12x"}, "WECOM_AGENT_ID: must be an integer, got '12x'"),
        ({**PRODUCTION, "DATABASE_URL": "oracle://db"}, "DATABASE_URL: unsupported scheme 'oracle'"),
        ({**PRODUCTION, "WECOM_CALLBACK_AES_KEY": "abc"}, "WECOM_CALLBACK_AES_KEY: must be exactly 43 characters"),
        (
            {"WECOM_SANDBOX": "true", "WECOM_API_BASE_URL": "https://qyapi.weixin.qq.com/cgi-bin/"},
            "WECOM_API_BASE_URL: sandbox mode refuses the real WeCom API",
        ),
    ],
)
def test_the_cli_prints_one_line_and_exits_non_zero_on_bad_configuration(env, expected):
    result = _run([sys.executable, "-m", "wecom_plugin", "status"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_gunicorn_refuses_to_start_on_bad_configuration_with_one_line():
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    env = {**PRODUCTION, "WECOM_AGENT_ID": "x", "PORT": "0"}
    result = _run([gunicorn, "wsgi:app", "-c", "config/gunicorn.conf.py"], env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert errors == ["wecom-plugin: configuration error: WECOM_AGENT_ID: must be an integer, got 'x'"]
    assert "Traceback" not in result.stderr


def test_help_works_without_any_configuration():
    result = _run([sys.executable, "-m", "wecom_plugin", "worker", "--help"], {})
    assert result.returncode == 0
    assert "Claim and run background jobs" in result.stdout


def test_sandbox_secrets_are_shared_by_every_process_of_one_instance(tmp_path):
    first = load_settings(environ={}, overrides={"WECOM_SANDBOX": "true"}, instance_path=tmp_path)
    second = load_settings(environ={}, overrides={"WECOM_SANDBOX": "true"}, instance_path=tmp_path)
    assert first.secret_key == second.secret_key
    assert first.encryption_key == second.encryption_key
    assert (tmp_path / "sandbox-secrets.json").stat().st_mode & 0o777 == 0o600
    other = load_settings(environ={}, overrides={"WECOM_SANDBOX": "true"}, instance_path=tmp_path / "other")
    assert other.secret_key != first.secret_key


def test_debug_logs_never_show_the_access_token_or_the_secret(tmp_path):
    script = (
        "import logging, requests\n"
        "from wecom_plugin.cli import configure_logging\n"
        "configure_logging('DEBUG')\n"
        "logging.getLogger('urllib3.connectionpool').setLevel(logging.DEBUG)\n"
        "logging.getLogger('x').debug('GET /cgi-bin/gettoken?corpid=ww1&corpsecret=SECRET_VALUE_1 HTTP/1.1')\n"
        "logging.getLogger('x').info('calling %s', 'message/send?access_token=TOKEN_VALUE_2&debug=1')\n"
    )
    result = _run([sys.executable, "-c", script], {})
    assert result.returncode == 0, result.stderr
    assert "SECRET_VALUE_1" not in result.stderr and "TOKEN_VALUE_2" not in result.stderr
    assert "corpsecret=***" in result.stderr and "access_token=***" in result.stderr
