"""Commands that follow an execution again: retry (a new run that keeps what succeeded)
and watch (attach to one running elsewhere)."""

from __future__ import annotations

import click
from rich.console import Console

from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.cli.live import follow
from orchestration.cli.runs import (
    budget_of,
    budget_options,
    print_enqueued,
    refuse_no_wait_embedded,
    show_report,
    wait_and_report,
)
from orchestration.client.history import step_starts
from orchestration.client.retry import RetryRefused, retry_execution
from orchestration.client.team import execution


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
@budget_options("the one recorded")
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
    refuse_no_wait_embedded(settings, no_wait)
    try:
        handle = retry_execution(
            execution_id,
            from_step=from_step,
            budget=budget_of(max_cost_usd, max_tokens),
            check_worker=not no_wait,
            runtime=invocation.runtime,
        )
    except RetryRefused as exc:
        raise click.UsageError(str(exc)) from None
    if no_wait:
        return print_enqueued(handle, as_json)
    console = Console(stderr=as_json, highlight=False)
    if not as_json:
        console.print(f"execution {handle.execution_id}: a retry of {execution_id}")
    return wait_and_report(
        handle, console, settings, timeout=timeout, as_json=as_json, command="retry"
    )


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
    return show_report(console, report, as_json)
