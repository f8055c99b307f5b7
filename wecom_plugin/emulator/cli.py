"""``emulator``: run the sandbox tenant from the command line (a click command), or in-process.

::

    wecom-plugin emulator --port 8099 --org generated:200:7 \\
        --callback-url http://127.0.0.1:5000/wecom/callback \\
        --contact-callback-url http://127.0.0.1:5000/wecom/contact-callback
    python -m wecom_plugin.emulator --port 0          # the same without the plugin's CLI

It prints the credentials in use as a ready-to-paste block of ``WECOM_*`` variables for the plugin
(``WECOM_API_BASE_URL`` included), the admin and UI URLs and the outcome of each receiver's URL
verification, then serves until SIGTERM or SIGINT.

Callback tokens and EncodingAESKeys not given on the command line are derived from the corp id, so
the same org gives the same block on every run. :func:`start_sandbox` does the same for the demo,
in-process; :func:`register` adds the command to a click group.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from .callbacks import CONTACT_SYNC, hub_for
from .clock import Clock, ManualClock, RealClock
from .org import OUR_AGENTID, build_corp, org_spec
from .serve import serve, stop
from .state import Tenant
from .wxcrypto import generate_aes_key, generate_token

DEFAULT_ORG = "generated:200:7"


@dataclass
class Credentials:
    """What the plugin needs to talk to the sandbox tenant (and what a test may want to check)."""

    api_base_url: str
    admin_url: str
    ui_url: str
    corp_id: str
    agent_id: int
    secret: str
    contact_secret: str | None
    callback_token: str
    callback_aes_key: str
    contact_callback_token: str
    contact_callback_aes_key: str
    callback_url: str | None = None
    contact_callback_url: str | None = None
    verification: dict[str, Any] = field(default_factory=dict)  # receiver id -> outcome

    def env(self) -> dict[str, str]:
        """The plugin's ``WECOM_*`` settings for this tenant."""
        out = {
            "WECOM_SANDBOX": "true",
            "WECOM_API_BASE_URL": self.api_base_url,
            "WECOM_CORP_ID": self.corp_id,
            "WECOM_AGENT_ID": str(self.agent_id),
            "WECOM_SECRET": self.secret,
        }
        if self.contact_secret:
            out["WECOM_CONTACT_SECRET"] = self.contact_secret
        out["WECOM_CALLBACK_TOKEN"] = self.callback_token
        out["WECOM_CALLBACK_AES_KEY"] = self.callback_aes_key
        out["WECOM_CONTACT_CALLBACK_TOKEN"] = self.contact_callback_token
        out["WECOM_CONTACT_CALLBACK_AES_KEY"] = self.contact_callback_aes_key
        return out

    def env_block(self) -> str:
        return "\n".join(f"{k}={v}" for k, v in self.env().items())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _derived(corp_id: str, which: str) -> tuple[str, str]:
    rng = random.Random(f"sandbox-callback:{corp_id}:{which}")
    return generate_token(rng), generate_aes_key(rng.randbytes(32))


def build_tenant(
    org: Any = DEFAULT_ORG,
    *,
    corp_id: str | None = None,
    agent_id: int | None = None,
    secret: str | None = None,
    contact_secret: str | None = None,
    clock: Clock | None = None,
) -> tuple[Tenant, int]:
    """The tenant for ``org`` with the given credentials patched in; returns (tenant, our agentid).

    ``agent_id`` names our app: an app of the org with that id, or else the org's 1000002 (or first)
    app renumbered, with the chats it created.
    """
    spec = org_spec(org)
    if corp_id:
        spec["corp_id"] = corp_id
    apps = spec.get("apps") or []
    if not apps:
        raise click.UsageError("the org has no app")
    ids = [a.get("agentid") for a in apps]
    ours = agent_id if agent_id in ids else (OUR_AGENTID if OUR_AGENTID in ids else ids[0])
    app = apps[ids.index(ours)]
    if agent_id is not None and agent_id != ours:
        for chat in spec.get("appchats") or []:
            if chat.get("creator", ids[0]) == ours:
                chat["creator"] = agent_id
        app["agentid"] = ours = agent_id
    if secret:
        app["secret"] = secret
    if contact_secret:
        spec["contact_sync"] = {
            "trusted_ips": ["127.0.0.1"],
            **(spec.get("contact_sync") or {}),
            "secret": contact_secret,
        }
    data = build_corp(spec)  # validates, with an error naming the bad entry
    return Tenant(data, clock=clock or RealClock(), source=spec), int(ours)


def start_sandbox(
    org_spec: Any = DEFAULT_ORG,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    corp_id: str | None = None,
    agent_id: int | None = None,
    secret: str | None = None,
    contact_secret: str | None = None,
    callback_url: str | None = None,
    callback_token: str | None = None,
    callback_aes_key: str | None = None,
    contact_callback_url: str | None = None,
    contact_callback_token: str | None = None,
    contact_callback_aes_key: str | None = None,
    clock: Clock | None = None,
    flags: dict[str, Any] | None = None,
    verify: bool = True,
) -> tuple[Any, threading.Thread, Credentials]:
    """Serve a sandbox tenant in this process (for the demo); returns ``(server, thread, credentials)``.

    Receivers given by URL are configured (and kept across admin resets). With ``verify`` their URL is
    checked like WeCom's console does; a failure is reported in ``credentials.verification`` but the
    receiver is kept, since the plugin may start after the emulator (re-check with
    ``POST /_emulator/callbacks/receivers/<id>/verify``). Stop with :func:`stop_sandbox`.
    """
    tenant, ours = build_tenant(
        org_spec, corp_id=corp_id, agent_id=agent_id, secret=secret, contact_secret=contact_secret, clock=clock
    )
    if flags:
        tenant.base_flags = dict(flags)
        tenant.set_flags(flags)
    d = tenant.data
    app_token, app_key = _derived(d.corp_id, "app")
    cs_token, cs_key = _derived(d.corp_id, CONTACT_SYNC)
    server, thread = serve(tenant, host, port)
    hub = hub_for(tenant)
    hub.app_agentid = ours
    hub.credentials = {
        f"app:{ours}": (callback_token or app_token, callback_aes_key or app_key),
        CONTACT_SYNC: (contact_callback_token or cs_token, contact_callback_aes_key or cs_key),
    }
    creds = Credentials(
        api_base_url=server.url,
        admin_url=server.base_url + "/_emulator/",
        ui_url=server.base_url + "/_emulator/ui",
        corp_id=d.corp_id,
        agent_id=ours,
        secret=d.apps[ours].secret,
        contact_secret=d.contact_sync.secret if d.contact_sync else None,
        callback_token=callback_token or app_token,
        callback_aes_key=callback_aes_key or app_key,
        contact_callback_token=contact_callback_token or cs_token,
        contact_callback_aes_key=contact_callback_aes_key or cs_key,
        callback_url=callback_url,
        contact_callback_url=contact_callback_url,
    )
    try:
        for name, url, token, key in (
            ("app", callback_url, creds.callback_token, creds.callback_aes_key),
            (CONTACT_SYNC, contact_callback_url, creds.contact_callback_token, creds.contact_callback_aes_key),
        ):
            if not url:
                continue
            receiver, _saved = hub.configure(name, url, token, key, verify=verify, require_verification=False)
            creds.verification[receiver.id] = receiver.verification or {"ok": None, "skipped": True}
    except Exception:
        stop(server, thread)
        raise
    hub.set_defaults()
    return server, thread, creds


def stop_sandbox(server: Any, thread: threading.Thread) -> None:
    """Stop a server started by :func:`start_sandbox` (and its callback senders)."""
    stop(server, thread)


def _describe(creds: Credentials, tenant: Tenant) -> str:
    d = tenant.data
    clock = "manual (moves only via /_emulator/clock/advance)" if getattr(tenant.clock, "manual", False) else "real"
    lines = [
        f"WeCom sandbox tenant: {d.corp_name} ({d.corp_id}), {len(d.users)} members, clock {clock}",
        f"  API:   {creds.api_base_url}",
        f"  Admin: {creds.admin_url}",
        f"  UI:    {creds.ui_url}",
        "",
        "# The plugin's settings for this tenant (an env file; prefix each line with `export ` in a shell):",
        creds.env_block(),
        "",
    ]
    for rid, label, url in (
        (f"app:{creds.agent_id}", "App callbacks (接收消息)", creds.callback_url),
        (CONTACT_SYNC, "Contact-sync callbacks (通讯录同步)", creds.contact_callback_url),
    ):
        if not url:
            lines.append(f"{label}: no URL; configure one with POST {creds.admin_url}callbacks/receivers")
            continue
        outcome = creds.verification.get(rid) or {}
        if outcome.get("ok"):
            state = "URL verification passed"
        elif outcome.get("skipped"):
            state = "URL verification skipped"
        else:
            state = (
                f"URL verification FAILED ({outcome.get('error')}); callbacks are sent anyway. Re-check with "
                f"POST {creds.admin_url}callbacks/receivers/{rid}/verify"
            )
        lines.append(f"{label} -> {url}: {state}")
    lines += ["", "Serving until SIGTERM or Ctrl-C."]
    return "\n".join(lines)


def _parse_flags(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw in values:
        name, sep, value = raw.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {raw!r}", param_hint="--flag")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (keep it loopback).")
@click.option("--port", default=8099, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--org", "org", default=DEFAULT_ORG, show_default=True, help="generated:N[:seed] or a YAML/JSON org file."
)
@click.option("--corp-id", default=None, help="Override the org's corp id.")
@click.option("--agent-id", default=None, type=int, help="Our app's agentid (default 1000002 or the org's first app).")
@click.option("--secret", default=None, help="Override our app's secret.")
@click.option("--contact-secret", default=None, help="Override the contact-sync (通讯录同步) secret.")
@click.option("--callback-url", default=None, help="The plugin's app callback URL (接收消息).")
@click.option("--callback-token", default=None, help="App receiver Token (default: derived from the corp id).")
@click.option("--callback-aes-key", default=None, help="App receiver EncodingAESKey, 43 characters.")
@click.option("--contact-callback-url", default=None, help="The plugin's contact-sync callback URL.")
@click.option("--contact-callback-token", default=None, help="Contact-sync receiver Token.")
@click.option("--contact-callback-aes-key", default=None, help="Contact-sync receiver EncodingAESKey.")
@click.option(
    "--contact-callback-pre-2022",
    is_flag=True,
    help="The contact-sync receiver was configured before 2022-08-15: full change_contact payloads.",
)
@click.option("--no-verify", is_flag=True, help="Skip the URL verification of the receivers at start-up.")
@click.option("--clock", "clock_kind", type=click.Choice(["real", "manual"]), default="real", show_default=True)
@click.option("--flag", "flag_values", multiple=True, metavar="NAME=VALUE", help="Set an emulator flag (repeatable).")
def emulator_command(
    host: str,
    port: int,
    org: str,
    corp_id: str | None,
    agent_id: int | None,
    secret: str | None,
    contact_secret: str | None,
    callback_url: str | None,
    callback_token: str | None,
    callback_aes_key: str | None,
    contact_callback_url: str | None,
    contact_callback_token: str | None,
    contact_callback_aes_key: str | None,
    contact_callback_pre_2022: bool,
    no_verify: bool,
    clock_kind: str,
    flag_values: tuple[str, ...],
) -> None:
    """Run the sandbox tenant: a WeCom API emulator with callbacks, for the demo and local development."""
    flags = _parse_flags(flag_values)
    if contact_callback_pre_2022:
        flags["contact_callback_pre_2022"] = True
    try:
        server, thread, creds = start_sandbox(
            org,
            host=host,
            port=port,
            corp_id=corp_id,
            agent_id=agent_id,
            secret=secret,
            contact_secret=contact_secret,
            callback_url=callback_url,
            callback_token=callback_token,
            callback_aes_key=callback_aes_key,
            contact_callback_url=contact_callback_url,
            contact_callback_token=contact_callback_token,
            contact_callback_aes_key=contact_callback_aes_key,
            clock=ManualClock() if clock_kind == "manual" else RealClock(),
            flags=flags,
            verify=not no_verify,
        )
    except (ValueError, OSError) as exc:  # bad org, bad flag, port in use
        raise click.ClickException(str(exc)) from None
    done = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        done.set()

    if host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"warning: serving on {host}: the admin API has no authentication; keep it on loopback", err=True)
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        click.echo(_describe(creds, server.tenant))
        while not done.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_sandbox(server, thread)
    click.echo("sandbox tenant stopped")


def register(cli_group: click.Group) -> None:
    """Add the ``emulator`` command to ``cli_group`` (e.g. the plugin's ``wecom-plugin`` group)."""
    cli_group.add_command(emulator_command, "emulator")
