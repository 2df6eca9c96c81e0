"""What every benchmark gets: the environment, the sizes, the options; and the A/B loop."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bench.cluster import Cluster
from bench.env import BenchEnv, reset_state
from bench.report import emit, figure, progress
from bench.sizes import Sizes

R = TypeVar("R")
U = TypeVar("U")


@dataclass(frozen=True)
class Options:
    quick: bool = False
    pairs: int = 3
    concurrency: int = 2
    loglevel: str = "WARNING"
    # Multiplies every run's time limit.
    timeout_factor: float = 1.0


@dataclass
class Context:
    env: BenchEnv
    sizes: Sizes
    options: Options

    @property
    def pairs(self) -> int:
        return self.options.pairs

    def cluster(self, tag: str, **kwargs: Any) -> Cluster:
        """Fresh state (empty tables and queues), then workers of both kinds."""
        reset_state(self.env)
        kwargs.setdefault("concurrency", self.options.concurrency)
        kwargs.setdefault("loglevel", self.options.loglevel)
        return Cluster(self.env, tag=tag, **kwargs)

    def timeout(self, units: float, per_second: float = 10.0) -> float:
        """A run's time limit: 30 s plus ``units`` of work at ``per_second`` at worst."""
        return (30.0 + units / per_second) * self.options.timeout_factor

    def alternate(
        self, label: str, raw: Callable[[], R], troupe: Callable[[], U]
    ) -> tuple[list[R], list[U]]:
        """Raw, Troupe, raw, Troupe ... ``pairs`` times."""
        raws: list[R] = []
        troupes: list[U] = []
        for index in range(self.pairs):
            raws.append(raw())
            troupes.append(troupe())
            progress(f"{label}: pair {index + 1}/{self.pairs} done")
        return raws, troupes

    def emit(
        self, benchmark: str, name: str, unit: str, troupe: list[Any], raw: Any, **extra: Any
    ) -> None:
        # A benchmark with its own pool size (io_fanout) gives its own `concurrency`.
        common = {"quick": self.options.quick, "concurrency": self.options.concurrency}
        emit(figure(benchmark, name, unit, troupe, raw, **{**common, **extra}))


def median(values: list[float]) -> float:
    return float(statistics.median(values))
