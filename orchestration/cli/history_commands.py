"""Commands about the past: executions, logs, audit export, metrics, report, purge."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.cli.moments import AGE, MOMENT
from orchestration.cli.render import _STYLE
from orchestration.client import history
from orchestration.constants import ExecutionStatus

# Without --full, `logs` shows this much of an output, an error or a tool's arguments.
_SHORT = 200
_SHORT_ARGUMENTS = 80


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _json_option() -> _Decorator:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON and nothing else.")


def _since_option(default: str | None, what: str) -> _Decorator:
    shown = f" [default: {default}]" if default else ""
    return click.option(
        "--since",
        type=MOMENT,
        default=default,
        help=f"Only {what} since then: a duration ago (24h, 7d) or an ISO date or time.{shown}",
    )


def _clip(text: str, full: bool, width: int = _SHORT) -> str:
    line = " ".join(text.splitlines())
    if full or len(line) <= width:
        return text if full else line
    return line[: width - 1] + "…"


def _stamp(value: str | None) -> str:
    return value[:23].replace("T", " ") if value else ""


def _seconds(ms: int | float | None) -> str:
    return "" if ms is None else f"{ms / 1000:.2f}s"


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.6f}"


# --- executions ---------------------------------------------------------------------------


@click.command()
@click.option(
    "--status",
    type=click.Choice([status.value for status in ExecutionStatus]),
    help="Only executions in this status.",
)
@click.option("--team", help="Only executions of this team (its name in the team file).")
@_since_option(None, "executions created")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="At most this many, the latest first.",
)
@_json_option()
@pass_invocation
def executions(
    invocation: Invocation,
    status: str | None,
    team: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> int:
    """Recent executions, the latest first: status, duration, steps and cost."""
    found = history.recent_executions(
        status=status, team=team, since=since, limit=limit, runtime=invocation.runtime
    )
    if as_json:
        click.echo(json.dumps([line.model_dump() for line in found], ensure_ascii=False))
        return exit_codes.COMPLETED
    if not found:
        click.echo("no executions match")
        return exit_codes.COMPLETED
    table = Table()
    for column in ("execution", "team", "status", "created", "duration", "steps", "tokens"):
        table.add_column(column)
    table.add_column("cost (USD)", justify="right")
    table.add_column("retry of")
    for line in found:
        table.add_row(
            line.execution_id,
            line.team,
            Text(line.status, style=_STYLE.get(line.status, "")),
            _stamp(line.created_at)[:19],
            _seconds(line.duration_ms),
            f"{line.steps_completed}/{line.steps}",
            f"{line.tokens_in + line.tokens_out:,}" if line.tokens_in or line.tokens_out else "",
            _cost(line.cost_usd),
            line.retry_of or "",
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED


# --- logs -----------------------------------------------------------------------------------


@click.command()
@click.argument("execution_id")
@click.option("--full", is_flag=True, help="Print outputs, errors and tool arguments whole.")
@_json_option()
@pass_invocation
def logs(invocation: Invocation, execution_id: str, full: bool, as_json: bool) -> int:
    """Every attempt of EXECUTION_ID in the order they began: its step, agent, endpoint,
    outcome, error, duration, wait, worker, usage, tool calls, and the step's output
    (shortened unless --full; --json carries everything whole)."""
    log = history.execution_log(execution_id, runtime=invocation.runtime)
    if as_json:
        click.echo(json.dumps(log.model_dump(), ensure_ascii=False, default=str))
        return exit_codes.COMPLETED
    header = f"execution {log.execution_id} of team {log.team!r}: {log.status}"
    if log.retry_of:
        header += f" (a retry of {log.retry_of})"
    click.echo(header)
    if log.error:
        click.echo(f"  {_clip(log.error, full)}")
    if not log.attempts:
        click.echo("no attempts")
    for attempt in log.attempts:
        for line in _attempt_lines(attempt, full):
            click.echo(line)
    for note in log.without_attempts:
        line = f"{'':23}  {note.step}  {note.status} without a call"
        if note.reason:
            line += f": {_clip(note.reason, full)}"
        click.echo(line)
        if note.output is not None:
            click.echo(f"    → output: {_output(note.output, full)}")
    return exit_codes.COMPLETED


def _attempt_lines(attempt: history.AttemptLog, full: bool) -> list[str]:
    head = (
        f"{_stamp(attempt.started_at):23}  {attempt.step} #{attempt.attempt}  "
        f"agent {attempt.agent}  {attempt.outcome or 'running'}"
    )
    if attempt.duration_ms is not None:
        head += f" in {attempt.duration_ms} ms"
    if attempt.waited_ms is not None:
        head += f", waited {attempt.waited_ms} ms"
    if attempt.worker:
        head += f"  on {attempt.worker}"
    lines = [head]
    usage = attempt.usage or {}
    if usage or attempt.endpoint:
        parts = []
        if attempt.endpoint:
            parts.append(f"endpoint {attempt.endpoint}")
        if attempt.model:
            parts.append(f"model {attempt.model}")
        if usage:
            tokens_in, tokens_out = usage.get("tokens_in", 0), usage.get("tokens_out", 0)
            parts.append(f"tokens {tokens_in:,} in / {tokens_out:,} out")
            parts.append(f"cost {_cost(usage.get('cost_usd'))}")
        lines.append("    " + ", ".join(parts))
    if attempt.error:
        lines.append(f"    ✗ {_clip(attempt.error, full)}")
    for call in attempt.tool_calls or ():
        arguments = json.dumps(call.get("arguments"), ensure_ascii=False, default=str)
        line = (
            f"    ↳ {call.get('tool')}({_clip(arguments, full, _SHORT_ARGUMENTS)}) "
            f"{call.get('outcome')} in {call.get('duration_ms')} ms"
        )
        if call.get("error"):
            line += f": {_clip(str(call['error']), full)}"
        lines.append(line)
    if attempt.produced_output:
        lines.append(f"    → output: {_output(attempt.output, full)}")
    return lines


def _output(value: Any, full: bool) -> str:
    if full:
        return json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return _clip(json.dumps(value, ensure_ascii=False, default=str), full)


# --- audit export ---------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """The audit trail: one record per attempt, for log pipelines (`audit export`)."""


@audit.command("export")
@_since_option(None, "attempts that began")
@click.option(
    "--until",
    type=MOMENT,
    help="Only attempts that began before then (a duration ago or an ISO date or time).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="JSON lines, or CSV with a header row.",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format jsonl.")
@pass_invocation
def export(
    invocation: Invocation,
    since: datetime | None,
    until: datetime | None,
    fmt: str,
    as_json: bool,
) -> int:
    """Write every attempt that began in [--since, --until) to stdout, in the order they
    began, a page at a time: memory stays bounded however long the trail."""
    if as_json and fmt == "csv":
        raise click.UsageError("--json is --format jsonl: give one or the other")
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
    records = history.audit_records(since=since, until=until, runtime=invocation.runtime)
    out = sys.stdout
    try:
        if fmt == "csv":
            _write_csv(records, out)
        else:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False, default=str))
                out.write("\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): what it wanted is written; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return exit_codes.COMPLETED


def _write_csv(records: Iterable[dict[str, Any]], out: TextIO) -> None:
    writer = csv.writer(out)
    writer.writerow(history.AUDIT_FIELDS)
    for record in records:
        writer.writerow([history.csv_value(record[name]) for name in history.AUDIT_FIELDS])


# --- metrics --------------------------------------------------------------------------------


@click.command()
@click.option("--agent", help="Only this agent (its name in the team file).")
@_since_option("24h", "attempts that began")
@_json_option()
@pass_invocation
def metrics(invocation: Invocation, agent: str | None, since: datetime, as_json: bool) -> int:
    """Per agent and endpoint: calls, successes, failures, time-outs, refusals, retries,
    success rate, duration (average, p50, p95), breaker, tokens and cost."""
    found = history.agent_metrics(since=since, agent=agent, runtime=invocation.runtime)
    if as_json:
        click.echo(json.dumps([row.model_dump() for row in found], ensure_ascii=False))
        return exit_codes.COMPLETED
    if not found:
        click.echo(f"no attempts since {since.isoformat(timespec='seconds')}")
        return exit_codes.COMPLETED
    table = Table(title=f"since {since.isoformat(timespec='seconds')}", title_justify="left")
    columns = ("agent", "endpoint", "breaker", "calls", "ok", "failed", "timeouts")
    for column in (*columns, "rejected", "retried", "success", "avg", "p50", "p95", "tokens"):
        table.add_column(column)
    table.add_column("cost (USD)", justify="right")
    for row in found:
        table.add_row(
            f"{row.team}/{row.agent}",
            row.endpoint or "",
            Text(row.breaker, style="" if row.breaker == "closed" else "yellow"),
            str(row.total),
            str(row.succeeded),
            str(row.failed),
            str(row.timeouts),
            str(row.rejected),
            str(row.retried),
            "" if row.success_rate is None else f"{row.success_rate:.0%}",
            _seconds(row.avg_ms),
            _seconds(row.p50_ms),
            _seconds(row.p95_ms),
            f"{row.tokens_in + row.tokens_out:,}" if row.tokens_in or row.tokens_out else "",
            _cost(row.cost_usd),
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED


# --- report ---------------------------------------------------------------------------------


@click.command()
@_since_option("24h", "attempts that began")
@_json_option()
@pass_invocation
def report(invocation: Invocation, since: datetime, as_json: bool) -> int:
    """Failure patterns since --since, each with its evidence and what to do: errors
    that cluster, agents failing more or slower than in the window before, breakers that
    flap, steps that keep timing out, budgets that keep being hit."""
    if since >= datetime.now(UTC):
        raise click.UsageError("--since must be in the past")
    found = history.failure_report(since=since, runtime=invocation.runtime)
    if as_json:
        click.echo(json.dumps(found.model_dump(), ensure_ascii=False, default=str))
        return exit_codes.COMPLETED
    window = f"from {found.since[:19]} to {found.until[:19]}"
    if not found.patterns:
        click.echo(f"no failure patterns {window} ({found.failures_read} failed attempts read)")
        return exit_codes.COMPLETED
    click.echo(
        f"{len(found.patterns)} failure pattern(s) {window}, compared with the window "
        f"from {found.previous_since[:19]} ({found.failures_read} failed attempts read):"
    )
    for pattern in found.patterns:
        click.echo("")
        click.echo(f"[{pattern.kind}] {pattern.summary}")
        for key, value in pattern.evidence.items():
            if value is not None:
                shown = value if isinstance(value, str | int | float) else json.dumps(value)
                click.echo(f"    {key}: {_clip(str(shown), False)}")
        click.echo(f"  → {pattern.recommendation}")
    return exit_codes.COMPLETED


# --- purge ----------------------------------------------------------------------------------


@click.command()
@click.option(
    "--older-than",
    "older_than",
    type=AGE,
    required=True,
    help="Delete what ended longer ago than this: 30d, 12h, 2w.",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@_json_option()
@pass_invocation
def purge(invocation: Invocation, older_than: timedelta, dry_run: bool, as_json: bool) -> int:
    """Delete executions that finished longer ago than --older-than, with their steps,
    attempts, memory, messages, handoffs and approvals, and health probes and breaker
    history as old, in batches. Running executions are never touched."""
    done = history.purge(older_than, dry_run=dry_run, runtime=invocation.runtime)
    if as_json:
        click.echo(json.dumps(done.model_dump()))
        return exit_codes.COMPLETED
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {done.executions} execution(s) that ended before {done.before[:19]} "
        f"({done.steps} steps, {done.attempts} attempts), {done.heartbeats} health "
        f"probe(s) and {done.breaker_events} breaker change(s)"
    )
    return exit_codes.COMPLETED
