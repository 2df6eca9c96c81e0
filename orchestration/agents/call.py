"""What an agent receives and what it gives back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AgentCall:
    """One attempt of one delegation, as the agent sees it.

    ``input`` is the execution's input (in a pipeline, the previous step's output);
    ``outputs`` maps every finished step this step may see to its output.
    """

    execution_id: str
    step_id: str
    agent: str
    task: str | None
    input: Any
    outputs: Mapping[str, Any]
    attempt: int


@dataclass(frozen=True)
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class AgentResult:
    """An agent may return this to report usage alongside its output."""

    output: Any
    usage: Usage = field(default_factory=Usage)
