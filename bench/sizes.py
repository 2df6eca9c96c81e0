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
    # 8. Crossed DAG: seconds of each slow step (the critical path).
    dag_slow: int
    # 9. I/O fan-out: this many agents waiting `io_wait` seconds each, and a join, on one
    # worker with a threads pool of `io_width` (raw Celery: the same pool, a chord).
    io_width: int
    io_wait: int
    # 10. Map: items of the list a map step goes over (raw Celery: a chord this wide).
    map_items: int
    # 11. LLM calls: this many openai agent calls that a local chat-completions server
    # answers after `llm_wait_ms`, and a join, on `llm_workers` worker processes with
    # threads pools of llm_calls / llm_workers (raw Celery: as many, a chord of requests).
    llm_calls: int
    llm_wait_ms: int
    llm_workers: int
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
    dag_slow=3,
    io_width=1000,
    io_wait=2,
    map_items=1000,
    llm_calls=1000,
    llm_wait_ms=1000,
    # One worker process per core of the 2-core host (a threads pool runs Python on one
    # core at a time): measured 5-6 s with two, 8-10 s with one.
    llm_workers=2,
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
    dag_slow=1,
    io_width=200,
    io_wait=1,
    map_items=100,
    llm_calls=20,
    llm_wait_ms=200,
    llm_workers=2,
    warmup=10,
)
