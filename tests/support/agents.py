"""Small deterministic agents for tests. Each is a plain ``def agent(call)``.

Team files name them as ``tests.support.agents:<name>``; the project root is importable in
the test process, in ``manage.py`` subprocesses and in worker processes alike.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestration.errors import PermanentAgentError, TransientAgentError

# Used by tests.support.teams to give every agent a target.
AGENT_NAMES = (
    "echo",
    "add_one",
    "fail_always",
    "fail_permanent",
    "flaky_until_third",
    "sleepy",
    "sleep_then_mark",
    "count_issues",
    "noop",
    "timed",
    "async_timed",
    "split",
    "per_item",
    "exits",
    "async_exits",
    "interrupts",
    "kills_its_process",
)


def echo(call: Any) -> dict[str, Any]:
    """Returns what it saw, so a test can assert the context each step was given."""
    return {
        "step_id": call.step_id,
        "input": call.input,
        "outputs": sorted(call.outputs),
        "task": call.task,
        "attempt": call.attempt,
    }


def add_one(call: Any) -> int | float:
    """The input number plus one: a pipeline of these counts up."""
    value = call.input
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermanentAgentError(f"add_one needs a number, got {value!r}")
    return value + 1


def fail_always(call: Any) -> None:
    raise RuntimeError(f"{call.step_id} always fails (attempt {call.attempt})")


def fail_permanent(call: Any) -> None:
    raise PermanentAgentError(f"{call.step_id} cannot succeed")


def flaky_until_third(call: Any) -> dict[str, int]:
    """Fails with a transient error on attempts 1 and 2, succeeds on the third."""
    if call.attempt < 3:
        raise TransientAgentError(f"{call.step_id} not yet (attempt {call.attempt})")
    return {"attempt": call.attempt}


def sleepy(call: Any) -> dict[str, float]:
    """Sleeps for the input (seconds) when it is a number, else 0.05 s."""
    value = call.input
    seconds = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.05
    )
    time.sleep(seconds)
    return {"slept": seconds}


def sleep_then_mark(call: Any) -> str:
    """Sleeps ``input["seconds"]``, then creates the file ``input["mark"]``: whether the
    file exists tells whether the call ran to its end."""
    time.sleep(float(call.input["seconds"]))
    Path(call.input["mark"]).touch()
    return "marked"


def count_issues(call: Any) -> dict[str, int]:
    """``{"issues": n}``: n is the input when it is a number; for a mapping input, the
    value under this step's id, else under "issues", else 0."""
    value = call.input
    if isinstance(value, dict):
        value = value.get(call.step_id, value.get("issues", 0))
    if isinstance(value, bool) or not isinstance(value, int):
        value = 0
    return {"issues": value}


def noop(call: Any) -> None:
    return None


def timed(call: Any) -> dict[str, Any]:
    """Sleeps the number of seconds its task says ("0.5"; none: 0) and reports when it
    started and ended (epoch seconds), so a test can assert what ran when."""
    started = time.time()
    time.sleep(float(call.task or 0))
    return {"step": call.step_id, "started": started, "ended": time.time()}


async def async_timed(call: Any) -> dict[str, Any]:
    """``timed``, as a coroutine: waits on the event loop, holding no thread."""
    started = time.time()
    await asyncio.sleep(float(call.task or 0))
    return {"step": call.step_id, "started": started, "ended": time.time()}


def split(call: Any) -> dict[str, Any]:
    """``{"files": input}`` for a list input (a map step's list), else ``{"files": []}``."""
    return {"files": call.input if isinstance(call.input, list) else []}


def per_item(call: Any) -> dict[str, Any]:
    """A map item's work: its item and index. The item "bad" fails it for good; a
    mapping item with "sleep" sleeps that long first."""
    if call.item == "bad":
        raise PermanentAgentError(f"cannot handle item {call.index}")
    if isinstance(call.item, dict) and "sleep" in call.item:
        time.sleep(float(call.item["sleep"]))
    return {"item": call.item, "index": call.index, "attempt": call.attempt}


def exits(call: Any) -> None:
    """Calls sys.exit, as a script's main function might."""
    sys.exit(3)


async def async_exits(call: Any) -> None:
    """Calls sys.exit from a coroutine, on the loop every async agent shares."""
    await asyncio.sleep(0)
    sys.exit(3)


def interrupts(call: Any) -> None:
    raise KeyboardInterrupt


def kills_its_process(call: Any) -> None:
    """Ends its process at once, as a crash in native code would."""
    os._exit(1)
