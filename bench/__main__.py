"""`python -m bench [--quick] [--only NAME[,NAME]] [--concurrency N] [--pairs N]`

Runs the benchmarks in order, each on its own workers, and prints one JSON line per figure
on stdout (progress on stderr). Exit status 1 if any benchmark failed (it then prints an
``"figure": "error"`` line and the run goes on with the next one).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import fields, replace

from bench.context import Context, Options
from bench.env import prepare
from bench.report import emit, error_line, progress
from bench.sizes import FULL, QUICK, Sizes

NAMES = (
    "throughput",
    "latency",
    "fanout",
    "depth",
    "scale",
    "breaker",
    "embedded",
    "dag",
    "io_fanout",
    "map",
    "llm",
)


def _benchmarks() -> dict[str, Callable[[Context], None]]:
    # Imported after the environment is exported: they import Troupe.
    from bench import embedded, llm, scenarios, workloads

    return {
        "throughput": scenarios.throughput,
        "latency": scenarios.latency,
        "fanout": scenarios.fanout,
        "depth": scenarios.depth,
        "scale": scenarios.scale,
        "breaker": scenarios.breaker,
        "embedded": embedded.embedded,
        "dag": workloads.crossed_dag,
        "io_fanout": workloads.io_fanout,
        "map": workloads.map_step,
        "llm": llm.llm,
    }


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}"
        )
    return names


def _size(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    known = [f.name for f in fields(Sizes)]
    if name not in known or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with NAME one of {', '.join(known)}")
    return name, int(value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Troupe vs raw Celery (same durable settings), one JSON line per figure.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument(
        "--only", type=_names, default=list(NAMES), help=f"comma-separated: {','.join(NAMES)}"
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=2, help="prefork processes per worker"
    )
    parser.add_argument(
        "--pairs", type=int, default=3, help="raw/Troupe pairs per figure (at least 3)"
    )
    parser.add_argument(
        "--size",
        type=_size,
        action="append",
        default=[],
        metavar="NAME=N",
        help="override one size (see bench/sizes.py), e.g. --size scale=2000",
    )
    parser.add_argument("--loglevel", default="WARNING", help="workers' log level")
    parser.add_argument(
        "--timeout-factor", type=float, default=1.0, help="multiply every run's time limit"
    )
    parser.add_argument("--redis-url", help="broker (default: TROUPE_BROKER_URL, else a locked DB)")
    parser.add_argument(
        "--database-url", help="PostgreSQL server (default: TROUPE_DATABASE_URL's server)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs")
    args = parser.parse_args(argv)
    if args.pairs < 3:
        parser.error("--pairs must be at least 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        quick=args.quick,
        pairs=args.pairs,
        concurrency=args.concurrency,
        loglevel=args.loglevel,
        timeout_factor=args.timeout_factor,
    )
    failures = 0
    started = time.monotonic()
    with prepare(
        name="bench",
        redis_url=args.redis_url,
        database_url=args.database_url,
        keep_workdir=args.keep_logs,
    ) as env:
        progress(f"broker {env.broker_url}, database {env.database}, logs in {env.workdir}")
        sizes = replace(QUICK if args.quick else FULL, **dict(args.size))
        context = Context(env=env, sizes=sizes, options=options)
        benchmarks = _benchmarks()
        for name in args.only:
            began = time.monotonic()
            progress(f"{name}: starting")
            try:
                benchmarks[name](context)
            except Exception as exc:
                failures += 1
                env.keep_workdir = True
                traceback.print_exc(file=sys.stderr)
                emit(error_line(name, f"{type(exc).__name__}: {exc}"))
            progress(f"{name}: {time.monotonic() - began:.1f}s")
    progress(f"all done in {time.monotonic() - started:.1f}s, {failures} failed")
    return 1 if failures else 0


def _exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: workers stopped, database dropped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


if __name__ == "__main__":
    _exit_on_sigterm()
    sys.exit(main())
