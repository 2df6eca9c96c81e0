"""The distributed benchmarks (1-6). Each starts its own workers on fresh state, warms up,
runs raw Celery and Troupe alternately, prints its figures and stops its workers, even on
error (the cluster is a context manager)."""

from __future__ import annotations

from pathlib import Path

from bench.breaker import switchable_input, trip
from bench.context import Context, median
from bench.env import BenchError
from bench.raw_client import RawClient
from bench.report import percentile, progress
from bench.teams import noop_team, switchable_team
from bench.troupe_client import TroupeClient


def _clients() -> tuple[TroupeClient, RawClient]:
    return TroupeClient(), RawClient()


def warm_up(ctx: Context, troupe: TroupeClient, raw: RawClient) -> None:
    """Both sides once, wide enough to reach every pool process: imports, connections."""
    n = ctx.sizes.warmup
    raw.tasks(n, timeout=ctx.timeout(n))
    raw.round_trips(5, timeout=ctx.timeout(1))
    troupe.run(troupe.team(noop_team("bench-warmup", "parallel", n)), timeout=ctx.timeout(n))
    one = troupe.team(noop_team("bench-warmup-one", "sequential", 1))
    for _ in range(5):
        troupe.run(one, timeout=ctx.timeout(1))


# --- 1. throughput ----------------------------------------------------------------------


def throughput(ctx: Context) -> None:
    sizes = ctx.sizes
    width = sizes.parallel
    executions, steps = sizes.executions, sizes.execution_steps
    delegations = executions * steps
    with ctx.cluster("throughput"):
        troupe, raw = _clients()
        warm_up(ctx, troupe, raw)

        parallel = troupe.team(noop_team("bench-throughput", "parallel", width))
        raw_s, troupe_t = ctx.alternate(
            f"throughput: {width} raw tasks vs a {width}-step parallel team",
            lambda: raw.tasks(width, timeout=ctx.timeout(width)),
            lambda: troupe.run(parallel, timeout=ctx.timeout(width)),
        )
        ctx.emit(
            "throughput",
            "parallel_team",
            "delegations/s",
            [width / t.wall for t in troupe_t],
            [width / s for s in raw_s],
            size=width,
            troupe_seconds=median([t.wall for t in troupe_t]),
            troupe_db_seconds=median([t.db for t in troupe_t]),
            raw_seconds=median(raw_s),
        )

        team = troupe.team(noop_team("bench-throughput-10", "sequential", steps))
        raw_s, troupe_t = ctx.alternate(
            f"throughput: {delegations} raw tasks vs {executions} executions of {steps} steps",
            lambda: raw.tasks(delegations, timeout=ctx.timeout(delegations)),
            lambda: troupe.run_many(team, executions, timeout=ctx.timeout(delegations)),
        )
        ctx.emit(
            "throughput",
            "concurrent_executions",
            "delegations/s",
            [delegations / t.wall for t in troupe_t],
            [delegations / s for s in raw_s],
            size=delegations,
            executions=executions,
            steps_per_execution=steps,
            troupe_seconds=median([t.wall for t in troupe_t]),
            troupe_db_seconds=median([t.db for t in troupe_t]),
            raw_seconds=median(raw_s),
        )


# --- 2. latency -------------------------------------------------------------------------


def latency(ctx: Context) -> None:
    count = ctx.sizes.latency
    with ctx.cluster("latency"):
        troupe, raw = _clients()
        warm_up(ctx, troupe, raw)
        team = troupe.team(noop_team("bench-latency", "sequential", 1))

        def troupe_samples() -> list[tuple[float, float]]:
            timings = [troupe.run(team, timeout=ctx.timeout(1)) for _ in range(count)]
            return [(t.wall * 1000, t.observed * 1000) for t in timings]

        raw_ms, troupe_ms = ctx.alternate(
            f"latency: {count} sequential round trips each",
            lambda: raw.round_trips(count, timeout=ctx.timeout(1)),
            troupe_samples,
        )
        for q in (50, 95, 99):
            troupe_q = [percentile([wall for wall, _ in pair], q) for pair in troupe_ms]
            observed_q = [percentile([seen for _, seen in pair], q) for pair in troupe_ms]
            raw_q = [percentile(pair, q) for pair in raw_ms]
            added = [t - r for t, r in zip(troupe_q, raw_q, strict=True)]
            ctx.emit(
                "latency",
                f"p{q}",
                "ms",
                troupe_q,
                raw_q,
                added_ms=median(added),
                added_ms_min=min(added),
                added_ms_max=max(added),
                troupe_observed_ms=median(observed_q),
                samples=count,
            )


# --- 3. fan-out -------------------------------------------------------------------------


def fanout(ctx: Context) -> None:
    width = ctx.sizes.fanout
    with ctx.cluster("fanout"):
        troupe, raw = _clients()
        warm_up(ctx, troupe, raw)
        team = troupe.team(noop_team("bench-fanout", "parallel", width))
        raw_s, troupe_t = ctx.alternate(
            f"fan-out: a {width}-way chord vs a {width}-way parallel step",
            lambda: raw.chord(width, timeout=ctx.timeout(width)),
            lambda: troupe.run(team, timeout=ctx.timeout(width)),
        )
        ctx.emit(
            "fanout",
            "seconds",
            "s",
            [t.wall for t in troupe_t],
            raw_s,
            size=width,
            troupe_db_seconds=median([t.db for t in troupe_t]),
        )


# --- 4. depth ---------------------------------------------------------------------------


def depth(ctx: Context) -> None:
    steps = ctx.sizes.depth
    with ctx.cluster("depth"):
        troupe, raw = _clients()
        warm_up(ctx, troupe, raw)
        team = troupe.team(noop_team("bench-depth", "sequential", steps))
        raw_s, troupe_t = ctx.alternate(
            f"depth: a chain of {steps} vs a {steps}-step sequential team",
            lambda: raw.chain(steps, timeout=ctx.timeout(steps)),
            lambda: troupe.run(team, timeout=ctx.timeout(steps)),
        )
        ctx.emit(
            "depth",
            "seconds",
            "s",
            [t.wall for t in troupe_t],
            raw_s,
            size=steps,
            troupe_db_seconds=median([t.db for t in troupe_t]),
            troupe_ms_per_step=median([t.wall for t in troupe_t]) * 1000 / steps,
            raw_ms_per_step=median(raw_s) * 1000 / steps,
        )


# --- 5. scale ---------------------------------------------------------------------------


def scale(ctx: Context) -> None:
    width = ctx.sizes.scale
    with ctx.cluster("scale") as cluster:
        troupe, raw = _clients()
        rss_start = {"troupe": cluster.rss_mib("troupe"), "raw": cluster.rss_mib("raw")}
        warm_up(ctx, troupe, raw)
        team = troupe.team(noop_team("bench-scale", "parallel", width))
        rss_after: dict[str, list[float]] = {"troupe": [], "raw": []}

        def raw_run() -> float:
            seconds = raw.chord(width, timeout=ctx.timeout(width))
            rss_after["raw"].append(cluster.rss_mib("raw"))
            return seconds

        def troupe_run() -> float:
            timing = troupe.run(team, timeout=ctx.timeout(width))
            rss_after["troupe"].append(cluster.rss_mib("troupe"))
            return timing.wall

        raw_s, troupe_s = ctx.alternate(
            f"scale: a {width}-way chord vs one {width}-step execution", raw_run, troupe_run
        )
        ctx.emit("scale", "seconds", "s", troupe_s, raw_s, size=width)
        ctx.emit(
            "scale",
            "rss_start",
            "MiB",
            [rss_start["troupe"]],
            [rss_start["raw"]],
            note="all processes of the workers (parent and pool), before warm-up",
        )
        ctx.emit(
            "scale",
            "rss_end",
            "MiB",
            rss_after["troupe"],
            rss_after["raw"],
            note="after each pair's run; the last pair is the end",
            troupe_final=rss_after["troupe"][-1],
            raw_final=rss_after["raw"][-1],
            troupe_processes=cluster.rss_detail("troupe"),
            raw_processes=cluster.rss_detail("raw"),
        )


# --- 6. breaker -------------------------------------------------------------------------


def breaker(ctx: Context) -> None:
    count = ctx.sizes.rejected
    with ctx.cluster("breaker"):
        troupe, raw = _clients()
        warm_up(ctx, troupe, raw)
        workdir = ctx.env.workdir
        threshold = ctx.sizes.breaker_threshold
        trips = [
            trip(troupe, workdir, f"down{i}", threshold=threshold, timeout=ctx.timeout(1))
            for i in range(ctx.pairs)
        ]
        progress("breaker: agent down → first rejection measured")
        ctx.emit(
            "breaker",
            "down_to_first_rejection",
            "s",
            [t.down_to_rejection for t in trips],
            None,
            open_to_first_rejection_s=median([t.open_to_rejection for t in trips]),
            open_to_first_rejection_s_all=[round(t.open_to_rejection, 4) for t in trips],
            failures_before_rejection=[t.failures for t in trips],
            failure_threshold=threshold,
            traffic="sequential single-step executions, one at a time",
        )

        # The breaker of agent down0 stays open (reset_timeout 3600 s): time rejections.
        open_team = troupe.team(switchable_team("down0", threshold, 3600))
        work = switchable_input(workdir, "down0")
        calls_file = Path(work["calls"])
        calls_before = calls_file.stat().st_size
        noop_one = troupe.team(noop_team("bench-breaker-noop", "sequential", 1))
        noop_ms: list[float] = []

        def rejected_ms() -> float:
            samples = []
            for _ in range(count):
                timing = troupe.run(open_team, work, timeout=ctx.timeout(1), expect="failed")
                samples.append(timing.wall * 1000)
            noop_ms.append(
                median(
                    [troupe.run(noop_one, timeout=ctx.timeout(1)).wall * 1000 for _ in range(count)]
                )
            )
            return median(samples)

        raw_ms, troupe_ms = ctx.alternate(
            f"breaker: {count} rejected dispatches vs {count} raw round trips",
            lambda: median(raw.round_trips(count, timeout=ctx.timeout(1))),
            rejected_ms,
        )
        agent_calls = calls_file.stat().st_size - calls_before
        if agent_calls:
            raise BenchError(f"the agent was called {agent_calls} times with its breaker open")
        added = [t - r for t, r in zip(troupe_ms, raw_ms, strict=True)]
        ctx.emit(
            "breaker",
            "rejected_dispatch",
            "ms",
            troupe_ms,
            raw_ms,
            added_ms=median(added),
            added_ms_min=min(added),
            added_ms_max=max(added),
            samples=count,
            agent_calls=agent_calls,
            troupe_noop_success_ms=median(noop_ms),
            note="enqueue to recorded finish of a single-step execution whose agent's "
            "breaker is open, vs a raw no-op delay().get(); median per pair",
        )
