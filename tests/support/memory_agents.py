"""Agents that use their team's shared memory and messages, for tests. Plain
``def agent(call)``; team files name them as ``tests.support.memory_agents:<name>``."""

from __future__ import annotations

import threading
import time
from typing import Any

from orchestration.agents.call import AgentCall, AgentResult
from orchestration.errors import PermanentAgentError, TransientAgentError


def contributor(call: AgentCall) -> dict[str, Any]:
    """One of many parallel steps: reads the shared total first (a read the others'
    writes make stale), then writes a shared key under each rule and one of its own."""
    seen = call.shared.get("total", 0)
    pause = call.input.get("pause", 0) if isinstance(call.input, dict) else 0
    if pause:
        time.sleep(pause)
    call.shared.update("log", call.step_id)  # append
    call.shared.update("total", 1)  # sum
    call.shared.update("seen", {call.step_id: call.attempt})  # merge
    call.shared.set("last", call.step_id)  # last writer
    call.shared.set(f"own/{call.step_id}", call.attempt)
    return {"total_seen": seen, "total_now": call.shared.get("total")}


def writes_then_fails_once(call: AgentCall) -> dict[str, Any]:
    """Writes and sends on every attempt; the first attempt then fails."""
    call.shared.update("count", 1)
    call.shared.update("attempts", call.attempt)
    call.send("listener", f"from attempt {call.attempt}")
    call.broadcast({"attempt": call.attempt})
    if call.attempt == 1:
        raise TransientAgentError("the first attempt fails after writing")
    return {"attempt": call.attempt}


def sender(call: AgentCall) -> list[dict[str, Any]]:
    """Sends to ``listener`` and to everyone; returns its own inbox."""
    call.send("listener", {"hello": "listener", "from": call.step_id})
    call.broadcast("to everyone", type="note")
    return inbox(call)


def inbox(call: AgentCall) -> list[dict[str, Any]]:
    """What reached this agent: sender, recipient and content of each message."""
    return [
        {"sender": m.sender, "step": m.sender_step, "to": m.to, "content": m.content}
        for m in call.inbox
    ]


def reads_memory(call: AgentCall) -> dict[str, Any]:
    return call.shared.all()


def touches_nothing(call: AgentCall) -> str:
    return "quiet"


def returns_updates(call: AgentCall) -> AgentResult:
    """Writes through its result instead of call.shared."""
    return AgentResult(output="noted", context_updates={"notes": call.step_id, "total": 5})


# --- two parallel steps in one process (the embedded worker) meeting mid-call ----------

_signals: dict[str, threading.Event] = {}
_signals_lock = threading.Lock()


def _signal(name: str) -> threading.Event:
    with _signals_lock:
        return _signals.setdefault(name, threading.Event())


def _wait(name: str, seconds: float = 10.0) -> None:
    if not _signal(name).wait(seconds):
        raise PermanentAgentError(f"{name} did not happen within {seconds}s")


def stager(call: AgentCall) -> dict[str, Any]:
    """Stages a write, reads it back, lets ``peer`` look, waits until it has."""
    token = call.input["token"]
    call.shared.set("draft", "staged by stager")
    own = call.shared.get("draft")
    _signal(f"{token}:staged").set()
    _wait(f"{token}:looked")
    return {"own_read": own}


def peer(call: AgentCall) -> dict[str, Any]:
    """Looks at the memory while ``stager``'s write is staged but not applied."""
    token = call.input["token"]
    _wait(f"{token}:staged")
    try:
        return {"peer_read": call.shared.get("draft", "absent")}
    finally:
        _signal(f"{token}:looked").set()
