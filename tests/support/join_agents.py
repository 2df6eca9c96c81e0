"""Agents for join tests: each voter does what the execution's input scripts for its
step, so one team file covers agreement, dissent, failures and parents that hang.

The input maps step id → script: ``{"output": value}`` returns it; ``{"fail": text}``
fails for good; ``{"sleep": s}`` sleeps first; ``{"wait_for": path}`` waits (at most
``WAIT_LIMIT`` seconds) until that file exists, so a test decides when a hanging parent
ends, and then returns ``{"late": step id}`` unless an output is scripted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestration.errors import PermanentAgentError

WAIT_LIMIT = 60.0


def voter(call: Any) -> Any:
    script = (call.input or {}).get(call.step_id, {})
    if "sleep" in script:
        time.sleep(float(script["sleep"]))
    if "wait_for" in script:
        gate = Path(script["wait_for"])
        give_up = time.monotonic() + WAIT_LIMIT
        while not gate.exists() and time.monotonic() < give_up:
            time.sleep(0.02)
        return script.get("output", {"late": call.step_id})
    if "fail" in script:
        raise PermanentAgentError(str(script["fail"]))
    return script.get("output")


def judge(call: Any) -> dict[str, Any]:
    """A reducer: the parents it was shown, how many conflicts, what it could read in
    ``call.outputs``, and the largest score among the outputs."""
    parents = call.input["parents"]
    scores = [p["output"]["score"] for p in parents if p["status"] == "completed"]
    return {
        "shown": [(p["step"], p["status"]) for p in parents],
        "conflicts": len(call.input["conflicts"]),
        "outputs": sorted(call.outputs),
        "score": max(scores),
    }
