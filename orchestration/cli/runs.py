"""What the commands that start a run have in common (run-team, retry): the budget
options, refusing --no-wait without a broker, printing an enqueued id, and waiting for the
result, stopping an embedded run for good when the wait ends early."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from orchestration.cli import exit_codes
from orchestration.cli.live import follow
from orchestration.cli.render import print_result
from orchestration.client.handle import ExecutionHandle
from orchestration.client.report import ExecutionReport
from orchestration.errors import WaitTimeout
from orchestration.settings import Settings
from orchestration.spec import Budget

F = Callable[..., Any]


def budget_options(replaces: str) -> Callable[[F], F]:
    """--max-cost-usd and --max-tokens; ``replaces`` names what they replace."""

    def decorate(command: F) -> F:
        command = click.option(
            "--max-tokens",
            type=click.IntRange(min=1, max=10**15),
            help=f"Budget of this run in tokens, in + out (replaces {replaces}).",
        )(command)
        return click.option(
            "--max-cost-usd",
            type=click.FloatRange(min=0, min_open=True, max=1e9),
            help=f"Budget of this run in USD (replaces {replaces}).",
        )(command)

    return decorate


def budget_of(max_cost_usd: float | None, max_tokens: int | None) -> Budget | None:
    if max_cost_usd is None and max_tokens is None:
        return None
    return Budget(max_cost_usd=max_cost_usd, max_tokens=max_tokens)


def refuse_no_wait_embedded(settings: Settings, no_wait: bool) -> None:
    if no_wait and settings.embedded:
        raise click.UsageError(
            "--no-wait needs a broker (set TROUPE_BROKER_URL); the embedded worker lives "
            "only as long as this command"
        )


def print_enqueued(handle: ExecutionHandle, as_json: bool) -> int:
    click.echo(
        json.dumps({"execution_id": handle.execution_id}) if as_json else handle.execution_id
    )
    return exit_codes.COMPLETED


def wait_and_report(
    handle: ExecutionHandle,
    console: Console,
    settings: Settings,
    *,
    timeout: float | None,
    as_json: bool,
    command: str,
) -> int:
    """Follow the run to its end and print its report (exit 0 completed, 1 otherwise).

    Embedded, the worker dies with this process: a wait that ends early (--timeout,
    Ctrl-C) records that the run stops here, its running steps included (nothing would
    ever end them)."""
    try:
        # On a terminal a live table of the steps, else a line per change.
        report = follow(handle, console, timeout=timeout, quiet=as_json, embedded=settings.embedded)
    except (WaitTimeout, KeyboardInterrupt) as exc:
        if settings.embedded:
            handle.cancel(
                f"{command} stopped waiting and its embedded worker stopped",
                abandon_running=True,
            )
        if isinstance(exc, KeyboardInterrupt):
            raise click.Abort() from None
        raise WaitTimeout(handle.execution_id, exc.seconds) from None
    return show_report(console, report, as_json)


def show_report(console: Console, report: ExecutionReport, as_json: bool) -> int:
    if as_json:
        click.echo(report.to_json())
    else:
        print_result(console, report)
    return exit_codes.COMPLETED if report.status == "completed" else exit_codes.FAILED
