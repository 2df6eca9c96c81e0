"""Agents that report usage, for the usage and budget tests.

The execution input says what each call reports (``usage``) and where to note that
the call was made (``calls``: a file, one line per call), so a test can tell a refused
call from one that ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestration import AgentCall, AgentResult, Usage


def reports_usage(call: AgentCall) -> AgentResult:
    settings: dict[str, Any] = call.input
    with Path(settings["calls"]).open("a", encoding="utf-8") as log:
        log.write(f"{call.step_id}\n")
    return AgentResult(output=call.step_id, usage=Usage(**settings["usage"]))
