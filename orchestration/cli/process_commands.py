"""Commands that run the long-lived processes: worker, beat, flower; and db migrations."""

from __future__ import annotations

import ipaddress
import os
import re

import click

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.settings import Settings
from orchestration.spec import MAX_QUEUE_NAME, QUEUE_PATTERN
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
@click.option(
    "-Q",
    "--queues",
    help="Queues to serve, comma-separated: those agents name in `queue:` "
    "(default: Troupe's queue, TROUPE_QUEUE).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (path /metrics).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Interface the metrics are served on (0.0.0.0: all).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_invocation
def worker(
    invocation: Invocation,
    concurrency: int | None,
    pool: str,
    loglevel: str,
    hostname: str | None,
    queues: str | None,
    metrics_port: int | None,
    metrics_address: str,
    celery_args: tuple[str, ...],
) -> int:
    """Start a Celery worker that runs delegations."""
    settings = invocation.settings
    _require_broker(settings, "worker")
    served = _queues(queues, settings)
    ensure_schema(settings.effective_database_url, auto_upgrade=False)
    if metrics_port is not None:
        # Before the app and its tasks are used and before the pool forks: every pool
        # process then writes its values where this process's server reads them.
        from workers import metrics

        try:
            metrics.serve(metrics_port, metrics_address)
        except OSError as exc:
            raise click.UsageError(
                f"cannot serve metrics on {metrics_address}:{metrics_port}: {exc.strerror or exc}"
            ) from None
    from workers.app import app, configure_app

    # The tasks read these settings from the app; forked pool processes inherit them.
    configure_app(settings)

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--queues={','.join(served)}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        f"--pool={pool}",
    ]
    if settings.task_events:
        argv.append("--events")
    if hostname:
        argv.append(f"--hostname={hostname}")
    try:
        app.worker_main([*argv, *celery_args])
    finally:
        if metrics_port is not None:
            from workers import metrics

            metrics.disable()
    return exit_codes.COMPLETED


def _queues(option: str | None, settings: Settings) -> list[str]:
    """The queues named by ``--queues``, checked as team files check an agent's."""
    if option is None:
        return [settings.queue]
    names = [name.strip() for name in option.split(",") if name.strip()]
    if not names:
        raise click.UsageError("--queues names no queue")
    for name in names:
        valid = len(name) <= MAX_QUEUE_NAME and re.fullmatch(QUEUE_PATTERN, name)
        # Troupe's own queue is served under whatever name it was given.
        if not valid and name != settings.queue:
            raise click.UsageError(
                f"--queues: {name!r} is not a queue name (letters, digits, '_', '.', '-'; "
                f"at most {MAX_QUEUE_NAME} characters)"
            )
    return list(dict.fromkeys(names))


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


# Basic-auth credentials for Flower ("user:password", several comma-separated): read
# from the environment and handed to Flower in its own variable, so that they never
# appear in the process's argv (ps shows it to every user of the host).
FLOWER_AUTH_ENV = "TROUPE_FLOWER_BASIC_AUTH"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Interface to listen on. Any other than loopback needs authentication "
    f"({FLOWER_AUTH_ENV}=user:password, or Flower's --auth).",
)
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@pass_invocation
def flower(invocation: Invocation, port: int, address: str, flower_args: tuple[str, ...]) -> int:
    """Start the Flower dashboard; delegations appear under their agents' names."""
    _require_broker(invocation.settings, "flower")
    credentials = os.environ.get(FLOWER_AUTH_ENV, "").strip()
    if credentials:
        if not all(_credential(pair) for pair in credentials.split(",")):
            # Never echo the value: it holds passwords.
            raise click.UsageError(
                f"{FLOWER_AUTH_ENV} must be user:password pairs separated by commas"
            )
        os.environ["FLOWER_BASIC_AUTH"] = credentials
    if not _loopback(address) and not _authenticated(flower_args):
        raise click.UsageError(
            f"flower would listen on {address or 'every interface'} without authentication: "
            f"set {FLOWER_AUTH_ENV}=user:password, or listen on --address 127.0.0.1"
        )
    from workers.app import app, configure_app

    configure_app(invocation.settings)

    app.start(["flower", f"--port={port}", f"--address={address}", *flower_args])
    return exit_codes.COMPLETED


def _credential(pair: str) -> bool:
    user, colon, password = pair.partition(":")
    return bool(user.strip() and colon and password)


def _loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # "" (every interface) or a host name: not known to be local


def _authenticated(flower_args: tuple[str, ...]) -> bool:
    """Flower will ask for credentials: basic auth or OAuth, from the environment
    (FLOWER_*, as Flower reads it) or from its own options."""
    if os.environ.get("FLOWER_BASIC_AUTH") or os.environ.get("FLOWER_AUTH"):
        return True
    options = ("--basic-auth", "--basic_auth", "--auth")
    return any(arg.split("=", 1)[0] in options for arg in flower_args)


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
