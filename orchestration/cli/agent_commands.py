"""Commands about agents' health: breakers, agents."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import click
from rich.console import Console
from rich.table import Table

from orchestration.cli import exit_codes
from orchestration.resilience.breaker import CLOSED
from orchestration.runtime import get_runtime
from orchestration.store.breakers import BreakerStore, aware
from orchestration.store.repository import now


def _when(value: datetime | None) -> str:
    stamp = aware(value)
    return stamp.isoformat(timespec="seconds") if stamp else ""


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def breakers(context: click.Context, as_json: bool) -> int:
    """List every circuit breaker (or `breakers reset AGENT`)."""
    if context.invoked_subcommand is not None:
        return exit_codes.COMPLETED
    views = BreakerStore(get_runtime().store).all()
    rows = [
        {
            "agent": view.key,
            "state": view.snapshot.state,
            "failures": view.snapshot.consecutive_failures,
            "window": view.snapshot.outcomes,
            "opened_at": _when(view.snapshot.opened_at) or None,
            "next_trial_at": _when(view.snapshot.next_trial_at) or None,
            "last_error": view.snapshot.last_error,
        }
        for view in views
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return exit_codes.COMPLETED
    if not rows:
        click.echo("no breakers yet: every agent is closed")
        return exit_codes.COMPLETED
    table = Table()
    for column in ("agent", "state", "failures", "opened at", "next trial", "last error"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["agent"]),
            str(row["state"]),
            str(row["failures"]),
            str(row["opened_at"] or ""),
            str(row["next_trial_at"] or "") if row["state"] != CLOSED else "",
            str(row["last_error"] or "")[:80],
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED


@breakers.command()
@click.argument("agent")
def reset(agent: str) -> int:
    """Close AGENT's breaker by hand."""
    if not BreakerStore(get_runtime().store).reset(agent):
        raise click.UsageError(f"no breaker for agent {agent!r}")
    click.echo(f"breaker of {agent!r} closed")
    return exit_codes.COMPLETED


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--window", default=3600.0, show_default=True, help="Seconds of recent calls.")
def agents(as_json: bool, window: float) -> int:
    """Each agent's health, last heartbeat, breaker and recent success rate."""
    store = get_runtime().store
    breaker_views = {view.key: view for view in BreakerStore(store).all()}
    beats = store.last_heartbeats()
    outcomes = store.recent_outcomes(now() - timedelta(seconds=window))
    rows = []
    for agent in store.agents():
        beat = beats.get(agent.name)
        view = breaker_views.get(agent.name)
        ok, total = outcomes.get(agent.name, (0, 0))
        has_probe = bool(agent.spec.get("health"))
        rows.append(
            {
                "agent": agent.name,
                "team": agent.team,
                "health": ("healthy" if beat.healthy else "unhealthy")
                if beat
                else ("not probed yet" if has_probe else "no health check"),
                "last_heartbeat": _when(beat.at) if beat else None,
                "latency_ms": beat.latency_ms if beat else None,
                "breaker": view.snapshot.state if view else CLOSED,
                "recent_calls": total,
                "success_rate": round(ok / total, 3) if total else None,
            }
        )
    if as_json:
        click.echo(json.dumps(rows))
        return exit_codes.COMPLETED
    if not rows:
        click.echo("no agents yet: run a team first")
        return exit_codes.COMPLETED
    table = Table()
    for column in ("agent", "team", "health", "last heartbeat", "breaker", "calls", "success"):
        table.add_column(column)
    for row in rows:
        rate = row["success_rate"]
        table.add_row(
            str(row["agent"]),
            str(row["team"]),
            str(row["health"]),
            str(row["last_heartbeat"] or ""),
            str(row["breaker"]),
            str(row["recent_calls"]),
            "" if rate is None else f"{float(rate):.0%}",
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED
