"""Commands about executions: run-team, status, validate, stop, approve."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console

import examples
from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.cli.render import print_attempts, print_plan, print_result
from orchestration.cli.runs import (
    budget_of,
    budget_options,
    print_enqueued,
    refuse_no_wait_embedded,
    wait_and_report,
)
from orchestration.client.report import ExecutionReport
from orchestration.client.team import Team, execution
from orchestration.errors import ApprovalRefused
from orchestration.priorities import Priority


def _parse_input(text: str | None, json_text: str | None) -> Any:
    if text is not None and json_text is not None:
        raise click.UsageError("give --input or --input-json, not both")
    if json_text is None:
        return text
    try:
        return json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--input-json is not valid JSON: {exc}") from None


def _exit_code(report: ExecutionReport) -> int:
    return exit_codes.COMPLETED if report.status == "completed" else exit_codes.FAILED


@click.command("run-team")
@click.argument("team_file", type=click.Path(dir_okay=False), required=False)
@click.option(
    "--example",
    type=click.Choice(sorted(examples.SAMPLE_INPUTS)),
    help="Run a shipped example team instead of TEAM_FILE (input: its sample, unless given).",
)
@click.option("--input", "input_text", help="The execution input, as text.")
@click.option("--input-json", help="The execution input, as a JSON value.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
@click.option("--no-wait", is_flag=True, help="Enqueue, print the execution id, return.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds (exit 3).",
)
@budget_options("the team file's")
@click.option(
    "--priority",
    type=click.Choice([p.value for p in Priority]),
    help="This run's priority (replaces the team file's; default normal).",
)
@pass_invocation
def run_team(
    invocation: Invocation,
    team_file: str | None,
    example: str | None,
    input_text: str | None,
    input_json: str | None,
    as_json: bool,
    no_wait: bool,
    timeout: float | None,
    max_cost_usd: float | None,
    max_tokens: int | None,
    priority: str | None,
) -> int:
    """Run TEAM_FILE and wait for its result."""
    if (team_file is None) == (example is None):
        raise click.UsageError("give TEAM_FILE or --example NAME (one of them)")
    if example is not None:
        team_file = str(examples.team_file(example))
        if input_text is None and input_json is None:
            input_text = examples.sample_input(example)
    assert team_file is not None
    input_value = _parse_input(input_text, input_json)
    budget = budget_of(max_cost_usd, max_tokens)
    settings = invocation.settings
    refuse_no_wait_embedded(settings, no_wait)
    team = Team.load(team_file, settings=settings)
    runtime = invocation.runtime
    console = Console(stderr=as_json, highlight=False)
    for agent, state in team.open_breakers(runtime).items():
        click.echo(f"warning: agent {agent!r} circuit breaker is {state}", err=True)
    if no_wait:
        # Nothing waits for a worker, but the steps must reach the broker.
        runtime.ensure_broker()
    handle = team.enqueue(
        input_value, check_worker=not no_wait, budget=budget, priority=priority, runtime=runtime
    )
    if no_wait:
        return print_enqueued(handle, as_json)
    if not as_json:
        console.print(
            f"execution {handle.execution_id} of team {team.name!r} "
            f"({'embedded' if settings.embedded else 'distributed'})"
        )
    return wait_and_report(
        handle, console, settings, timeout=timeout, as_json=as_json, command="run-team"
    )


@click.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option(
    "--attempts",
    "with_attempts",
    is_flag=True,
    help="Add the audit trail: every attempt with its outcome, usage and tool calls.",
)
@pass_invocation
def status(invocation: Invocation, execution_id: str, as_json: bool, with_attempts: bool) -> int:
    """Show an execution's status, steps and output."""
    handle = execution(execution_id, runtime=invocation.runtime)
    report = handle.report()
    attempts = handle.attempts() if with_attempts else None
    if as_json:
        data = report.to_json_dict()
        if attempts is not None:
            data["attempts"] = [attempt.model_dump() for attempt in attempts]
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        console = Console(highlight=False)
        print_result(console, report)
        if attempts is not None:
            print_attempts(console, attempts)
    if not report.finished:
        return exit_codes.COMPLETED
    return _exit_code(report)


@click.command()
@click.argument("team_file", type=click.Path(dir_okay=False))
@pass_invocation
def validate(invocation: Invocation, team_file: str) -> int:
    """Check TEAM_FILE and print its plan: levels, steps, agents, policies."""
    team = Team.load(team_file, settings=invocation.settings)
    print_plan(Console(highlight=False), team.spec, team.plan, team_file)
    return exit_codes.COMPLETED


@click.command()
@click.argument("execution_id")
@pass_invocation
def stop(invocation: Invocation, execution_id: str) -> int:
    """Cancel an execution: recorded first, so no later step calls its agent."""
    handle = execution(execution_id, runtime=invocation.runtime)
    if handle.cancel("stopped by `manage.py stop`"):
        click.echo(f"execution {execution_id} cancelled")
        return exit_codes.COMPLETED
    click.echo(f"execution {execution_id} had already finished ({handle.status()})", err=True)
    return exit_codes.COMPLETED


@click.command()
@click.argument("execution_id")
@click.argument("step")
@click.option(
    "--reject", is_flag=True, help="Reject: the step fails, what depends on it is skipped."
)
@click.option("--comment", help="Recorded with the decision.")
@click.option(
    "--as",
    "by",
    help="Who decides (default: your user name); one of the step's approvers, if it lists any.",
)
@pass_invocation
def approve(
    invocation: Invocation,
    execution_id: str,
    step: str,
    reject: bool,
    comment: str | None,
    by: str | None,
) -> int:
    """Approve (or reject) the step STEP of EXECUTION_ID, which waits for approval."""
    if invocation.settings.embedded:
        raise click.UsageError(
            "approve needs a broker (set TROUPE_BROKER_URL): an embedded run's worker lives "
            "in its own process, which alone can decide (ExecutionHandle.approve)"
        )
    handle = execution(execution_id, runtime=invocation.runtime)
    try:
        decided = handle.approve(step, reject=reject, comment=comment, by=by)
    except ApprovalRefused as exc:
        # Nothing was recorded: one line, exit 2.
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"step {step} of execution {execution_id} {decided.decision} by {decided.decided_by}"
    )
    return exit_codes.COMPLETED
