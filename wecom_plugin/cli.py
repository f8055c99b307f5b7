"""The ``wecom-plugin`` console script: every operational command lives here.

A :class:`flask.cli.FlaskGroup` over :func:`wecom_plugin.create_app`, so every command builds the
app through the factory. A bad setting stops any command with one line naming the variable and
a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from wecom_plugin.errors import ConfigurationError

EXIT_CONFIG = 2
# Row ids as the database stores them (a 64-bit signed integer).
ROW_ID = click.IntRange(1, 2**63 - 1)


def _create_app():
    from wecom_plugin import create_app

    return create_app()


class RedactSecrets(logging.Filter):
    """Masks access tokens, secrets, robot keys and OAuth codes in URLs of any log line.

    Third-party libraries log request URLs (urllib3 at DEBUG), and WeCom puts the access token in
    the query string; this filter sits on the handler, so nothing reaches the log unmasked.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from wecom_plugin.wecom.errors import redact

        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def configure_logging(level: str = "INFO") -> None:
    """Plain, single-line logs to stderr (called by entry points, never at import)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler])
    # urllib3 logs every request URL at DEBUG; keep it quiet even when the plugin debugs.
    for noisy in ("urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class PluginGroup(FlaskGroup):
    """FlaskGroup without Flask's generic options (-A, -e, --debug) and without loading the app
    just to list commands, so ``--help`` works even when the configuration is broken."""

    def __init__(self, **kwargs):
        super().__init__(
            add_version_option=False, add_default_commands=False, load_dotenv=False, set_debug_flag=False, **kwargs
        )
        self.params = [p for p in self.params if p.name not in ("env_file", "app", "debug")]

    def list_commands(self, ctx: click.Context) -> list[str]:
        return click.Group.list_commands(self, ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return click.Group.get_command(self, ctx, name)


@click.group(cls=PluginGroup, create_app=_create_app)
def cli() -> None:
    """wecom-plugin: make a WeCom tenant's group rules (微信群管理办法) hold.

    Every operational command: database migrations, the worker and clock processes, jobs,
    alerts, the audit log and API client keys.
    """


def main() -> None:
    """Console-script entry point: configuration errors become one line and exit code 2."""
    from wecom_plugin.settings import merged_values

    configure_logging(merged_values().get("LOG_LEVEL", "INFO").upper())
    try:
        cli.main(prog_name="wecom-plugin")
    except ConfigurationError as exc:
        click.echo(f"wecom-plugin: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except sa.exc.SQLAlchemyError as exc:
        missing_schema = isinstance(exc, sa.exc.OperationalError | sa.exc.ProgrammingError)
        hint = "; has `wecom-plugin db upgrade` run?" if missing_schema else ""
        first_line = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        click.echo(f"wecom-plugin: database error: {first_line}{hint}", err=True)
        sys.exit(1)


def _settings():
    return current_app.extensions["wecom_settings"]


# --- processes ------------------------------------------------------------------------------------
@cli.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", "worker_threads", default=1, show_default=True, help="Worker threads in this process.")
@with_appcontext
def run_all(host: str, port: int, worker_threads: int) -> None:
    """Run web, worker and clock in one process (the demo and local development only).

    Production runs them as separate processes: see the Procfile.
    """
    from wecom_plugin.jobs.runner import run_all_in_one

    run_all_in_one(current_app._get_current_object(), host=host, port=port, worker_threads=worker_threads)


@cli.command("demo", with_appcontext=False)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int, help="The plugin's port.")
@click.option("--sandbox-port", default=8790, show_default=True, type=int, help="The sandbox tenant's port.")
@click.option("--org", default="generated:200:7", show_default=True, help="generated:N[:seed] or a YAML/JSON file.")
def demo_command(host: str, port: int, sandbox_port: int, org: str) -> None:
    """Run the plugin against a sandbox tenant seeded with a realistic org (the README's run command).

    Starts the sandbox tenant (a WeCom emulator) in this process, then web, worker and clock against it,
    and prints where to look.
    """
    from wecom_plugin import demo

    demo.start(host=host, port=port, sandbox_port=sandbox_port, org=org)


@cli.command("worker")
@click.option("--batch-size", type=int, default=None, help="Jobs claimed per statement (default WORKER_BATCH_SIZE).")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs (tests, benchmarks).")
@click.option("--exit-when-idle", is_flag=True, help="Exit when no job is due (tests, benchmarks).")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="Threads in this process (WORKER_THREADS).")
@with_appcontext
def worker_command(batch_size: int | None, max_jobs: int | None, exit_when_idle: bool, threads: int | None) -> None:
    """Claim and run background jobs until SIGTERM (the running jobs are finished first)."""
    from wecom_plugin.jobs.worker import run_threads

    app = current_app._get_current_object()
    # --max-jobs counts jobs exactly (tests, benchmarks): one thread unless --threads says otherwise.
    count = threads or (1 if max_jobs is not None else app.extensions["wecom_settings"].worker_threads)
    run_threads(app, count, batch_size=batch_size, max_jobs=max_jobs, exit_when_idle=exit_when_idle)


@cli.command("clock")
@click.option("--max-ticks", type=int, default=None, help="Exit after this many ticks (tests).")
@click.option("--tick-seconds", type=float, default=None, help="Seconds between ticks (default CLOCK_TICK_SECONDS).")
@with_appcontext
def clock_command(max_ticks: int | None, tick_seconds: float | None) -> None:
    """Turn due schedules (from code and from data) into jobs, once each, until SIGTERM."""
    from wecom_plugin.jobs.clock import Clock

    clock = Clock(current_app._get_current_object(), tick_seconds=tick_seconds)
    clock.install_signal_handlers()
    clock.run(max_ticks=max_ticks)


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def status_command(as_json: bool) -> None:
    """Show workers, clocks (fresh or stale), queue depth and open alerts; exit 1 if unhealthy."""
    from wecom_plugin.services.status import readiness, runtime_status

    ready, checks = readiness()
    report = {"ready": ready, "checks": checks, **runtime_status(_settings())}
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        click.echo(f"数据库 database: {checks.get('database')}   结构 schema: {checks.get('schema')}")
        for kind in ("workers", "clocks"):
            procs = report[kind]["processes"]
            click.echo(f"{kind}: {report[kind]['fresh']} fresh of {len(procs)} known")
            for p in procs:
                flag = "fresh" if p["fresh"] else "STALE"
                click.echo(f"  {p['id']}  {p['state']}  last seen {p['last_seen_age_seconds']}s ago  {flag}")
        click.echo(f"jobs: {report['jobs']}   open alerts 未处理告警: {report['open_alerts']}")
        directory = report["directory"]
        last = directory["last_sync"]
        last_text = "never" if last is None else f"#{last['id']} {last['state']}"
        braked = "; BRAKED, waiting for `wecom-plugin directory confirm`" if directory["pending_brake"] else ""
        click.echo(f"directory 通讯录: members {directory['members']}; last sync {last_text}{braked}")
    sys.exit(0 if ready and report["healthy"] else 1)


# --- jobs ------------------------------------------------------------------------------------------
@cli.group("jobs")
def jobs_group() -> None:
    """List, enqueue, retry and cancel background jobs."""


@jobs_group.command("list")
@click.option("--state", type=click.Choice(["ready", "running", "done", "dead", "cancelled"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@with_appcontext
def jobs_list(state: str | None, limit: int) -> None:
    """List jobs, newest first (dead ones are the ones that need a person)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.models.jobs import Job

    stmt = sa.select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        stmt = stmt.where(Job.state == state)
    rows = db.session.scalars(stmt).all()
    if not rows:
        click.echo("no jobs")
    for job in rows:
        error = f"  last error: {job.last_error[:120]}" if job.last_error else ""
        due = f"{job.due_at:%Y-%m-%d %H:%M:%S}Z"
        click.echo(f"#{job.id} {job.name} {job.state} attempts {job.attempts}/{job.max_attempts} due {due}{error}")


@jobs_group.command("types")
@with_appcontext
def jobs_types() -> None:
    """List the registered job types and their delivery semantics."""
    from wecom_plugin.runtime import registry

    for name in registry.known_names():
        jt = registry.get(name)
        click.echo(f"{name:28} {jt.delivery:14} {jt.description}")


@jobs_group.command("enqueue")
@click.argument("name")
@click.option("--payload", default="{}", help="JSON object passed to the job.")
@click.option("--dedupe-key", default=None, help="Enqueue at most once per key.")
@click.option(
    "--count", type=click.IntRange(1, 100_000), default=1, show_default=True, help="Enqueue this many copies."
)
@with_appcontext
def jobs_enqueue(name: str, payload: str, dedupe_key: str | None, count: int) -> None:
    """Enqueue a job by type name."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime import registry
    from wecom_plugin.runtime.queue import enqueue
    from wecom_plugin.services import audit

    try:
        data = json.loads(payload)
        registry.get(name)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--payload") from None
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="NAME") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--payload")
    try:
        ids = [enqueue(name, data, dedupe_key=dedupe_key) for _ in range(count)]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--payload") from None
    audit.record("cli", "job.enqueue", target=f"job-type:{name}", detail={"count": count, "first_id": ids[0]})
    db.session.commit()
    click.echo(f"enqueued {len(set(ids))} job(s): #{ids[0]}" + (f"..#{ids[-1]}" if len(ids) > 1 else ""))


@jobs_group.command("retry")
@click.argument("job_id", type=ROW_ID)
@with_appcontext
def jobs_retry(job_id: int) -> None:
    """Put a dead job back in the queue with a fresh attempt budget."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import retry_dead
    from wecom_plugin.services import audit

    if not retry_dead(db.session, job_id):
        raise click.ClickException(f"job #{job_id} is not dead (or does not exist)")
    audit.record("cli", "job.retry", target=f"job:{job_id}")
    db.session.commit()
    click.echo(f"job #{job_id} queued again")


@jobs_group.command("cancel")
@click.argument("job_id", type=ROW_ID)
@with_appcontext
def jobs_cancel(job_id: int) -> None:
    """Cancel a job that is waiting or dead."""
    from wecom_plugin.extensions import db
    from wecom_plugin.runtime.queue import cancel
    from wecom_plugin.services import audit

    if not cancel(db.session, job_id):
        raise click.ClickException(f"job #{job_id} is not waiting or dead (or does not exist)")
    audit.record("cli", "job.cancel", target=f"job:{job_id}")
    db.session.commit()
    click.echo(f"job #{job_id} cancelled")


@jobs_group.command("prune")
@with_appcontext
def jobs_prune() -> None:
    """Apply the retention policy now (RETENTION_DAYS)."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.retention import prune_old_rows

    removed = prune_old_rows(db.session, _settings().retention_days)
    click.echo(", ".join(f"{table}: {count}" for table, count in removed.items()))


# --- alerts ----------------------------------------------------------------------------------------
@cli.group("alerts")
def alerts_group() -> None:
    """List and acknowledge alerts (problems a person must look at)."""


@alerts_group.command("list")
@with_appcontext
def alerts_list() -> None:
    """List open alerts."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.alerts import open_alerts

    alerts = open_alerts(db.session)
    if not alerts:
        click.echo("没有未处理的告警 / no open alerts")
    for alert in alerts:
        click.echo(
            f"#{alert.id} [{alert.severity}] x{alert.count} {alert.title_zh}\n"
            f"     {alert.title_en}  (key {alert.key}, since {alert.first_raised_at:%Y-%m-%d %H:%M}Z)"
        )


@alerts_group.command("ack")
@click.argument("alert_id", type=ROW_ID)
@click.option("--by", "actor", required=True, help="Who acknowledges it (recorded in the audit log).")
@with_appcontext
def alerts_ack(alert_id: int, actor: str) -> None:
    """Acknowledge (close) an open alert."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services.alerts import acknowledge

    if not acknowledge(db.session, alert_id, f"user:{actor}"):
        raise click.ClickException(f"alert #{alert_id} is not open (or does not exist)")
    db.session.commit()
    click.echo(f"alert #{alert_id} acknowledged")


# --- audit -----------------------------------------------------------------------------------------
@cli.group("audit")
def audit_group() -> None:
    """The append-only audit log."""


def _parse_when(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            # A bare date or time is read in the deployment's zone, as people in the org mean it.
            parsed = parsed.replace(tzinfo=_settings().tz)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise click.BadParameter(
            "use an ISO date or time, e.g. 2026-11-01 or 2026-11-01T08:00:00+08:00", param_hint=name
        ) from None


@audit_group.command("export")
@click.option(
    "--from", "start", default=None, help="Start (inclusive), ISO date/time; zone defaults to WECOM_TIMEZONE."
)
@click.option("--to", "end", default=None, help="End (exclusive), ISO date/time.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default="-", help="File, or - for stdout.")
@with_appcontext
def audit_export(start: str | None, end: str | None, fmt: str, output: str) -> None:
    """Export the audit log between two times as CSV or JSON lines."""
    from wecom_plugin.extensions import db
    from wecom_plugin.services import audit

    begin, finish = _parse_when(start, "--from"), _parse_when(end, "--to")
    if begin and finish and begin >= finish:
        raise click.BadParameter("must be later than --from", param_hint="--to")
    with click.open_file(output, "w", encoding="utf-8") as stream:
        for chunk in audit.export(db.session, fmt, begin, finish):
            stream.write(chunk)


def _register_emulator_command() -> None:
    from wecom_plugin.emulator.cli import register

    register(cli)


def _register_db_commands() -> None:
    # Flask-Migrate's `db` group (upgrade, downgrade, current, history, ...), under our script.
    from flask_migrate.cli import db as db_group

    db_group.help = "Database schema migrations (Alembic): `db upgrade` brings the schema to head."
    cli.add_command(db_group, "db")


_register_db_commands()
_register_emulator_command()

from wecom_plugin.cli_api import register as _register_api_commands  # noqa: E402

_register_api_commands(cli)

from wecom_plugin.cli_directory import register as _register_directory_commands  # noqa: E402

_register_directory_commands(cli)

from wecom_plugin.cli_groups import register as _register_groups_commands  # noqa: E402

_register_groups_commands(cli)

from wecom_plugin.cli_offboard import register as _register_offboard_commands  # noqa: E402

_register_offboard_commands(cli)

from wecom_plugin.cli_calendar import register as _register_calendar_commands  # noqa: E402

_register_calendar_commands(cli)

from wecom_plugin.cli_bulletins import register as _register_bulletin_commands  # noqa: E402

_register_bulletin_commands(cli)
