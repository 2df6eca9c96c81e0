"""An agent that leaves a trace of every call, for tests that count calls across runs.

Its input names a file each call appends its step id to (``calls``), and optionally a
file whose existence makes some steps fail (``broken``: the file, ``fail``: the steps).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from orchestration.errors import PermanentAgentError


def counted(call: Any) -> dict[str, Any]:
    """Returns a token of its own (new at every call) and the tokens of the upstream
    outputs it saw, so a test can tell a recorded output from a recomputed one."""
    with Path(call.input["calls"]).open("a", encoding="utf-8") as calls:
        calls.write(f"{call.step_id}\n")
    broken = call.input.get("broken")
    if broken and call.step_id in call.input.get("fail", ()) and Path(broken).exists():
        raise PermanentAgentError(f"{call.step_id} is broken until {broken} is removed")
    return {
        "step": call.step_id,
        "token": uuid.uuid4().hex,
        "saw": {
            step: output["token"]
            for step, output in call.outputs.items()
            if isinstance(output, dict) and "token" in output
        },
    }


def calls_of(path: Path) -> list[str]:
    """The step ids called, in order."""
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").split()


def gated(call: Any) -> str:
    """Waits until the file ``input["gate"]`` exists (at most 30 s), so a test decides
    when the step ends: after it has seen the step running."""
    gate = Path(call.input["gate"])
    deadline = time.monotonic() + 30
    while not gate.exists():
        if time.monotonic() > deadline:
            raise PermanentAgentError(f"{gate} never appeared")
        time.sleep(0.02)
    return "opened"
