"""Driving the raw Celery baseline from the benchmark process.

Import only after ``BenchEnv.export()``: ``bench.raw_app`` reads its broker and queue
from the environment at import.
"""

from __future__ import annotations

import time

from celery import chain, chord, group


class RawClient:
    def __init__(self) -> None:
        from bench.raw_app import app, join, noop, pause

        self.app = app
        self.noop = noop
        self.join = join
        self.pause = pause

    def tasks(self, count: int, *, timeout: float) -> float:
        """Seconds to run ``count`` independent no-op tasks and collect every result."""
        started = time.perf_counter()
        result = group(self.noop.si() for _ in range(count)).apply_async()
        result.join_native(timeout=timeout, propagate=True)
        return time.perf_counter() - started

    def chord(self, width: int, *, timeout: float) -> float:
        """Seconds for a chord of ``width`` no-op tasks and a join."""
        started = time.perf_counter()
        result = chord(group(self.noop.si() for _ in range(width)), self.join.s()).apply_async()
        # propagate=False: with it, every message that arrives makes get() walk all of the
        # header's results for a parent error, which at 10,000 members kept the client at
        # 100% CPU for minutes after the chord had finished. The join's value is checked.
        joined = result.get(timeout=timeout, propagate=False)
        elapsed = time.perf_counter() - started
        assert joined == width, joined
        return elapsed

    def pause_chord(self, width: int, seconds: float, *, timeout: float) -> float:
        """Seconds for a chord of ``width`` tasks that each sleep ``seconds``, and a join."""
        started = time.perf_counter()
        header = group(self.pause.si(seconds) for _ in range(width))
        joined = chord(header, self.join.s()).apply_async().get(timeout=timeout, propagate=False)
        elapsed = time.perf_counter() - started
        assert joined == width, joined
        return elapsed

    def chain(self, depth: int, *, timeout: float) -> float:
        """Seconds for a chain of ``depth`` no-op tasks."""
        started = time.perf_counter()
        chain(*(self.noop.si() for _ in range(depth))).apply_async().get(timeout=timeout)
        return time.perf_counter() - started

    def round_trips(self, count: int, *, timeout: float) -> list[float]:
        """Milliseconds of each of ``count`` sequential ``delay().get()``."""
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            self.noop.delay().get(timeout=timeout)
            samples.append((time.perf_counter() - started) * 1000)
        return samples
