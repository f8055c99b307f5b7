"""``wecom-plugin api-clients ...`` and ``wecom-plugin keys ...``: machine API clients and keys.

Every change is audited with actor ``cli``. Bad input ends in one clear line (exit code 1),
never a traceback. ``keys generate`` needs no configuration at all: it runs before a deployment
has its secrets.
"""

from __future__ import annotations

import secrets

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from wecom_plugin.services.api_keys import ApiKeyError


def register(cli: click.Group) -> None:
    """Add the ``api-clients`` and ``keys`` groups to the console script."""
    cli.add_command(api_clients_group)
    cli.add_command(keys_group)


def _fail(exc: ApiKeyError) -> click.ClickException:
    from wecom_plugin.extensions import db

    db.session.rollback()
    return click.ClickException(str(exc))


def _when(value) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"


# --- api-clients ---------------------------------------------------------------------------------
@click.group("api-clients", cls=AppGroup)
def api_clients_group() -> None:
    """Machine API clients (the HR system, scripts): create, list, disable."""


@api_clients_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help="A permission the client gets (repeat for several), e.g. --scope people.read --scope test.",
)
@with_appcontext
def clients_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create an API client called NAME (letters, digits, _ . -) with the given scopes.

    The client has no key yet: create one with `wecom-plugin keys create NAME`.
    """
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys, audit

    try:
        client = api_keys.create_client(db.session, name, scopes)
    except ApiKeyError as exc:
        raise _fail(exc) from None
    audit.record("cli", "api.client.create", target=f"api_client:{name}", detail={"scopes": client.scopes.split()})
    db.session.commit()
    click.echo(f"已创建客户端 / created API client {name} (scopes: {client.scopes or '-'})")
    click.echo(f"下一步 / next: wecom-plugin keys create {name}")


@api_clients_group.command("list")
@with_appcontext
def clients_list() -> None:
    """List API clients with their scopes, state and number of live keys."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys

    rows = api_keys.list_clients(db.session)
    if not rows:
        click.echo("没有 API 客户端 / no API clients")
    for client, live in rows:
        state = f"disabled {_when(client.disabled_at)}" if client.disabled_at else "active"
        click.echo(
            f"{client.name:30} {state:30} live keys {live}/{api_keys.MAX_LIVE_KEYS}  scopes: {client.scopes or '-'}"
        )


@api_clients_group.command("disable")
@click.argument("name")
@with_appcontext
def clients_disable(name: str) -> None:
    """Disable the API client NAME: all its keys stop working at once."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys, audit

    try:
        client = api_keys.get_client(db.session, name)
    except ApiKeyError as exc:
        raise _fail(exc) from None
    changed = api_keys.disable_client(db.session, client)
    audit.record("cli", "api.client.disable", target=f"api_client:{name}", outcome="success" if changed else "noop")
    db.session.commit()
    if changed:
        click.echo(f"已停用客户端 / disabled API client {name}")
    else:
        click.echo(f"客户端已是停用状态 / API client {name} was already disabled")


# --- keys ----------------------------------------------------------------------------------------
@click.group("keys", cls=AppGroup)
def keys_group() -> None:
    """API keys (at most two live per client, for rotation) and fresh deployment secrets."""


@keys_group.command("create")
@click.argument("client_name", metavar="CLIENT")
@with_appcontext
def keys_create(client_name: str) -> None:
    """Create a key for CLIENT and print its id and secret ONCE.

    A client may have two live keys. To rotate: create the second key, switch the caller to it,
    then `wecom-plugin keys revoke OLD_KEY_ID`.
    """
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys, audit

    settings = current_app.extensions["wecom_settings"]
    try:
        client = api_keys.get_client(db.session, client_name)
    except ApiKeyError as exc:
        raise _fail(exc) from None
    try:
        key_id, secret = api_keys.create_key(db.session, client, encryption_key=settings.encryption_key)
    except ApiKeyError as exc:
        db.session.rollback()
        audit.record("cli", "api.key.create", target=f"api_client:{client_name}", reason=str(exc), outcome="denied")
        db.session.commit()
        raise click.ClickException(str(exc)) from None
    audit.record("cli", "api.key.create", target=f"key:{key_id}", detail={"client": client_name})
    db.session.commit()
    click.echo(f"客户端 client:  {client_name}")
    click.echo(f"密钥 ID key id: {key_id}")
    click.echo(f"密钥 secret:    {secret}")
    click.echo(f"Bearer token:   {key_id}.{secret}")
    click.echo(
        "警告:密钥只显示这一次,请立即妥善保存,无法再次查看。\n"
        "WARNING: the secret is shown only this once; store it safely now, it cannot be shown again."
    )


@keys_group.command("revoke")
@click.argument("key_id")
@with_appcontext
def keys_revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (e.g. wpk_0123456789abcdef): it stops working at once."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys, audit

    try:
        changed = api_keys.revoke_key(db.session, key_id)
    except ApiKeyError as exc:
        raise _fail(exc) from None
    audit.record("cli", "api.key.revoke", target=f"key:{key_id}", outcome="success" if changed else "noop")
    db.session.commit()
    if changed:
        click.echo(f"已吊销密钥 / revoked key {key_id}")
    else:
        click.echo(f"密钥已是吊销状态 / key {key_id} was already revoked")


@keys_group.command("list")
@click.argument("client_name", metavar="CLIENT")
@with_appcontext
def keys_list(client_name: str) -> None:
    """List CLIENT's keys (ids, dates, live or revoked); secrets are never shown."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import api_keys

    try:
        client = api_keys.get_client(db.session, client_name)
    except ApiKeyError as exc:
        raise _fail(exc) from None
    keys = api_keys.list_keys(db.session, client)
    if not keys:
        click.echo(f"客户端 {client_name} 没有密钥 / API client {client_name} has no keys")
    for key in keys:
        state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "live"
        click.echo(f"{key.key_id}  created {_when(key.created_at)}  last used {_when(key.last_used_at)}  {state}")


# Deliberately without an app context: it must work before any setting exists.
@keys_group.command("generate", with_appcontext=False)
def keys_generate() -> None:
    """Print fresh random values for SECRET_KEY and WECOM_PLUGIN_ENCRYPTION_KEY.

    Needs no configuration. Put the values in the deployment's environment; keep them secret.
    Changing WECOM_PLUGIN_ENCRYPTION_KEY later makes every stored API key unreadable.
    """
    from cryptography.fernet import Fernet

    click.echo(f"SECRET_KEY={secrets.token_urlsafe(48)}")
    click.echo(f"WECOM_PLUGIN_ENCRYPTION_KEY={Fernet.generate_key().decode()}")
