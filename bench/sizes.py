"""How big each benchmark is: the issue's sizes, and small ones for ``--quick``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    # 1. Throughput: a parallel team of this many steps vs as many raw tasks ...
    parallel: int
    # ... and this many concurrent executions of a sequential team of `execution_steps`.
    executions: int
    execution_steps: int
    # 2. Latency: sequential single-step executions vs raw delay().get().
    latency: int
    # 3. Fan-out: one parallel step of this width and a join vs a raw chord.
    fanout: int
    # 4. Depth: a sequential team of this many steps vs a raw chain.
    depth: int
    # 5. Scale: one execution of this many (parallel) steps vs a raw chord.
    scale: int
    # 6. Breaker: consecutive failures that open it; rejected dispatches timed per pair.
    breaker_threshold: int
    rejected: int
    # 7. Embedded mode: the example team, and a sequential team of this many steps.
    embedded_steps: int
    # Warm-up: steps (or tasks) run on each side before measuring.
    warmup: int


FULL = Sizes(
    parallel=5000,
    executions=500,
    execution_steps=10,
    latency=300,
    fanout=1000,
    depth=100,
    scale=10_000,
    breaker_threshold=5,
    rejected=100,
    embedded_steps=100,
    warmup=40,
)

QUICK = Sizes(
    parallel=100,
    executions=10,
    execution_steps=10,
    latency=30,
    fanout=50,
    depth=20,
    scale=150,
    breaker_threshold=3,
    rejected=15,
    embedded_steps=20,
    warmup=10,
)
