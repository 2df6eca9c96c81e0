"""Spawned processes released together: a pool's initializer keeps the shared barrier, and
each round's function waits on it, so the database, not process start-up, sees the race."""

from __future__ import annotations

from typing import Any

_barrier: Any = None


def pool_init(barrier: Any) -> None:
    """Pool initializer: remember the shared barrier that starts every round together."""
    global _barrier
    _barrier = barrier


def all_together() -> None:
    _barrier.wait(60)
