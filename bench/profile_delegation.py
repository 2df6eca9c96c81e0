"""Where a delegation's time goes, without a broker: one process calls ``Delegation.run``
for every step of a recorded execution against PostgreSQL, and prints milliseconds per
delegation, statements and commits per delegation, and optionally a cProfile listing.

    python -m bench.profile_delegation [--steps 2000] [--strategy parallel] [--profile]
    python -m bench.profile_delegation --breaker-open   # every delegation is rejected
    python -m bench.profile_delegation --limits         # the agent declares limits

This is the inner loop the worker benchmarks pay for on every task; it isolates Troupe's
own cost from Celery's and Redis's. It creates and drops its own database
(``troupe_bench_<pid>``) on the server ``TROUPE_DATABASE_URL`` names, else
postgres@127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from typing import Any

from bench.env import prepare
from bench.teams import noop_team


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_delegation")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--strategy", default="parallel")
    parser.add_argument("--profile", action="store_true", help="print a cProfile listing")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--tottime", action="store_true", help="also list by own time")
    parser.add_argument(
        "--breaker-open",
        action="store_true",
        help="open the agent's breaker first: the cost of a rejected dispatch",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="the agent declares limits no call reaches: the cost of the limit checks",
    )
    args = parser.parse_args(argv)

    with prepare(name="profile"):
        return _measure(args)


# Limits the benchmark never reaches, so every delegation is admitted, and pays for the
# check (one Redis round trip before the call, one after).
UNREACHED_LIMITS = {"max_concurrency": 100_000, "rate_limit": {"requests_per_minute": 1_000_000}}


def _measure(args: argparse.Namespace) -> int:
    print(json.dumps(measure(args)))
    return 0


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One execution of ``args.steps`` delegations, run here; its figures."""
    from sqlalchemy import event

    from orchestration import Team
    from orchestration.client.runtime import get_runtime
    from orchestration.store.agent_registry import AgentRegistry
    from workers.tasks import delegation
    from workers.tasks import store as worker_store
    from workflows.plan import build_plan

    runtime = get_runtime()
    breaker = {"breaker": {"when_open": "fail"}} if args.breaker_open else {}
    limits = UNREACHED_LIMITS if getattr(args, "limits", False) else {}
    text = noop_team("profile", args.strategy, args.steps, **breaker, **limits)
    team = Team.from_yaml(text)
    plan = build_plan(team.spec)
    execution_id = f"profile-{os.getpid()}-{time.monotonic_ns()}"
    AgentRegistry(runtime.store).register_agents(
        team.name, team.spec.model_dump(mode="json")["agents"]
    )
    runtime.executions.create_execution(
        execution_id, team.spec.model_dump(mode="json"), plan, {"n": 1}
    )
    if args.breaker_open:
        from orchestration.agents.identity import agent_identity
        from orchestration.store.breakers import BreakerStore

        noop = team.spec.agents["noop"]
        reason = "profile: opened on purpose"
        BreakerStore(runtime.store).force_open(agent_identity(noop), noop.breaker, reason)
    counts = {"statements": 0, "commits": 0}

    def on_statement(*_: Any) -> None:
        counts["statements"] += 1

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    runner = delegation()
    # The store's transactional engine and its autocommit one (reads, one-trip writes).
    for engine in {worker_store().engine, worker_store().reader.engine}:
        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine, "commit", on_commit)

    from workers.delegation import Delivery

    deliveries = [
        Delivery(execution_id, step.id, 1, task_id=f"t-{i}", worker="profile")
        for i, step in enumerate(plan.steps)
    ]
    limiter_calls = count_limiter_calls(runner)
    hot_before = worker_store().hot_round_trips
    profiler = cProfile.Profile() if args.profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    for delivery in deliveries:
        runner.run(delivery)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    n = len(deliveries)
    # Statements SQLAlchemy sent, plus the round trips of the store's hot path (its
    # prepared read and write scripts go through the bare psycopg2 cursor).
    counts["statements"] += worker_store().hot_round_trips - hot_before
    outcomes = _outcomes(runtime.store.engine, execution_id)
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.top)
        if args.tottime:
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.top)
    return {
        "benchmark": "profile_delegation",
        "strategy": args.strategy,
        "steps": n,
        "ms_per_delegation": round(1000 * seconds / n, 3),
        "round_trips_per_delegation": round(counts["statements"] / n, 2),
        "commits_per_delegation": round(counts["commits"] / n, 2),
        # Calls to the limiter (each one Redis round trip when it is Redis's).
        "limiter_calls_per_delegation": round(sum(limiter_calls.values()) / n, 2),
        "breaker_open": args.breaker_open,
        "limits": bool(getattr(args, "limits", False)),
        # Recorded attempts by outcome: with the breaker open, no "success".
        "attempt_outcomes": outcomes,
    }


def count_limiter_calls(runner: Any) -> dict[str, int]:
    """Count the calls this process's delegations make to their limiter."""
    counts = {"acquire": 0, "release": 0, "renew": 0}
    limiter = runner.capacity.limiter
    if limiter is None:
        return counts
    for name in counts:
        method = getattr(limiter, name)
        if getattr(method, "_counted", False):
            method = method._inner

        def counted(*args: Any, _method: Any = method, _name: str = name) -> Any:
            counts[_name] += 1
            return _method(*args)

        counted._counted = True  # type: ignore[attr-defined]
        counted._inner = method  # type: ignore[attr-defined]
        setattr(limiter, name, counted)
    return counts


def _outcomes(engine: Any, execution_id: str) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT outcome, count(*) FROM troupe_attempts WHERE execution_id = :id"
                " GROUP BY outcome"
            ),
            {"id": execution_id},
        )
        return {outcome: count for outcome, count in rows}


if __name__ == "__main__":
    raise SystemExit(main())
