"""Agents and team files for the human-approval tests.

``record`` appends one line per call to the file its input names, so a test in another
process (a distributed worker's) can tell whether, when and how often a step's agent
was called.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

RECORD = "tests.support.approval_agents:record"


def record(call: Any) -> dict[str, Any]:
    """Appends "<step id> <epoch seconds>" to ``input["log"]``; returns the same."""
    at = time.time()
    with Path(call.input["log"]).open("a", encoding="utf-8") as log:
        log.write(f"{call.step_id} {at!r}\n")
    return {"step": call.step_id, "at": at}


def calls(log: Path) -> list[tuple[str, float]]:
    """The calls ``record`` logged, in order: (step id, when)."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text(encoding="utf-8").splitlines():
        step, at = line.split()
        found.append((step, float(at)))
    return found


def called(log: Path, step: str) -> int:
    return sum(1 for name, _ in calls(log) if name == step)


def team_yaml(steps: Iterable[Mapping[str, Any]], *, name: str = "approvals") -> str:
    """A dag team whose one agent is ``record``; a step without ``agent`` stays without
    one (an approval gate)."""
    return yaml.safe_dump(
        {
            "name": name,
            "agents": {
                "record": {
                    "kind": "python",
                    "target": RECORD,
                    "timeout": 20,
                    "retry": {"max_attempts": 1},
                }
            },
            "workflow": {"strategy": "dag", "steps": [dict(step) for step in steps]},
        },
        sort_keys=False,
    )
