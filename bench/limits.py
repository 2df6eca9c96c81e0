"""What a limit check costs: the limiter on its own, and a delegation whose agent declares
limits beside one whose agent declares none.

    python -m bench.limits [--calls 5000] [--steps 2000] [--pairs 3]

1. ``limiter``: ``--calls`` admissions and releases of one call against the Redis
   limiter (the Lua scripts, one round trip each) and the in-process one, timed one by
   one: mean, p50 and p99 in ms.
2. ``delegation``: two executions of a ``--steps`` parallel team of a no-op agent, one
   whose agent declares limits no call reaches, run in this process against PostgreSQL
   (as ``bench.profile_delegation``) one delegation of each in turn, ``--pairs`` times:
   the median ms per delegation of each, and the difference: what the checks add.

One JSON line per figure. Runs on the Redis and PostgreSQL that ``bench.env`` prepares
(its own database and Redis database number).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

from bench.env import prepare


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args(argv)
    with prepare(name="limits") as env:
        _limiter(env.broker_url, args.calls)
        _delegations(args.steps, args.pairs)
    return 0


def _limiter(redis_url: str, calls: int) -> None:
    from orchestration.limits.demand import Candidate, Demand, Grant, Settlement
    from orchestration.limits.local_limiter import LocalLimiter
    from orchestration.limits.redis_limiter import RedisLimiter

    redis_limiter = RedisLimiter(redis_url, prefix=f"troupe:bench:{uuid.uuid4().hex}:")
    endpoint = Candidate(index=0, identity="http:http://bench.test/agent", ms_per_request=0.001)
    for name, limiter in (("redis", redis_limiter), ("in-process", LocalLimiter())):
        acquire: list[float] = []
        release: list[float] = []
        for i in range(calls + 100):
            demand = Demand(
                holder=f"bench:s{i}:1",
                step=f"bench:s{i}",
                token=f"bench:s{i}:1:t",
                lease_ms=15_000,
                routing="least_in_flight",
                candidates=(endpoint,),
                group=endpoint.identity,
                group_max_concurrency=100_000,
            )
            started = time.perf_counter()
            grant = limiter.acquire(demand)
            admitted = time.perf_counter()
            assert isinstance(grant, Grant), grant  # limits no call reaches
            limiter.release(grant, Settlement(seconds=0.001))
            ended = time.perf_counter()
            if i >= 100:  # the first calls load the scripts and open connections
                acquire.append(admitted - started)
                release.append(ended - admitted)
        for step, samples in (("acquire", acquire), ("release", release)):
            print(
                json.dumps({"benchmark": "limits", "limiter": name, "step": step, **_ms(samples)})
            )
    redis_limiter.close()


def _ms(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "calls": len(samples),
        "mean_ms": round(1000 * statistics.fmean(samples), 4),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 4),
        "p99_ms": round(1000 * ordered[int(len(ordered) * 0.99)], 4),
    }


def _delegations(steps: int, pairs: int) -> None:
    """Two executions of ``steps`` no-op delegations, one whose agent declares limits no
    call reaches: run here, alternately one delegation of each, each timed, so both see
    the same machine (a shared machine's speed drifts within seconds)."""
    from bench.profile_delegation import UNREACHED_LIMITS, count_limiter_calls
    from bench.teams import noop_team
    from orchestration import Team
    from orchestration.client.runtime import get_runtime
    from workers.delegation import Delivery
    from workers.tasks import delegation
    from workflows.plan import build_plan

    runtime = get_runtime()
    runner = delegation()
    calls = count_limiter_calls(runner)
    for pair in range(pairs):
        queues: dict[bool, list[Delivery]] = {}
        for limits in (False, True):
            team = Team.from_yaml(
                noop_team("limits", "parallel", steps, **(UNREACHED_LIMITS if limits else {}))
            )
            plan = build_plan(team.spec)
            execution_id = f"limits-{pair}-{limits}-{uuid.uuid4().hex[:8]}"
            runtime.executions.create_execution(
                execution_id, team.spec.model_dump(mode="json"), plan, {"n": 1}
            )
            queues[limits] = [
                Delivery(execution_id, step.id, 1, task_id=f"t-{i}", worker="bench")
                for i, step in enumerate(plan.steps)
            ]
        timings: dict[bool, list[float]] = {False: [], True: []}
        before = sum(calls.values())
        for plain, limited in zip(queues[False], queues[True], strict=True):
            for limits, delivery in ((False, plain), (True, limited)):
                started = time.perf_counter()
                runner.run(delivery)
                timings[limits].append(time.perf_counter() - started)
        median = {k: 1000 * statistics.median(v) for k, v in timings.items()}
        print(
            json.dumps(
                {
                    "benchmark": "limits",
                    "figure": "ms per delegation (median), without and with limits",
                    "pair": pair,
                    "steps": steps,
                    "without_limits": round(median[False], 3),
                    "with_limits": round(median[True], 3),
                    "limit_checks_ms": round(median[True] - median[False], 3),
                    "limiter_calls_per_limited_delegation": (sum(calls.values()) - before) / steps,
                }
            )
        )


if __name__ == "__main__":
    raise SystemExit(main())
