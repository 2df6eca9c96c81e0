"""Where a delegation's time goes, without a broker: one process calls ``Delegation.run``
for every step of a recorded execution against PostgreSQL, and prints milliseconds per
delegation, statements and commits per delegation, and optionally a cProfile listing.

    python -m bench.profile_delegation [--steps 2000] [--strategy parallel] [--profile]
    python -m bench.profile_delegation --breaker-open   # every delegation is rejected
    python -m bench.profile_delegation --agent openai   # an openai agent's own overhead
    python -m bench.profile_delegation --limits         # the agent declares limits
    python -m bench.profile_delegation --metrics        # with a worker's Prometheus metrics

This is the inner loop the worker benchmarks pay for on every task; it isolates Troupe's
own cost from Celery's and Redis's. It creates and drops its own database
(``troupe_bench_<pid>``) on the server ``TROUPE_DATABASE_URL`` names, else
postgres@127.0.0.1:5432.

``--agent openai`` runs the steps as ``openai`` agents against a local chat-completions
server that answers at once (``bench/openai_server.py``, a process of its own), in a
thread as a threads pool would (so each call goes through a helper thread; with
``--profile``, in the main thread so that cProfile sees the call), and the same number of
no-op steps the same way. It also times, as many times, the same request as a
bare HTTP POST (``httpx2``, the SDK's transport, with the pool limits Troupe uses) and
as a call of the official client alone. Wall and CPU milliseconds (of this process: the
server's are not counted) per delegation and per request; ``adapter_overhead`` is an
openai delegation less a no-op one less the bare POST: what the adapter and the SDK add
beyond the HTTP round trip, of which ``sdk_overhead`` is the client's own part.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.env import BenchEnv, prepare
from bench.teams import LLM_MODEL, LLM_QUESTION, llm_prompt, model_team, noop_team

T = TypeVar("T")
# Calls of each kind run before measuring (compiled templates, open connections).
WARMUP = 20


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
        "--agent",
        choices=("python", "openai"),
        default="python",
        help="openai: the adapter's overhead beyond the HTTP round trip (see above)",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="the agent declares limits no call reaches: the cost of the limit checks",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="record Prometheus metrics, as `worker --metrics-port` does: their cost",
    )
    args = parser.parse_args(argv)
    if args.agent == "openai" and args.breaker_open:
        parser.error("--breaker-open profiles the no-op agent only")

    with prepare(name="profile") as env:
        if args.agent == "openai":
            return _measure_openai(args, env)
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

    if args.metrics:
        from workers import metrics

        # Before the worker's records and breakers are made: they are metered then.
        metrics.enable()
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
        _print_profile(profiler, args)
    if args.metrics:
        metrics.disable()
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
        "metrics": bool(getattr(args, "metrics", False)),
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


@dataclass(frozen=True)
class Timed:
    """Milliseconds per call: wall, and CPU of this process."""

    wall_ms: float
    cpu_ms: float

    def minus(self, *others: Timed) -> dict[str, float]:
        return {
            "wall_ms": round(self.wall_ms - sum(o.wall_ms for o in others), 3),
            "cpu_ms": round(self.cpu_ms - sum(o.cpu_ms for o in others), 3),
        }

    def rounded(self) -> dict[str, float]:
        return {"wall_ms": round(self.wall_ms, 3), "cpu_ms": round(self.cpu_ms, 3)}


def _timed(calls: list[Callable[[], Any]], *, in_thread: bool = True) -> Timed:
    """Each call once, in order, in a thread of its own as a threads pool runs tasks
    (agent calls then go through helper threads), or in this main thread (as a prefork
    child: agent calls run in place under SIGALRM), where cProfile sees all of it."""
    measured: list[Timed] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            wall, cpu = time.perf_counter(), time.thread_time()
            for call in calls:
                call()
            # thread_time: this thread's CPU; the helper threads' is added below.
            measured.append(Timed(time.perf_counter() - wall, time.thread_time() - cpu))
        except BaseException as exc:
            failure.append(exc)

    process_cpu = time.process_time()
    if in_thread:
        thread = threading.Thread(target=run, name="profile-calls")
        thread.start()
        thread.join()
    else:
        run()
    if failure:
        raise failure[0]
    (timing,) = measured
    n = len(calls)
    # The process's CPU covers the helper threads the calls went through as well.
    return Timed(1000 * timing.wall_ms / n, 1000 * (time.process_time() - process_cpu) / n)


def _measure_openai(args: argparse.Namespace, env: BenchEnv) -> int:
    import httpx2
    from openai.types.chat import ChatCompletionMessageParam

    from bench.llm import ModelServer
    from orchestration.agents.openai_chat import NO_KEY
    from orchestration.agents.openai_client import (
        KEEPALIVE_CONNECTIONS,
        KEEPALIVE_SECONDS,
        client_for,
    )

    n = args.steps
    with ModelServer(env, 0.0) as server:
        noop = _Execution(noop_team("profile-noop", args.strategy, n + WARMUP), "noop")
        model = _Execution(
            model_team("profile-openai", args.strategy, n + WARMUP, server.base_url, 30.0),
            "openai",
        )
        messages: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": llm_prompt(LLM_QUESTION)}
        ]
        body = {"model": LLM_MODEL, "messages": messages}
        url = f"{server.base_url}/chat/completions"
        http = httpx2.Client(
            limits=httpx2.Limits(
                max_connections=None,
                max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_SECONDS,
            )
        )
        sdk = client_for(server.base_url, NO_KEY)

        def post() -> None:
            reply = http.post(url, json=body, headers={"authorization": f"Bearer {NO_KEY}"})
            reply.raise_for_status()
            json.loads(reply.content)

        def create() -> None:
            sdk.chat.completions.create(model=LLM_MODEL, messages=messages, timeout=30.0)

        try:
            # Warm-ups: the first calls of each kind open connections and fill caches.
            for execution in (noop, model):
                _timed(execution.calls(0, WARMUP))
            _timed([post] * WARMUP)
            _timed([create] * WARMUP)
            in_thread = not args.profile
            noop_t = _timed(noop.calls(WARMUP, n), in_thread=in_thread)
            profiler = cProfile.Profile() if args.profile else None
            if profiler:
                profiler.enable()
            model_t = _timed(model.calls(WARMUP, n), in_thread=in_thread)
            if profiler:
                profiler.disable()
            post_t = _timed([post] * n)
            create_t = _timed([create] * n)
        finally:
            http.close()
        served = server.stats()["served"]
    outcomes = _outcomes(model.engine, model.execution_id)
    print(
        json.dumps(
            {
                "benchmark": "profile_delegation",
                "agent": "openai",
                "strategy": args.strategy,
                "steps": n,
                # --profile runs the delegations in the main thread, for cProfile to see.
                "pool": "solo" if args.profile else "threads",
                "noop_delegation": noop_t.rounded(),
                "openai_delegation": model_t.rounded(),
                "http_post": post_t.rounded(),
                "sdk_call": create_t.rounded(),
                "adapter_overhead": model_t.minus(noop_t, post_t),
                "sdk_overhead": create_t.minus(post_t),
                "troupe_adapter": model_t.minus(noop_t, create_t),
                "requests_served": served,
                "attempt_outcomes": outcomes,
                "note": "milliseconds per call; cpu_ms is this process's CPU (the server's "
                "is not counted); adapter_overhead = openai delegation - no-op delegation - "
                "bare POST; sdk_overhead = SDK call - bare POST; troupe_adapter = openai "
                "delegation - no-op delegation - SDK call",
            }
        )
    )
    if profiler:
        _print_profile(profiler, args)
    return 0 if outcomes == {"success": n + WARMUP} else 1


class _Execution:
    """One recorded execution of ``team_text``; ``calls`` runs its steps' delegations."""

    def __init__(self, team_text: str, label: str) -> None:
        from orchestration import Team
        from orchestration.client.runtime import get_runtime
        from orchestration.store.agent_registry import AgentRegistry
        from workers.delegation import Delivery
        from workers.tasks import delegation
        from workflows.plan import build_plan

        runtime = get_runtime()
        team = Team.from_yaml(team_text)
        plan = build_plan(team.spec)
        self.execution_id = f"profile-{label}-{os.getpid()}"
        self.engine = runtime.store.engine
        spec = team.spec.model_dump(mode="json")
        AgentRegistry(runtime.store).register_agents(team.name, spec["agents"])
        runtime.executions.create_execution(
            self.execution_id, spec, plan, {"question": LLM_QUESTION}
        )
        self._runner = delegation()
        self._deliveries = [
            Delivery(self.execution_id, step.id, 1, task_id=f"t-{label}-{i}", worker="profile")
            for i, step in enumerate(plan.steps)
        ]

    def calls(self, start: int, count: int) -> list[Callable[[], Any]]:
        run = self._runner.run
        return [_bind(run, d) for d in self._deliveries[start : start + count]]


def _bind(function: Callable[[Any], T], argument: Any) -> Callable[[], T]:
    return lambda: function(argument)


def _print_profile(profiler: cProfile.Profile, args: argparse.Namespace) -> None:
    pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.top)
    if args.tottime:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.top)


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
