"""Commands that run the long-lived processes: worker, beat, flower; and db migrations."""

from __future__ import annotations

import click

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.settings import Settings
from orchestration.store.database import ensure_schema, schema_is_current, upgrade_schema


def _require_broker(settings: Settings, command: str) -> None:
    if settings.embedded:
        raise click.UsageError(
            f"`{command}` needs TROUPE_BROKER_URL (e.g. redis://127.0.0.1:6379/0); "
            "in embedded mode run-team starts its own worker"
        )


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=int, help="Worker processes (default: settings).")
@click.option("--pool", default="prefork", show_default=True)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("-n", "--hostname", help="Worker node name.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_invocation
def worker(
    invocation: Invocation,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    celery_args: tuple[str, ...],
) -> int:
    """Start a Celery worker that runs delegations."""
    settings = invocation.settings
    _require_broker(settings, "worker")
    ensure_schema(settings.effective_database_url, auto_upgrade=False)
    from workers.app import app, configure_app

    # The tasks read these settings from the app; forked pool processes inherit them.
    configure_app(settings)

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={settings.queue}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool}",
    ]
    if settings.task_events:
        argv.append("--events")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main([*argv, *celery_args])
    return exit_codes.COMPLETED


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option(
    "--check",
    is_flag=True,
    help="Start nothing: exit 0 if a beat of this host holds the lock, else 1 (health check).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_invocation
def beat(invocation: Invocation, loglevel: str, check: bool, celery_args: tuple[str, ...]) -> int:
    """Start Celery beat, which schedules heartbeats and the reaper (one per broker and
    queue: a second one exits 1)."""
    settings = invocation.settings
    _require_broker(settings, "beat")
    from workers.app import configure_app
    from workers.beat_lock import has_lock, holder_here, run_beat

    if check:
        if not has_lock(settings):
            raise click.UsageError("`beat --check` needs a Redis broker, where the lock lives")
        holder = holder_here(settings)
        if holder is None:
            click.echo("no beat of this host holds the lock", err=True)
            return exit_codes.FAILED
        click.echo(f"beat lock held: {holder}")
        return exit_codes.COMPLETED

    configure_app(settings)

    schedule = settings.state_dir / "celerybeat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    run_beat(settings, ["beat", f"--loglevel={loglevel}", f"--schedule={schedule}", *celery_args])
    return exit_codes.COMPLETED


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True, type=int)
@click.option("--address", help="Interface to listen on (Flower's default: all).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_invocation
def flower(
    invocation: Invocation, port: int, address: str | None, flower_args: tuple[str, ...]
) -> int:
    """Start the Flower dashboard; delegations appear under their agents' names."""
    _require_broker(invocation.settings, "flower")
    from workers.app import app, configure_app

    configure_app(invocation.settings)

    argv = ["flower", f"--port={port}"]
    if address:
        argv.append(f"--address={address}")
    app.start([*argv, *flower_args])
    return exit_codes.COMPLETED


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@pass_invocation
def upgrade(invocation: Invocation) -> int:
    """Create or migrate the schema to the current revision."""
    url = invocation.settings.effective_database_url
    upgrade_schema(url)
    click.echo("database schema is current")
    return exit_codes.COMPLETED


@db.command()
@pass_invocation
def check(invocation: Invocation) -> int:
    """Exit 0 if the schema is current, 4 if it needs `db upgrade`."""
    url = invocation.settings.effective_database_url
    if schema_is_current(url):
        click.echo("database schema is current")
        return exit_codes.COMPLETED
    click.echo("database schema needs `python manage.py db upgrade`", err=True)
    return exit_codes.UNAVAILABLE
