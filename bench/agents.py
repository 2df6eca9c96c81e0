"""Agents for the benchmarks. Team files name them as ``bench.agents:<name>``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


def noop(call: Any) -> None:
    """Does nothing: what is measured is the delegation around it."""
    return None


def switchable(call: Any) -> str:
    """Up or down by a file flag: fails while the file ``input["down"]`` exists.

    Every call appends one byte to ``input["calls"]`` (when given), so a benchmark can
    tell that a rejected dispatch never reached the agent.
    """
    spec = call.input or {}
    calls = spec.get("calls")
    if calls:
        with open(calls, "ab") as handle:
            handle.write(b".")
    if os.path.exists(spec["down"]):
        raise RuntimeError("agent down (flag file present)")
    return "up"


def sleepy(call: Any) -> dict[str, Any]:
    """Sleeps ``input["seconds"]`` (renewing its lease through call.heartbeat)."""
    seconds = float((call.input or {}).get("seconds", 3.0))
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(left, 0.5))
        call.heartbeat({"left": round(max(0.0, left - 0.5), 1)})
    return {"slept": seconds, "pid": os.getpid(), "attempt": call.attempt}


def wait(call: Any) -> None:
    """Blocks for ``input["seconds"]`` in time.sleep: a stand-in for an agent waiting on
    an LLM or a remote service (I/O-bound, the CPU idle), holding its thread."""
    time.sleep(float((call.input or {}).get("seconds", 0)))


async def async_wait(call: Any) -> None:
    """``wait`` as a coroutine: awaits asyncio.sleep instead of blocking a thread."""
    await asyncio.sleep(float((call.input or {}).get("seconds", 0)))


def items(call: Any) -> dict[str, list[int]]:
    """``{"items": [0, 1, ... input["items"] - 1]}``: the list a map step goes over."""
    return {"items": list(range(int((call.input or {}).get("items", 0))))}


def __getattr__(name: str) -> Any:
    """``switchable__<tag>`` is ``switchable`` under a target of its own (its own breaker)."""
    base, tagged, _ = name.partition("__")
    function = globals().get(base) if tagged and base else None
    if callable(function):
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
