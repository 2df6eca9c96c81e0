"""Commands about agents' health: breakers, agents.

Both list identities (what agents call: orchestration.agents.identity; each endpoint of
an agent is one), each with the agent names and teams that use it: that is what a
breaker, a heartbeat and the counts of calls in flight belong to.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from orchestration.cli import exit_codes
from orchestration.cli.invocation import Invocation, pass_invocation
from orchestration.limits.demand import EndpointStats
from orchestration.resilience.breaker import CLOSED
from orchestration.store.agent_registry import AgentRegistry, by_identity
from orchestration.store.breakers import BreakerStore
from orchestration.store.models import AgentRow
from orchestration.store.repository import aware, now


def _when(value: datetime | None) -> str:
    stamp = aware(value)
    return stamp.isoformat(timespec="seconds") if stamp else ""


def _used_by(rows: Iterable[AgentRow]) -> list[dict[str, str]]:
    return [{"team": row.team, "agent": row.name} for row in rows]


def _users_text(users: list[dict[str, Any]]) -> str:
    return ", ".join(f"{user['team']}/{user['agent']}" for user in users)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_invocation
@click.pass_context
def breakers(context: click.Context, invocation: Invocation, as_json: bool) -> int:
    """List every circuit breaker: what it guards and who calls it (or `breakers reset`)."""
    if context.invoked_subcommand is not None:
        return exit_codes.COMPLETED
    store = invocation.runtime.store
    views = BreakerStore(store).all()
    users = by_identity(AgentRegistry(store).agents())
    rows: list[dict[str, Any]] = [
        {
            "identity": view.key,
            "used_by": _used_by(users.get(view.key, ())),
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
    columns = ("identity", "used by", "state", "failures", "opened at", "next trial", "last error")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["identity"]),
            _users_text(row["used_by"]),
            str(row["state"]),
            str(row["failures"]),
            str(row["opened_at"] or ""),
            str(row["next_trial_at"] or "") if row["state"] != CLOSED else "",
            str(row["last_error"] or "")[:80],
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED


@breakers.command()
@click.argument("what")
@pass_invocation
def reset(invocation: Invocation, what: str) -> int:
    """Close a breaker by hand. WHAT is an identity, or an agent name: then the breakers
    of everything agents of that name call, in any team."""
    store = invocation.runtime.store
    breaker_store = BreakerStore(store)
    if breaker_store.reset(what):
        click.echo(f"breaker of {what!r} closed")
        return exit_codes.COMPLETED
    named = by_identity(row for row in AgentRegistry(store).agents() if row.name == what)
    if not named:
        raise click.UsageError(f"no breaker for {what!r}: neither an identity nor an agent name")
    closed = [identity for identity in named if breaker_store.reset(identity)]
    if not closed:
        calls = ", ".join(named)
        raise click.UsageError(f"no breaker for agent {what!r} (it calls {calls})")
    for identity in closed:
        teams = ", ".join(row.team for row in named[identity])
        click.echo(f"breaker of {identity!r} closed (agent {what!r} of {teams})")
    if len(named) > 1:
        click.echo(
            f"agent {what!r} calls {len(named)} different things across teams: "
            f"closed {len(closed)} breaker(s)"
        )
    return exit_codes.COMPLETED


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--window", default=3600.0, show_default=True, help="Seconds of recent calls.")
@pass_invocation
def agents(invocation: Invocation, as_json: bool, window: float) -> int:
    """What registered agents call (each endpoint), who calls it, its health, last
    heartbeat, breaker, calls in flight, recent latency and success rate."""
    store = invocation.runtime.store
    registry = AgentRegistry(store)
    breaker_views = {view.key: view for view in BreakerStore(store).all()}
    beats = registry.last_heartbeats()
    outcomes = registry.recent_outcomes(now() - timedelta(seconds=window))
    groups = by_identity(registry.agents())
    live = _counts(invocation, list(groups))
    rows: list[dict[str, Any]] = []
    for identity, users in groups.items():
        beat = beats.get(identity)
        view = breaker_views.get(identity)
        counts = [outcomes.get((user.team, user.name), (0, 0)) for user in users]
        ok, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        has_probe = any(user.spec.get("health") for user in users)
        rows.append(
            {
                "identity": identity,
                "used_by": _used_by(users),
                "health": ("healthy" if beat.healthy else "unhealthy")
                if beat
                else ("not probed yet" if has_probe else "no health check"),
                "last_heartbeat": _when(beat.at) if beat else None,
                "latency_ms": beat.latency_ms if beat else None,
                "breaker": view.snapshot.state if view else CLOSED,
                # Counted in Redis (None: no Redis to ask).
                "in_flight": live[identity].in_flight if identity in live else None,
                "recent_latency_ms": _rounded(live.get(identity)),
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
    columns = (
        "identity",
        "used by",
        "health",
        "last heartbeat",
        "breaker",
        "in flight",
        "latency",
        "calls",
        "success",
    )
    for column in columns:
        table.add_column(column)
    for row in rows:
        rate = row["success_rate"]
        latency = row["recent_latency_ms"]
        table.add_row(
            str(row["identity"]),
            _users_text(row["used_by"]),
            str(row["health"]),
            str(row["last_heartbeat"] or ""),
            str(row["breaker"]),
            "" if row["in_flight"] is None else str(row["in_flight"]),
            "" if latency is None else f"{latency:g} ms",
            str(row["recent_calls"]),
            "" if rate is None else f"{float(rate):.0%}",
        )
    Console(highlight=False).print(table)
    return exit_codes.COMPLETED


def _counts(invocation: Invocation, identities: list[str]) -> dict[str, EndpointStats]:
    """Calls in flight and recent latency per identity, from the Redis where workers
    count them; none without one (an embedded worker counts in its own process)."""
    url = invocation.settings.effective_redis_url
    if url is None or not identities:
        return {}
    from orchestration.limits.redis_limiter import RedisLimiter

    limiter = RedisLimiter(url)
    try:
        return limiter.stats(identities)
    except Exception as exc:  # the listing is still worth printing without them
        click.echo(f"(calls in flight unknown: {type(exc).__name__}: {exc})", err=True)
        return {}
    finally:
        limiter.close()


def _rounded(stats: EndpointStats | None) -> float | None:
    if stats is None or stats.latency_ms is None:
        return None
    return round(stats.latency_ms, 1)
