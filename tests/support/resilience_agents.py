"""Agents, health checks and process helpers for the resilience tests.

Every agent here records each call it receives as one line in ``<dir>/<agent>.calls``,
where ``dir`` comes from the execution input (``{"dir": ..., ...}``) and ``agent`` is the
name the agent was called under (a fallback records under its own name). A test can then
check "the agent was not called" by counting lines instead of trusting the orchestrator.

Health checks take no argument, so they read their flag files from the directory named by
the ``RESILIENCE_TEST_HEALTH_DIR`` environment variable.

The ``pool_*`` functions run inside spawned processes for the breaker-store CAS tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from orchestration.errors import PermanentAgentError, TransientAgentError
from tests.support.barrier_pool import all_together

HEALTH_DIR_VARIABLE = "RESILIENCE_TEST_HEALTH_DIR"


def __getattr__(name: str) -> Any:
    """``<agent>__<tag>`` is the agent ``<agent>`` under a target of its own. Breakers
    belong to targets, so a test that wants a breaker nobody else shares calls e.g.
    ``tests.support.resilience_agents:fail__3f2a``."""
    base, tagged, _ = name.partition("__")
    function = globals().get(base) if tagged and base else None
    if callable(function):
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- call counting -------------------------------------------------------------------------


def _dir(call: Any) -> Path:
    value = call.input
    if not isinstance(value, dict) or "dir" not in value:
        raise PermanentAgentError("resilience agents need an input mapping with 'dir'")
    return Path(value["dir"])


def _record(call: Any) -> dict[str, Any]:
    """Append one line for this call; return the input's parameters."""
    entry = {"step": call.step_id, "attempt": call.attempt, "at": time.time()}
    with (_dir(call) / f"{call.agent}.calls").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    return dict(call.input)


def calls(directory: Path | str, agent: str) -> list[dict[str, Any]]:
    """Every recorded call of ``agent`` under ``directory``, oldest first."""
    path = Path(directory) / f"{agent}.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def call_count(directory: Path | str, agent: str) -> int:
    return len(calls(directory, agent))


# --- agents --------------------------------------------------------------------------------


class QuotaExhausted(PermanentAgentError):
    """A permanent agent error a policy may choose to retry (``retry_on``)."""


def ok(call: Any) -> dict[str, Any]:
    """Succeeds and says who answered."""
    _record(call)
    return {"answered_by": call.agent, "step": call.step_id, "attempt": call.attempt}


def fail(call: Any) -> None:
    """Fails with an unexpected (so transient) error, every time."""
    _record(call)
    raise RuntimeError(f"{call.agent} is down (attempt {call.attempt})")


def fail_permanent(call: Any) -> None:
    _record(call)
    raise PermanentAgentError(f"{call.agent} rejects this request")


def raise_value_error(call: Any) -> None:
    _record(call)
    raise ValueError(f"{call.agent} got a bad value")


def fail_until_flag(call: Any) -> dict[str, Any]:
    """Fails while ``<dir>/<agent>.healthy`` does not exist, then succeeds."""
    _record(call)
    if not (_dir(call) / f"{call.agent}.healthy").exists():
        raise RuntimeError(f"{call.agent} is not healthy yet")
    return {"answered_by": call.agent, "attempt": call.attempt}


def busy_with_retry_after(call: Any) -> dict[str, Any]:
    """Asks to be retried after ``retry_after`` seconds until attempt ``succeed_on``."""
    params = _record(call)
    if call.attempt < int(params.get("succeed_on", 3)):
        raise TransientAgentError("busy, come back later", retry_after=params["retry_after"])
    return {"attempt": call.attempt}


def hang(call: Any) -> dict[str, Any]:
    """Sleeps far beyond any test time limit (``hang`` seconds)."""
    params = _record(call)
    time.sleep(float(params.get("hang", 5.0)))
    return {"woke": True}


def slow(call: Any) -> dict[str, Any]:
    """Sleeps ``sleep`` seconds, then succeeds."""
    params = _record(call)
    time.sleep(float(params.get("sleep", 0.3)))
    return {"slept": params.get("sleep", 0.3), "step": call.step_id}


def stops_its_execution(call: Any) -> dict[str, Any]:
    """Stops its own execution as a user would (``cancel()``), then succeeds: the stop
    lands while this call runs, well before its start marker is due."""
    from orchestration import execution

    _record(call)
    assert execution(call.execution_id).cancel("stopped mid-call") is True
    return {"finished": call.step_id}


def heartbeating(call: Any) -> dict[str, Any]:
    """Works for ``work`` seconds, calling heartbeat every ``every`` seconds."""
    params = _record(call)
    work, every = float(params["work"]), float(params["every"])
    started = time.monotonic()
    beats = 0
    while time.monotonic() - started < work:
        beats += 1
        call.heartbeat({"beat": beats})
        time.sleep(every)
    return {"beats": beats}


def goes_silent(call: Any) -> dict[str, Any]:
    """Heart-beats for ``beat_for`` seconds, then works ``silent_for`` seconds silently."""
    params = _record(call)
    started = time.monotonic()
    while time.monotonic() - started < float(params["beat_for"]):
        call.heartbeat({"alive": True})
        time.sleep(0.05)
    time.sleep(float(params["silent_for"]))
    return {"finished": True}


# --- health checks ---------------------------------------------------------------------------


def _flag_probe(name: str) -> bool | None:
    """``<health dir>/<name>.down`` → unhealthy (returns False); ``<name>.raise`` → raises;
    ``<name>.slow`` holds seconds to sleep first; otherwise healthy (returns None)."""
    directory = Path(os.environ[HEALTH_DIR_VARIABLE])
    slow_file = directory / f"{name}.slow"
    if slow_file.exists():
        time.sleep(float(slow_file.read_text()))
    if (directory / f"{name}.raise").exists():
        raise ConnectionError(f"{name} health endpoint refused the connection")
    if (directory / f"{name}.down").exists():
        return False
    return None  # None means healthy


def probe_one() -> bool | None:
    return _flag_probe("one")


def probe_two() -> bool | None:
    return _flag_probe("two")


def probe_three() -> bool | None:
    return _flag_probe("three")


# --- spawned processes for the breaker-store CAS tests ---------------------------------------

_stores: dict[str, Any] = {}


def _breakers(url: str) -> Any:
    from orchestration.store.breakers import BreakerStore
    from orchestration.store.repository import Store

    if url not in _stores:
        _stores[url] = BreakerStore(Store(url))
    return _stores[url]


def pool_warm(url: str) -> int:
    """Open this process's engine before the timed round (and wait for the others)."""
    _breakers(url).get("warm-up")
    all_together()
    return os.getpid()


def pool_admit(url: str, key: str, policy: dict[str, Any]) -> tuple[int, bool, bool]:
    """Wait for every process, then ask the breaker for admission: (pid, allowed, trial)."""
    from orchestration.spec import BreakerPolicy

    breakers = _breakers(url)
    parsed = BreakerPolicy.model_validate(policy)
    all_together()
    admission = breakers.admit(key, parsed)
    return os.getpid(), admission.allowed, admission.trial


def pool_record_failure(url: str, key: str, policy: dict[str, Any]) -> tuple[int, str]:
    """Wait for every process, then record one failed call: (pid, resulting state)."""
    from orchestration.spec import BreakerPolicy

    breakers = _breakers(url)
    parsed = BreakerPolicy.model_validate(policy)
    all_together()
    state = breakers.record_call(key, parsed, failed=True, trial=False, error="boom")
    return os.getpid(), state
