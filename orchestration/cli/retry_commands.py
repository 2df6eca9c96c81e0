"""Commands that follow an execution again: retry (a new run that keeps what succeeded)
and watch (attach to one running elsewhere)."""

from __future__ import annotations

import json

import click
from rich.console import Console

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.cli.live import follow
from orchestration.cli.render import print_result
from orchestration.client.handle import ExecutionHandle
from orchestration.client.history import step_starts
from orchestration.client.report import ExecutionReport
from orchestration.client.retry import RetryRefused, retry_execution
from orchestration.client.team import execution
from orchestration.errors import WaitTimeout
from orchestration.spec import Budget


def _exit_code(report: ExecutionReport) -> int:
    return exit_codes.COMPLETED if report.status == "completed" else exit_codes.FAILED


def _show(console: Console, report: ExecutionReport, as_json: bool) -> int:
    if as_json:
        click.echo(report.to_json())
    else:
        print_result(console, report)
    return _exit_code(report)


@click.command()
@click.argument("execution_id")
@click.option(
    "--from-step",
    "from_step",
    metavar="STEP",
    help="Run STEP and what depends on it again (default: the steps that did not complete).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
@click.option("--no-wait", is_flag=True, help="Enqueue, print the new execution id, return.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds (exit 3).",
)
@click.option(
    "--max-cost-usd",
    type=click.FloatRange(min=0, min_open=True, max=1e9),
    help="Budget of this run in USD (replaces the one recorded).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1, max=10**15),
    help="Budget of this run in tokens, in + out (replaces the one recorded).",
)
@pass_invocation
def retry(
    invocation: Invocation,
    execution_id: str,
    from_step: str | None,
    as_json: bool,
    no_wait: bool,
    timeout: float | None,
    max_cost_usd: float | None,
    max_tokens: int | None,
) -> int:
    """Run EXECUTION_ID again as a new execution linked to it, with the same input and
    team: the steps that did not complete (or --from-step STEP) and everything that
    depends on them run again; every other step keeps its recorded output, and its agent
    is not called. Waits and reports like run-team."""
    settings = invocation.settings
    if no_wait and settings.embedded:
        raise click.UsageError(
            "--no-wait needs a broker (set TROUPE_BROKER_URL); the embedded worker lives "
            "only as long as this command"
        )
    budget = None
    if max_cost_usd is not None or max_tokens is not None:
        budget = Budget(max_cost_usd=max_cost_usd, max_tokens=max_tokens)
    try:
        handle = retry_execution(
            execution_id,
            from_step=from_step,
            budget=budget,
            check_worker=not no_wait,
            runtime=invocation.runtime,
        )
    except RetryRefused as exc:
        raise click.UsageError(str(exc)) from None
    if no_wait:
        click.echo(
            json.dumps({"execution_id": handle.execution_id}) if as_json else handle.execution_id
        )
        return exit_codes.COMPLETED
    console = Console(stderr=as_json, highlight=False)
    if not as_json:
        console.print(f"execution {handle.execution_id}: a retry of {execution_id}")
    try:
        report = follow(handle, console, timeout=timeout, quiet=as_json)
    except (WaitTimeout, KeyboardInterrupt) as exc:
        _stop_embedded(invocation, handle)
        if isinstance(exc, KeyboardInterrupt):
            raise click.Abort() from None
        raise WaitTimeout(handle.execution_id, exc.seconds) from None
    return _show(console, report, as_json)


def _stop_embedded(invocation: Invocation, handle: ExecutionHandle) -> None:
    # Embedded, the worker dies with this process: record that the run stops here.
    if invocation.settings.embedded:
        handle.cancel("retry stopped waiting and its embedded worker stopped")


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print only the final JSON object.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop watching after this many seconds (exit 3); the execution goes on.",
)
@pass_invocation
def watch(invocation: Invocation, execution_id: str, as_json: bool, timeout: float | None) -> int:
    """Follow EXECUTION_ID, started anywhere, until it ends: the same view as run-team,
    then its result. Exit 0 if it completed, 1 if it failed or was cancelled; leaving
    (Ctrl-C, --timeout) leaves the execution running."""
    handle = execution(execution_id, runtime=invocation.runtime)
    console = Console(stderr=as_json, highlight=False)
    report = follow(
        handle,
        console,
        timeout=timeout,
        quiet=as_json,
        started=step_starts(execution_id, runtime=invocation.runtime),
    )
    return _show(console, report, as_json)
