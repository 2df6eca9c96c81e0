"""Entry point: the click group, and the one place errors become one line and an exit code."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click
from pydantic import ValidationError

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation
from orchestration.errors import (
    ExecutionNotFound,
    NoWorkerError,
    StepNotFound,
    TeamFileError,
    TroupeError,
    WaitTimeout,
)
from orchestration.settings import Settings
from orchestration.store.database import SchemaError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(context: click.Context) -> None:
    """Troupe: run teams of AI agents reliably on Celery."""
    # `main` gives the invocation; invoked another way (click's test runner, another
    # entry point), the group reads the settings itself, here at its entry.
    if context.obj is None:
        context.obj = Invocation(Settings())


def _register() -> None:
    from orchestration.cli import (
        agent_commands,
        context_commands,
        execution_commands,
        history_commands,
        process_commands,
        retry_commands,
    )

    for command in (
        execution_commands.run_team,
        execution_commands.status,
        execution_commands.validate,
        execution_commands.stop,
        execution_commands.approve,
        context_commands.context,
        context_commands.messages,
        retry_commands.retry,
        retry_commands.watch,
        history_commands.executions,
        history_commands.logs,
        history_commands.audit,
        history_commands.metrics,
        history_commands.report,
        history_commands.purge,
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
    # The one settings object of this command: read from TROUPE_* here, at the entry, and
    # handed to every command through click's context.
    try:
        invocation = Invocation(Settings())
    except ValidationError as exc:
        fail(_invalid_settings(exc), exit_codes.USAGE)
    try:
        code = cli.main(args=argv, prog_name=_prog_name(), standalone_mode=False, obj=invocation)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        fail("aborted", exit_codes.FAILED, invocation)
    except click.ClickException as exc:
        fail(exc.format_message(), exit_codes.USAGE, invocation)
    except TeamFileError as exc:
        fail(f"invalid team file: {exc}", exit_codes.USAGE, invocation)
    except (ExecutionNotFound, StepNotFound) as exc:
        fail(str(exc), exit_codes.USAGE, invocation)
    except WaitTimeout as exc:
        fail(str(exc), exit_codes.TIMEOUT, invocation)
    except (NoWorkerError, SchemaError) as exc:
        fail(str(exc), exit_codes.UNAVAILABLE, invocation)
    except TroupeError as exc:
        fail(str(exc), exit_codes.FAILED, invocation)
    except Exception as exc:
        if os.environ.get("TROUPE_DEBUG"):
            raise
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        fail(
            f"internal error: {type(exc).__name__}: {detail} (set TROUPE_DEBUG=1 for a traceback)",
            exit_codes.FAILED,
            invocation,
        )
    leave(code if isinstance(code, int) else 0, invocation)


def _prog_name() -> str:
    # The same command line runs as `python manage.py` in a checkout and as the `troupe`
    # console script of an installed wheel: usage lines name the one that was typed.
    return "troupe" if os.path.basename(sys.argv[0]) == "troupe" else "manage.py"


def _invalid_settings(exc: ValidationError) -> str:
    """One line naming each TROUPE_* variable that is wrong, and why."""
    problems = [
        f"TROUPE_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    ]
    return "invalid settings: " + "; ".join(problems)


def fail(message: str, code: int, invocation: Invocation | None = None) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    leave(code, invocation)


def leave(code: int, invocation: Invocation | None = None) -> NoReturn:
    if invocation is not None and invocation.embedded_worker_running:
        # Everything is recorded. Exiting normally would wait for the embedded pool's
        # threads, one of which may be inside an agent that runs until its time limit.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
