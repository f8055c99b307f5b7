"""deploy/ and docs/deploy.md stay true to the code.

* Every command a systemd unit runs exists: ``wecom-plugin ...`` resolves in the click command tree
  (options included), gunicorn's config file and the WSGI module exist, and each Procfile line has its unit.
* ``systemd-analyze verify`` and ``nginx -t`` accept the files (skipped when the tool is not installed).
* The nginx example proxies nothing but the two WeCom receivers on its public listeners.
* Every environment variable docs/deploy.md names exists in config/example.env, every ``wecom-plugin``
  command it cites exists (the ``directory`` group only once it is there), and every file it links exists.
"""

from __future__ import annotations

import ipaddress
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from wecom_plugin.cli import EXIT_CONFIG, cli
from wecom_plugin.runtime.registry import DEFAULT_TIMEOUT_SECONDS

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "deploy" / "systemd"
NGINX_CONF = ROOT / "deploy" / "nginx" / "wecom-plugin.conf"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
EXAMPLE_ENV = ROOT / "config" / "example.env"

# Where the units expect things on a production host.
INSTALL_DIR = "/opt/wecom-plugin"
ENV_DIR = "/etc/wecom-plugin"
UNIT_FILES = sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".target"))
PROCESS_UNITS = ("wecom-plugin-web.service", "wecom-plugin-worker@.service", "wecom-plugin-clock.service")
MIGRATE_UNIT = "wecom-plugin-migrate.service"

# Commands the doc may cite before they exist: another issue is building them.
PENDING_GROUPS = {"directory"}


# --- small parsers ------------------------------------------------------------------------------
def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat, e.g. EnvironmentFile)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service(path: Path) -> dict[str, list[str]]:
    return parse_unit(path).get("Service", {})


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"expected one {key}=, got {values}"
    return values[0]


def exec_argv(value: str) -> list[str]:
    """ExecStart= value as argv, without systemd's prefix characters (-, @, +, !)."""
    return shlex.split(value.lstrip("-@+!:"))


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|sec|hr|s|m|h)?(?![a-z])")
_SPAN_SECONDS = {None: 1, "ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def timespan_seconds(value: str) -> float:
    """systemd time span ("30", "16min", "1h 30s") in seconds."""
    parts = _SPAN.findall(value)
    assert parts and _SPAN.sub("", value).strip() == "", f"not a time span: {value!r}"
    return sum(float(n) * _SPAN_SECONDS[u or None] for n, u in parts)


def resolve_cli(args: list[str]) -> tuple[click.Command | None, list[str], list[str]]:
    """Walk the click tree along ``args``: (command reached, path taken, remaining args).

    The command is None when a subcommand name is not found.
    """
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        ctx = click.Context(command, info_name=" ".join(["wecom-plugin", *path]))
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            return None, [*path, rest[0]], rest[1:]
        path.append(rest.pop(0))
        command = sub
    return command, path, rest


def option_names(command: click.Command) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


# --- systemd --------------------------------------------------------------------------------------
def test_the_unit_files_are_the_expected_set():
    assert [p.name for p in UNIT_FILES] == sorted(["wecom-plugin.target", MIGRATE_UNIT, *PROCESS_UNITS])


@pytest.mark.parametrize("unit", [p for p in UNIT_FILES if p.suffix == ".service"], ids=lambda p: p.name)
def test_every_exec_start_runs_an_existing_command(unit: Path):
    svc = service(unit)
    assert one(svc, "WorkingDirectory") == INSTALL_DIR
    commands = svc.get("ExecStart", [])
    assert commands, f"{unit.name} has no ExecStart"
    for value in commands:
        argv = exec_argv(value)
        executable = Path(argv[0])
        assert executable.is_absolute(), f"{unit.name}: ExecStart must use an absolute path: {value}"
        assert str(executable.parent) == f"{INSTALL_DIR}/.venv/bin", f"{unit.name}: not the venv's binary: {value}"
        if executable.name == "wecom-plugin":
            command, path, rest = resolve_cli(argv[1:])
            assert command is not None, f"{unit.name}: `wecom-plugin {' '.join(path)}` does not exist"
            assert not isinstance(command, click.Group), f"{unit.name}: `wecom-plugin {' '.join(path)}` is a group"
            # Parses the remaining options and arguments exactly as the console script would.
            command.make_context(" ".join(["wecom-plugin", *path]), rest)
            assert path[0] not in PENDING_GROUPS, f"{unit.name}: a unit must not depend on a pending command"
        elif executable.name == "gunicorn":
            assert argv[1] == "wsgi:app", value
            module, _, attribute = argv[1].partition(":")
            assert re.search(rf"^\s*{attribute} = ", (ROOT / f"{module}.py").read_text(encoding="utf-8"), re.M)
            config = argv[argv.index("-c") + 1]
            assert not Path(config).is_absolute() and (ROOT / config).is_file(), f"{unit.name}: {config} missing"
        else:
            pytest.fail(f"{unit.name}: unexpected executable {executable}")


def test_each_procfile_process_has_a_unit_running_its_command():
    exec_starts = []
    for unit in UNIT_FILES:
        for value in service(unit).get("ExecStart", []):
            argv = exec_argv(value)
            exec_starts.append((unit.name, [Path(argv[0]).name, *argv[1:]]))
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        name, _, command = line.partition(":")
        wanted = shlex.split(command)
        matches = [unit for unit, argv in exec_starts if argv[: len(wanted)] == wanted]
        assert matches, f"no unit runs the Procfile's {name}: {command.strip()}"


def test_process_units_run_after_the_migration_with_the_shared_environment_and_hardening():
    for name in (MIGRATE_UNIT, *PROCESS_UNITS):
        sections = parse_unit(SYSTEMD / name)
        unit, svc = sections["Unit"], sections["Service"]
        assert svc["EnvironmentFile"][0] == f"{ENV_DIR}/env", name
        assert one(svc, "User") == "wecom-plugin" and one(svc, "Group") == "wecom-plugin", name
        assert one(svc, "NoNewPrivileges") == "yes", name
        assert one(svc, "ProtectSystem") == "strict", name
        assert one(svc, "PrivateTmp") == "yes", name
        assert one(svc, "ReadWritePaths") == f"{INSTALL_DIR}/instance", name
        assert one(unit, "PartOf") == "wecom-plugin.target", name
        if name == MIGRATE_UNIT:
            assert one(svc, "Type") == "oneshot"
            continue
        assert MIGRATE_UNIT in one(unit, "Requires").split(), name
        assert MIGRATE_UNIT in one(unit, "After").split(), name
        assert one(svc, "Restart") == "on-failure", name
        assert one(svc, "KillSignal") == "SIGTERM", name
        # A configuration error (the console script's and gunicorn's on_starting exit code) is not restarted.
        assert one(svc, "RestartPreventExitStatus") == str(EXIT_CONFIG), name


def test_stop_timeouts_leave_room_for_a_graceful_stop():
    worker = service(SYSTEMD / "wecom-plugin-worker@.service")
    # SIGTERM lets the running job finish; a job counts as hung only after its type's timeout.
    assert timespan_seconds(one(worker, "TimeoutStopSec")) >= DEFAULT_TIMEOUT_SECONDS
    web = service(SYSTEMD / "wecom-plugin-web.service")
    gunicorn = runpy.run_path(str(ROOT / "config" / "gunicorn.conf.py"))
    assert timespan_seconds(one(web, "TimeoutStopSec")) > gunicorn["graceful_timeout"]


def test_the_target_starts_web_one_worker_and_the_clock():
    target = parse_unit(SYSTEMD / "wecom-plugin.target")
    wants = one(target["Unit"], "Wants").split()
    assert set(wants) == {"wecom-plugin-web.service", "wecom-plugin-worker@1.service", "wecom-plugin-clock.service"}
    assert one(target["Install"], "WantedBy") == "multi-user.target"


def _venv_bin() -> Path | None:
    for candidate in (ROOT / ".venv" / "bin", Path(sys.executable).parent):
        if (candidate / "wecom-plugin").is_file() and (candidate / "gunicorn").is_file():
            return candidate
    return None


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    venv_bin = _venv_bin()
    if venv_bin is None:
        pytest.skip("no virtual environment with the wecom-plugin and gunicorn scripts to point the units at")
    (tmp_path / "instance").mkdir()
    (tmp_path / "env").write_text("", encoding="utf-8")
    for unit in UNIT_FILES:
        text = unit.read_text(encoding="utf-8")
        # Point the production paths at this checkout (verify checks that executables exist).
        text = text.replace(f"{INSTALL_DIR}/instance", str(tmp_path / "instance"))
        text = text.replace(f"{INSTALL_DIR}/.venv/bin", str(venv_bin))
        text = text.replace(f"{ENV_DIR}/", f"{tmp_path}/")
        text = text.replace(INSTALL_DIR, str(ROOT))
        (tmp_path / unit.name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", "--man=no", *(f"./{unit.name}" for unit in UNIT_FILES)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    ours = [
        line
        for line in output.splitlines()
        if str(tmp_path) in line or any(u.name.split("@")[0] in line for u in UNIT_FILES)
    ]
    assert not ours, "\n".join(ours)
    if result.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {output.strip()[:300]}")


# --- nginx ----------------------------------------------------------------------------------------
@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


_NGINX_TOKEN = re.compile(r"""#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};"'#]+""")


def parse_nginx(text: str) -> list[Directive]:
    tokens = [t for t in _NGINX_TOKEN.findall(text) if not t.startswith("#")]
    position = 0

    def block() -> list[Directive]:
        nonlocal position
        directives: list[Directive] = []
        words: list[str] = []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                directives.append(Directive(words[0], words[1:]))
                words = []
            elif token == "{":
                name, *args = words
                directives.append(Directive(name, args, block()))
                words = []
            elif token == "}":
                assert not words, f"unterminated directive {words}"
                return directives
            else:
                words.append(token[1:-1] if token[0] in "\"'" else token)
        assert not words, f"unterminated directive {words}"
        return directives

    return block()


def _servers() -> list[Directive]:
    http = parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))
    return [d for d in http if d.name == "server"]


def _is_public(server: Directive) -> bool:
    """A server is public when any of its listen directives is not bound to a private or loopback address."""
    for listen in server.all("listen"):
        address = listen.args[0]
        if address.startswith("unix:"):
            continue
        if address.startswith("["):  # [::]:443, [::1]:8443
            host = address[1 : address.index("]")]
        else:  # 443, *:443, 10.0.0.5:443, 10.0.0.5
            host = address.rsplit(":", 1)[0] if ":" in address else address
        if host.isdigit() or host in ("*", "0.0.0.0", "::"):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return True  # a host name: assume it resolves to a public address
        if not (ip.is_private or ip.is_loopback):
            return True
    return False


def _location_for(server: Directive, path: str) -> Directive | None:
    """The location nginx picks for ``path``: exact, then the longest prefix (^~ stops), then regexes in order."""
    prefixes: list[tuple[str, Directive, bool]] = []
    regexes: list[tuple[re.Pattern[str], Directive]] = []
    for location in server.all("location"):
        assert not location.all("location"), "nested locations: extend this test before using them"
        if location.args[0] == "=":
            if location.args[1] == path:
                return location
        elif location.args[0] in ("~", "~*"):
            flags = re.IGNORECASE if location.args[0] == "~*" else 0
            regexes.append((re.compile(location.args[1], flags), location))
        elif location.args[0] == "^~":
            prefixes.append((location.args[1], location, True))
        else:
            prefixes.append((location.args[0], location, False))
    matching = sorted((p for p in prefixes if path.startswith(p[0])), key=lambda p: len(p[0]), reverse=True)
    if matching and matching[0][2]:
        return matching[0][1]
    for pattern, location in regexes:
        if pattern.search(path):
            return location
    return matching[0][1] if matching else None


def _proxied(location: Directive | None) -> bool:
    return location is not None and any(
        location.all(name) for name in ("proxy_pass", "uwsgi_pass", "fastcgi_pass", "scgi_pass", "grpc_pass")
    )


RECEIVERS = {"/wecom/callback", "/wecom/callback/contacts"}
NOT_PUBLIC = [
    "/",
    "/healthz",
    "/readyz",
    "/status",
    "/api/v1",
    "/api/v1/whoami",
    "/console",
    "/wecom",
    "/wecom/",
    "/wecom/callback/",
    "/wecom/callbackx",
    "/wecom/callback/contacts/",
    "/wecom/callback/contacts/x",
    "/wecom/callback/other",
    "/WECOM/CALLBACK",
    "/WW_verify_abc123.txt",
]


def test_nginx_public_servers_proxy_only_the_wecom_receivers():
    public = [s for s in _servers() if _is_public(s)]
    assert public, "no public server in the nginx example"
    https = [s for s in public if any("ssl" in listen.args for listen in s.all("listen"))]
    assert https, "no public HTTPS server"
    for server in public:
        assert not server.all("proxy_pass"), "proxy_pass at server level"
        for path in NOT_PUBLIC:
            assert not _proxied(_location_for(server, path)), f"{path} is proxied publicly"
    for server in https:
        assert [d.args for d in server.all("client_max_body_size")] == [["64k"]]
        for path in RECEIVERS:
            location = _location_for(server, path)
            assert _proxied(location), f"{path} is not proxied"
            headers = {d.args[0]: d.args[1] for d in location.all("proxy_set_header")}
            assert headers.get("X-Forwarded-For") == "$proxy_add_x_forwarded_for"
            assert headers.get("X-Forwarded-Proto") == "$scheme"
            # WeCom gives up after 5 s: nginx must not wait longer than that on the plugin.
            timeouts = [d.args[0] for d in location.all("proxy_read_timeout")]
            assert len(timeouts) == 1 and timespan_seconds(timeouts[0]) <= 5, timeouts


def test_nginx_internal_servers_are_restricted_to_internal_addresses():
    internal = [s for s in _servers() if not _is_public(s)]
    for server in internal:
        assert ["all"] in [d.args for d in server.all("deny")], "an internal server without `deny all`"


def test_nginx_accepts_the_example(tmp_path: Path):
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).is_file()), None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wecom.example.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "logs").mkdir()
    site = NGINX_CONF.read_text(encoding="utf-8")
    site = re.sub(r"/etc/nginx/tls/\S+/fullchain\.pem", str(tmp_path / "cert.pem"), site)
    site = re.sub(r"/etc/nginx/tls/\S+/privkey\.pem", str(tmp_path / "key.pem"), site)
    site = site.replace("/var/log/nginx/", f"{tmp_path}/logs/")
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    (tmp_path / "nginx.conf").write_text(
        f"error_log {tmp_path}/logs/error.log;\npid {tmp_path}/nginx.pid;\n"
        f"events {{}}\nhttp {{\n    include {tmp_path}/site.conf;\n}}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "logs" / "error.log"), "-c", "nginx.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- docs/deploy.md ---------------------------------------------------------------------------------
def _doc_code() -> tuple[list[str], list[str]]:
    """(inline code spans, lines of fenced code blocks) of docs/deploy.md."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    fenced: list[str] = []
    prose: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        (fenced if inside else prose).append(line)
    assert not inside, "unclosed code block"
    spans = re.findall(r"`([^`\n]+)`", "\n".join(prose))
    return spans, fenced


def _example_env_names() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", EXAMPLE_ENV.read_text(encoding="utf-8"), re.M))


_ENV_LIKE = re.compile(r"(?<![A-Za-z0-9_])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(_\*)?(?![A-Za-z0-9_])")


def test_every_env_variable_the_doc_names_is_in_example_env():
    names = _example_env_names()
    families = {name.split("_")[0] for name in names}  # WECOM, DATABASE, PROXY, ALERT, ...
    spans, fenced = _doc_code()
    mentioned: set[str] = set()
    for span in spans:
        for match in _ENV_LIKE.finditer(span):
            if match.group(1).split("_")[0] in families:
                mentioned.add(match.group(1) + (match.group(2) or ""))
    for line in fenced:
        match = re.match(r"^\s*([A-Z][A-Z0-9_]*)=", line)
        if match:
            mentioned.add(match.group(1))
    unknown = {
        name
        for name in mentioned
        if not (name in names or (name.endswith("_*") and any(known.startswith(name[:-1]) for known in names)))
    }
    assert not unknown, f"docs/deploy.md names variables config/example.env does not have: {sorted(unknown)}"
    # And the ones a deployment cannot do without are all explained.
    required = {
        "WECOM_CORP_ID", "WECOM_AGENT_ID", "WECOM_SECRET", "WECOM_CONTACT_SECRET",
        "WECOM_CALLBACK_TOKEN", "WECOM_CALLBACK_AES_KEY", "WECOM_CALLBACK_TOKEN_2", "WECOM_CALLBACK_AES_KEY_2",
        "WECOM_CONTACT_CALLBACK_TOKEN", "WECOM_CONTACT_CALLBACK_AES_KEY",
        "DATABASE_URL", "SECRET_KEY", "WECOM_PLUGIN_ENCRYPTION_KEY", "PROXY_FIX_X_FOR", "PROXY_FIX_X_PROTO",
    }  # fmt: skip
    assert required <= mentioned, f"docs/deploy.md does not mention {sorted(required - mentioned)}"


_CLI_MENTION = re.compile(r"(?:^|(?<=[\s/]))wecom-plugin((?:[ \t]+[-\w.\[\]]+)*)")


def test_every_command_the_doc_cites_exists():
    spans, fenced = _doc_code()
    checked = 0
    for text in [*spans, *fenced]:
        for match in _CLI_MENTION.finditer(text):
            words = match.group(1).split()
            if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
                continue  # "wecom-plugin" as a name (the user, a path), not a command
            args = [w for w in words if not w.startswith("[")]
            command, path, _ = resolve_cli(args)
            if command is None and path[0] in PENDING_GROUPS and resolve_cli(path[:1])[0] is None:
                continue  # the group is still being built
            assert command is not None, f"docs/deploy.md cites `wecom-plugin {' '.join(path)}`, which does not exist"
            flags = {w.strip("[]").split("=")[0] for w in words if w.strip("[").startswith("--")}
            unknown = flags - option_names(command)
            assert not unknown, f"`wecom-plugin {' '.join(path)}` has no option {sorted(unknown)}"
            checked += 1
    assert checked >= 10, "the command scan found almost nothing: is the pattern still right?"


def test_the_doc_lists_every_unit_and_links_only_existing_files():
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    for unit in UNIT_FILES:
        assert unit.name in text, f"docs/deploy.md does not mention {unit.name}"
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", text):
        assert (DEPLOY_DOC.parent / target).resolve().exists(), f"broken link {target}"
    for path in re.findall(r"`((?:deploy|config)/[\w./@-]+)`", text):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
