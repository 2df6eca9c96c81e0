"""Steps added to a running execution, and the plan step each one runs as.

A step added at run time is named after the step that added it, so its id alone says
what it is, and the plan step it belongs to is found without a database read:

- ``review[3]``: item 3 of map step ``review``;
- ``draft~to~copywriting``: the handoff of step ``draft`` to agent ``copywriting``;
- ``draft~ask~critic~1a2b3c4d``: a question step ``draft`` asked agent ``critic`` (the
  digest is of the question and how many times the same one was asked before).

They nest: ``review[3]~to~critic~ask~legal~0f0f0f0f``. Agent names cannot hold ``~``,
so the last marker in an id is the one that added it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from workflows.plan import ExecutionPlan, PlannedStep

_AGENT = r"[A-Za-z_][A-Za-z0-9_.-]*"
_ASK = re.compile(rf"^(?P<parent>.+)~ask~(?P<agent>{_AGENT})~(?P<digest>[0-9a-f]{{8}})$")
_HANDOFF = re.compile(rf"^(?P<parent>.+)~to~(?P<agent>{_AGENT})$")


class Added(StrEnum):
    ITEM = "item"
    HANDOFF = "handoff"
    ASK = "ask"


@dataclass(frozen=True)
class Origin:
    """What added a run-time step: its parent step, how, and (handoff, ask) to whom."""

    parent: str
    kind: Added
    agent: str | None = None


def origin_of(step_id: str) -> Origin | None:
    """None for a plan step."""
    if step_id.endswith("]"):
        return Origin(step_id.rsplit("[", 1)[0], Added.ITEM)
    found = _ASK.match(step_id)
    if found is not None:
        return Origin(found["parent"], Added.ASK, found["agent"])
    found = _HANDOFF.match(step_id)
    if found is not None:
        return Origin(found["parent"], Added.HANDOFF, found["agent"])
    return None


def plan_step_of(step_id: str) -> str:
    """The plan step a step belongs to, through every run-time step that added it."""
    while (origin := origin_of(step_id)) is not None:
        step_id = origin.parent
    return step_id


def planned_for(plan: ExecutionPlan, step_id: str) -> PlannedStep:
    """The plan step ``step_id`` runs as. A map item runs as its map step; a handoff or
    an ask runs as the step that added it, with the target agent, outside the plan's
    conditions, map and join (its task and input come from its own row)."""
    origin = origin_of(step_id)
    if origin is None:
        return plan.step(step_id)
    parent = planned_for(plan, origin.parent)
    if origin.kind is Added.ITEM:
        return parent
    assert origin.agent is not None
    return replace(
        parent,
        agent=origin.agent,
        when=None,
        map=None,
        join=None,
        input_from=None,
        deadline=None,
        heartbeat_timeout=None,
    )


def handoff_id(step_id: str, agent: str) -> str:
    return f"{step_id}~to~{agent}"


def ask_id(step_id: str, agent: str, question: Any, occurrence: int) -> str:
    """The same question to the same agent from the same step gets the same id, so a
    retried asker finds the answer it asked for; asking again in one attempt
    (``occurrence`` 1, 2, …) is a new question."""
    text = json.dumps([agent, question, occurrence], sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{step_id}~ask~{agent}~{digest}"


def handoff_path(step_id: str, first_agent: str) -> list[str]:
    """The agents a chain of handoffs went through, from the plan step's own agent."""
    path: list[str] = []
    current = step_id
    while (origin := origin_of(current)) is not None and origin.kind is Added.HANDOFF:
        assert origin.agent is not None
        path.append(origin.agent)
        current = origin.parent
    return [first_agent, *reversed(path)]
