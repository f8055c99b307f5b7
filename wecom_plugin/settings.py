"""Strictly parsed, validated settings.

Values come from ``config/default.py``, then the environment, then ``overrides`` (tests, the demo),
each layer winning over the one before. :func:`load_settings` turns the merged strings into one
frozen :class:`Settings` and raises :class:`SettingsError` naming the first variable that is
missing or malformed; the CLI and gunicorn print that one line and exit non-zero.

Sandbox mode (``WECOM_SANDBOX=true``) is for the demo and tests: secrets get throwaway values and
the process refuses to start against the real WeCom API, so a sandbox can never act on a tenant.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import runpy
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wecom_plugin.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = REPO_ROOT / "config" / "default.py"

REAL_WECOM_HOSTS = ("qyapi.weixin.qq.com",)
CORP_SIZES = ("small", "medium", "large")
# observe: report only (a new install), dry_run: plan and record, enforce: change WeCom chats.
GOVERNANCE_MODES = ("observe", "dry_run", "enforce")
CUSTOMER_GROUP_HANDOVERS = ("wait", "onjob", "off")  # services/customer_groups.py
CALENDAR_FALLBACKS = ("hold", "weekdays")  # domain/workdays.py
# Values that appear in docs and examples; a process that finds one of them refuses to start.
KNOWN_DEFAULT_SECRETS = frozenset({"change-me", "changeme", "secret", "dev", "development", "test"})
MIN_SECRET_KEY_BYTES = 32


class SettingsError(ConfigurationError):
    """A setting is missing or malformed. ``str()`` is one line naming the variable."""

    def __init__(self, name: str, problem: str):
        self.name = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


@dataclass(frozen=True)
class CallbackKey:
    """One (token, EncodingAESKey) pair a callback receiver accepts."""

    token: str
    aes_key: str = field(repr=False)


@dataclass(frozen=True)
class Settings:
    """Every setting the plugin uses, typed. Built only by :func:`load_settings`."""

    sandbox: bool
    database_url: str
    sqlite_busy_timeout: float
    secret_key: str = field(repr=False)
    corp_id: str
    agent_id: int
    app_secret: str = field(repr=False)
    contact_secret: str | None = field(repr=False)
    callback_keys: tuple[CallbackKey, ...]
    contact_callback_keys: tuple[CallbackKey, ...]
    api_base_url: str
    callback_max_skew: int
    timezone: str
    corp_size: str
    budget_headroom: float
    encryption_key: bytes = field(repr=False)
    job_lease_seconds: float
    worker_batch_size: int
    worker_poll_interval: float
    worker_threads: int
    job_max_attempts: int
    clock_tick_seconds: float
    clock_prepare_seconds: float
    heartbeat_stale_seconds: float
    job_modules: tuple[str, ...]
    retention_days: int
    directory_sync_minutes: int
    directory_sync_concurrency: int
    directory_departed_retention_days: int
    employee_id_field: str
    governance_mode: str
    member_check_time: str
    member_check_brake_total: int
    real_name_patterns: tuple[str, ...]
    real_name_grace_days: int
    general_office_userids: tuple[str, ...]
    group_approvers: tuple[str, ...]
    exemption_max_days: int
    customer_group_handover: str
    customer_group_member_scan: bool
    customer_group_wait_days: int
    calendar_fallback: str
    calendar_alert_days: int
    bulletin_quiet_windows: tuple[str, ...]
    bulletin_misfire_grace_minutes: int
    bulletin_broadcast_department_size: int
    alert_webhook_url: str | None
    alert_wecom_userids: tuple[str, ...]
    api_rate_limit_per_minute: int
    api_hmac_max_skew: int
    proxy_fix_x_for: int
    proxy_fix_x_proto: int
    log_level: str
    warnings: tuple[str, ...] = ()

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def default_values() -> dict[str, str]:
    """The documented defaults from ``config/default.py``, as strings."""
    if not DEFAULTS_FILE.is_file():
        raise SettingsError("config/default.py", f"not found at {DEFAULTS_FILE}")
    namespace = runpy.run_path(str(DEFAULTS_FILE))
    return {k: str(v) for k, v in namespace.items() if k.isupper()}


def merged_values(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Defaults, then environment variables of the same names, then ``overrides``."""
    return _merge(overrides, environ)[0]


def _merge(overrides: Mapping[str, Any] | None, environ: Mapping[str, str] | None) -> tuple[dict[str, str], set[str]]:
    values = default_values()
    explicit: set[str] = set()
    env = os.environ if environ is None else environ
    for name in set(values) | set(_OPTIONAL_NAMES):
        if name in env:
            values[name] = env[name]
            explicit.add(name)
    for name, value in (overrides or {}).items():
        values[name] = "" if value is None else str(value)
        explicit.add(name)
    return values, explicit


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    instance_path: str | Path | None = None,
) -> Settings:
    """Parse and validate every setting; raise :class:`SettingsError` on the first bad one."""
    v = _Reader(*_merge(overrides, environ))
    sandbox = v.boolean("WECOM_SANDBOX")
    warnings: list[str] = []

    database_url = _database_url(v.text("DATABASE_URL"), instance_path)

    api_base_url = v.text("WECOM_API_BASE_URL")
    if sandbox and not v.was_set("WECOM_API_BASE_URL"):
        api_base_url = v.text("WECOM_SANDBOX_API_BASE_URL")
    api_base_url = _http_url("WECOM_API_BASE_URL", api_base_url)
    if sandbox and _is_real_wecom(api_base_url):
        raise SettingsError(
            "WECOM_API_BASE_URL",
            "sandbox mode refuses the real WeCom API; point it at the emulator or unset WECOM_SANDBOX",
        )

    sandbox_folder = Path(instance_path) if instance_path else REPO_ROOT / "instance"
    secret_key = v.text("SECRET_KEY")
    if sandbox and not secret_key:
        secret_key = sandbox_secret(sandbox_folder, "SECRET_KEY")
    _check_secret("SECRET_KEY", secret_key, MIN_SECRET_KEY_BYTES)

    corp_id = v.text("WECOM_CORP_ID") or ("wwsandbox0000000001" if sandbox else "")
    agent_raw = v.text("WECOM_AGENT_ID") or ("1000002" if sandbox else "")
    app_secret = v.text("WECOM_SECRET") or ("sandbox-app-secret" if sandbox else "")
    for name, value in (("WECOM_CORP_ID", corp_id), ("WECOM_AGENT_ID", agent_raw), ("WECOM_SECRET", app_secret)):
        if not value:
            raise SettingsError(name, "is required (or set WECOM_SANDBOX=true for the sandbox tenant)")
    agent_id = _integer("WECOM_AGENT_ID", agent_raw, minimum=1)

    callback_keys = _callback_keys(v, "WECOM_CALLBACK", required=not sandbox, sandbox=sandbox)
    contact_keys = _callback_keys(v, "WECOM_CONTACT_CALLBACK", required=False, sandbox=sandbox)

    max_skew = v.integer("WECOM_CALLBACK_MAX_SKEW", minimum=0)
    if max_skew == 0 and not sandbox:
        warnings.append(
            "WECOM_CALLBACK_MAX_SKEW=0 turns off the callback freshness check: replayed callbacks are accepted"
        )

    timezone = v.text("WECOM_TIMEZONE")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError("WECOM_TIMEZONE", f"unknown time zone {timezone!r}") from None

    corp_size = v.choice("WECOM_CORP_SIZE", CORP_SIZES)

    encryption_raw = v.text("WECOM_PLUGIN_ENCRYPTION_KEY")
    if not encryption_raw and sandbox:
        encryption_raw = sandbox_secret(sandbox_folder, "WECOM_PLUGIN_ENCRYPTION_KEY")
    if not encryption_raw:
        raise SettingsError(
            "WECOM_PLUGIN_ENCRYPTION_KEY",
            "is required: 32 random bytes, url-safe base64 (wecom-plugin keys generate prints one)",
        )
    encryption_key = _fernet_key("WECOM_PLUGIN_ENCRYPTION_KEY", encryption_raw)

    alert_webhook = v.text("ALERT_WEBHOOK_URL") or None
    if alert_webhook:
        alert_webhook = _http_url("ALERT_WEBHOOK_URL", alert_webhook)

    return Settings(
        sandbox=sandbox,
        database_url=database_url,
        sqlite_busy_timeout=v.number("SQLITE_BUSY_TIMEOUT", minimum=0.0),
        secret_key=secret_key,
        corp_id=corp_id,
        agent_id=agent_id,
        app_secret=app_secret,
        contact_secret=v.text("WECOM_CONTACT_SECRET") or None,
        callback_keys=callback_keys,
        contact_callback_keys=contact_keys,
        api_base_url=api_base_url,
        callback_max_skew=max_skew,
        timezone=timezone,
        corp_size=corp_size,
        budget_headroom=_share("WECOM_BUDGET_HEADROOM", v.number("WECOM_BUDGET_HEADROOM", minimum=0.01)),
        encryption_key=encryption_key,
        job_lease_seconds=v.number("JOB_LEASE_SECONDS", minimum=1.0),
        worker_batch_size=v.integer("WORKER_BATCH_SIZE", minimum=1, maximum=1000),
        worker_poll_interval=v.number("WORKER_POLL_INTERVAL", minimum=0.01),
        worker_threads=v.integer("WORKER_THREADS", minimum=1, maximum=64),
        job_max_attempts=v.integer("JOB_MAX_ATTEMPTS", minimum=1, maximum=100),
        clock_tick_seconds=v.number("CLOCK_TICK_SECONDS", minimum=0.05),
        clock_prepare_seconds=v.number("CLOCK_PREPARE_SECONDS", minimum=0.0, maximum=600.0),
        heartbeat_stale_seconds=v.number("HEARTBEAT_STALE_SECONDS", minimum=1.0),
        job_modules=v.csv("WECOM_PLUGIN_JOB_MODULES"),
        retention_days=v.integer("RETENTION_DAYS", minimum=1),
        directory_sync_minutes=v.integer("DIRECTORY_SYNC_MINUTES", minimum=0, maximum=7 * 24 * 60),
        directory_sync_concurrency=v.integer("DIRECTORY_SYNC_CONCURRENCY", minimum=1, maximum=32),
        directory_departed_retention_days=v.integer("DIRECTORY_DEPARTED_RETENTION_DAYS", minimum=1),
        employee_id_field=v.text("EMPLOYEE_ID_FIELD"),
        governance_mode=v.choice("GOVERNANCE_MODE", GOVERNANCE_MODES),
        member_check_time=_clock_time("MEMBER_CHECK_TIME", v.text("MEMBER_CHECK_TIME")),
        member_check_brake_total=v.integer("MEMBER_CHECK_BRAKE_TOTAL", minimum=1),
        real_name_patterns=_patterns("REAL_NAME_PLACEHOLDER_PATTERNS", v.text("REAL_NAME_PLACEHOLDER_PATTERNS")),
        real_name_grace_days=v.integer("REAL_NAME_GRACE_DAYS", minimum=0, maximum=365),
        general_office_userids=v.csv("GENERAL_OFFICE_USERIDS"),
        group_approvers=v.csv("GROUP_APPROVERS"),
        exemption_max_days=v.integer("EXEMPTION_MAX_DAYS", minimum=1, maximum=3660),
        customer_group_handover=v.choice("CUSTOMER_GROUP_HANDOVER", CUSTOMER_GROUP_HANDOVERS),
        customer_group_member_scan=v.boolean("CUSTOMER_GROUP_MEMBER_SCAN"),
        customer_group_wait_days=v.integer("CUSTOMER_GROUP_WAIT_DAYS", minimum=1, maximum=365),
        calendar_fallback=v.choice("CALENDAR_FALLBACK", CALENDAR_FALLBACKS),
        calendar_alert_days=v.integer("CALENDAR_ALERT_DAYS", minimum=1, maximum=366),
        bulletin_quiet_windows=_quiet_windows("BULLETIN_QUIET_WINDOWS", v.csv("BULLETIN_QUIET_WINDOWS")),
        bulletin_misfire_grace_minutes=v.integer("BULLETIN_MISFIRE_GRACE_MINUTES", minimum=1, maximum=24 * 60),
        bulletin_broadcast_department_size=v.integer("BULLETIN_BROADCAST_DEPARTMENT_SIZE", minimum=1),
        alert_webhook_url=alert_webhook,
        alert_wecom_userids=v.csv("ALERT_WECOM_USERIDS"),
        api_rate_limit_per_minute=v.integer("API_RATE_LIMIT_PER_MINUTE", minimum=1),
        api_hmac_max_skew=v.integer("API_HMAC_MAX_SKEW", minimum=1),
        proxy_fix_x_for=v.integer("PROXY_FIX_X_FOR", minimum=0, maximum=10),
        proxy_fix_x_proto=v.integer("PROXY_FIX_X_PROTO", minimum=0, maximum=10),
        log_level=v.choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")),
        warnings=tuple(warnings),
    )


SANDBOX_SECRETS_FILE = "sandbox-secrets.json"


def sandbox_secret(folder: Path, name: str) -> str:
    """A random secret for sandbox mode, the same for every process sharing the instance folder.

    Web, worker and clock must agree on SECRET_KEY and WECOM_PLUGIN_ENCRYPTION_KEY (an API key
    encrypted by one process is decrypted by another), so the sandbox generates them once into
    ``instance/sandbox-secrets.json`` (mode 0600, created atomically) instead of per process.
    """
    path = folder / SANDBOX_SECRETS_FILE
    for _ in range(50):
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            return values[name]
        except FileNotFoundError:
            folder.mkdir(parents=True, exist_ok=True)
            fresh = {
                "SECRET_KEY": secrets.token_urlsafe(32),
                "WECOM_PLUGIN_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            }
            tmp = folder / f".{SANDBOX_SECRETS_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(fresh), encoding="utf-8")
            tmp.chmod(0o600)
            try:
                os.link(tmp, path)  # atomic: exactly one process's values win
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except (json.JSONDecodeError, KeyError):
            raise SettingsError(name, f"{path} is corrupt; delete it to generate new sandbox secrets") from None
    raise SettingsError(name, f"could not create {path}")


# Variables with no entry in config/default.py (secrets and optional pairs): read from the
# environment all the same.
_OPTIONAL_NAMES = (
    "SECRET_KEY",
    "WECOM_CORP_ID",
    "WECOM_AGENT_ID",
    "WECOM_SECRET",
    "WECOM_CONTACT_SECRET",
    "WECOM_CALLBACK_TOKEN",
    "WECOM_CALLBACK_AES_KEY",
    "WECOM_CALLBACK_TOKEN_2",
    "WECOM_CALLBACK_AES_KEY_2",
    "WECOM_CONTACT_CALLBACK_TOKEN",
    "WECOM_CONTACT_CALLBACK_AES_KEY",
    "WECOM_CONTACT_CALLBACK_TOKEN_2",
    "WECOM_CONTACT_CALLBACK_AES_KEY_2",
    "WECOM_PLUGIN_ENCRYPTION_KEY",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class _Reader:
    """Typed access to the merged string values; every failure names its variable."""

    def __init__(self, values: Mapping[str, str], explicit: set[str]):
        self._values = values
        self._explicit = explicit

    def was_set(self, name: str) -> bool:
        """True if the environment or an override gave a value (even one equal to the default)."""
        return name in self._explicit

    def text(self, name: str) -> str:
        return self._values.get(name, "").strip()

    def boolean(self, name: str) -> bool:
        raw = self.text(name).lower()
        if raw in _TRUE:
            return True
        if raw in _FALSE:
            return False
        raise SettingsError(name, f"must be true or false, got {raw!r}")

    def integer(self, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
        return _integer(name, self.text(name), minimum, maximum)

    def number(self, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
        raw = self.text(name)
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, f"must be a number, got {raw!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise SettingsError(name, f"must be a finite number, got {raw!r}")
        if minimum is not None and value < minimum:
            raise SettingsError(name, f"must be at least {minimum:g}, got {raw!r}")
        if maximum is not None and value > maximum:
            raise SettingsError(name, f"must be at most {maximum:g}, got {raw!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        raw = self.text(name)
        normalized = raw.upper() if choices[0].isupper() else raw.lower()
        if normalized not in choices:
            raise SettingsError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
        return normalized

    def csv(self, name: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in self.text(name).split(",") if part.strip())


def _clock_time(name: str, raw: str) -> str:
    """``HH:MM`` (24 h), normalised to two digits each."""
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", raw)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise SettingsError(name, f"must be a time of day as HH:MM (24-hour), got {raw!r}")
    return f"{int(match.group(1)):02d}:{match.group(2)}"


def _quiet_windows(name: str, windows: tuple[str, ...]) -> tuple[str, ...]:
    """``HH:MM-HH:MM`` windows, normalised (a window may run past midnight, e.g. 22:00-07:00)."""
    out = []
    for window in windows:
        start, sep, end = window.partition("-")
        if not sep:
            raise SettingsError(name, f"a quiet window is written HH:MM-HH:MM, got {window!r}")
        first, last = _clock_time(name, start), _clock_time(name, end)
        if first == last:
            raise SettingsError(name, f"a quiet window cannot start and end at the same time: {window!r}")
        out.append(f"{first}-{last}")
    return tuple(out)


def _patterns(name: str, raw: str) -> tuple[str, ...]:
    """A JSON list of regular expressions (empty: the built-in placeholder patterns)."""
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(name, 'must be a JSON list of regular expressions, e.g. ["测试\\d*", "test\\d*"]') from None
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise SettingsError(name, "must be a JSON list of non-empty strings (regular expressions)")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SettingsError(name, f"{pattern!r} is not a valid regular expression: {exc}") from None
    return tuple(value)


def _integer(name: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise SettingsError(name, f"must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(name, f"must be at most {maximum}, got {value}")
    return value


def _share(name: str, value: float) -> float:
    if value > 1:
        raise SettingsError(name, f"must be a share between 0 and 1, got {value:g}")
    return value


def _database_url(raw: str, instance_path: str | Path | None) -> str:
    if not raw:
        folder = Path(instance_path) if instance_path else REPO_ROOT / "instance"
        return f"sqlite:///{folder / 'wecom-plugin.sqlite3'}"
    scheme = raw.split(":", 1)[0].lower() if ":" in raw else ""
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        # psycopg 3 is the only PostgreSQL driver we ship; normalise the common spellings to it.
        return "postgresql+psycopg:" + raw.split(":", 1)[1]
    if scheme == "sqlite":
        return raw
    raise SettingsError(
        "DATABASE_URL",
        f"unsupported scheme {scheme or '(none)'!r}; use sqlite:///path or postgresql://user@host/db",
    )


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(name, f"must be an http(s) URL, got {raw!r}")
    return raw if raw.endswith("/") or name != "WECOM_API_BASE_URL" else raw + "/"


def _is_real_wecom(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in REAL_WECOM_HOSTS) or host.endswith(".qq.com")


def _check_secret(name: str, value: str, min_bytes: int) -> None:
    if not value:
        raise SettingsError(name, "is required")
    if value.lower() in KNOWN_DEFAULT_SECRETS:
        raise SettingsError(name, "is a well-known placeholder; generate a random value")
    if len(value.encode()) < min_bytes:
        raise SettingsError(name, f"must be at least {min_bytes} bytes of random data, got {len(value.encode())}")


def _callback_keys(v: _Reader, prefix: str, *, required: bool, sandbox: bool) -> tuple[CallbackKey, ...]:
    """The receiver's primary pair and an optional second pair (key rotation)."""
    keys: list[CallbackKey] = []
    for suffix in ("", "_2"):
        token_name, aes_name = f"{prefix}_TOKEN{suffix}", f"{prefix}_AES_KEY{suffix}"
        token, aes_key = v.text(token_name), v.text(aes_name)
        if not token and not aes_key:
            if suffix == "" and required:
                raise SettingsError(token_name, "is required (the token of the app's receiving server)")
            continue
        if not token:
            raise SettingsError(token_name, f"is required when {aes_name} is set")
        if not aes_key:
            raise SettingsError(aes_name, f"is required when {token_name} is set")
        _check_token(token_name, token)
        _check_aes_key(aes_name, aes_key)
        keys.append(CallbackKey(token=token, aes_key=aes_key))
    if not keys and sandbox and prefix == "WECOM_CALLBACK":
        keys.append(CallbackKey(token="sandboxToken", aes_key="s" * 43))  # noqa: S106 - sandbox only
    return tuple(keys)


def _check_token(name: str, token: str) -> None:
    # WeCom's console accepts 1-32 letters and digits for the receiver token.
    if not (1 <= len(token) <= 32 and token.isascii() and token.isalnum()):
        raise SettingsError(name, "must be 1-32 ASCII letters or digits, as WeCom's console generates")


def _check_aes_key(name: str, aes_key: str) -> None:
    # EncodingAESKey is 43 base64 characters that decode (with one '=') to a 32-byte AES-256 key.
    if len(aes_key) != 43:
        raise SettingsError(name, f"must be exactly 43 characters, got {len(aes_key)}")
    try:
        decoded = base64.b64decode(aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(name, "is not valid base64") from None
    if len(decoded) != 32:
        raise SettingsError(name, "does not decode to a 32-byte key")


def _fernet_key(name: str, raw: str) -> bytes:
    try:
        decoded = base64.urlsafe_b64decode(raw.encode())
    except (binascii.Error, ValueError):
        raise SettingsError(name, "must be url-safe base64") from None
    if len(decoded) != 32:
        raise SettingsError(name, f"must decode to 32 bytes, got {len(decoded)}")
    return raw.encode()
