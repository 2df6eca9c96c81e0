"""Entry point: the click group, and the one place errors become one line and an exit code."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from orchestration.cli import exit_codes
from orchestration.errors import (
    ExecutionNotFound,
    NoWorkerError,
    StepNotFound,
    TeamFileError,
    TroupeError,
    WaitTimeout,
)
from orchestration.store.database import SchemaError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Troupe: run teams of AI agents reliably on Celery."""


def _register() -> None:
    from orchestration.cli import (
        agent_commands,
        context_commands,
        execution_commands,
        process_commands,
    )

    for command in (
        execution_commands.run_team,
        execution_commands.status,
        execution_commands.validate,
        execution_commands.stop,
        context_commands.context,
        context_commands.messages,
        agent_commands.breakers,
        agent_commands.agents,
        process_commands.worker,
        process_commands.beat,
        process_commands.flower,
        process_commands.db,
    ):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> NoReturn:
    # The project root must be importable so team files can name agents in it.
    sys.path.insert(0, os.getcwd())
    try:
        code = cli.main(args=argv, prog_name="manage.py", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        fail("aborted", exit_codes.FAILED)
    except click.ClickException as exc:
        fail(exc.format_message(), exit_codes.USAGE)
    except TeamFileError as exc:
        fail(f"invalid team file: {exc}", exit_codes.USAGE)
    except (ExecutionNotFound, StepNotFound) as exc:
        fail(str(exc), exit_codes.USAGE)
    except WaitTimeout as exc:
        fail(str(exc), exit_codes.TIMEOUT)
    except (NoWorkerError, SchemaError) as exc:
        fail(str(exc), exit_codes.UNAVAILABLE)
    except TroupeError as exc:
        fail(str(exc), exit_codes.FAILED)
    except Exception as exc:
        if os.environ.get("TROUPE_DEBUG"):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(
            f"internal error: {type(exc).__name__}: {detail} (set TROUPE_DEBUG=1 for a traceback)",
            exit_codes.FAILED,
        )
    leave(code if isinstance(code, int) else 0)


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    leave(code)


def leave(code: int) -> NoReturn:
    from orchestration.client.runtime import embedded_worker_running

    if embedded_worker_running():
        # Everything is recorded. Exiting normally would wait for the embedded pool's
        # threads, one of which may be inside an agent that runs until its time limit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
