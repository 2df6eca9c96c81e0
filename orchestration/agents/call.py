"""What an agent receives and what it gives back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _no_heartbeat(details: Any = None) -> None:
    return None


@dataclass(frozen=True)
class AgentCall:
    """One attempt of one delegation, as the agent sees it.

    ``input`` is the execution's input (in a pipeline, the previous step's output);
    ``outputs`` maps every finished step this step may see to its output, read from the
    database the first time the agent looks at it. In a map step, ``item`` is this
    call's item of the list and ``index`` its position (both None elsewhere).
    """

    execution_id: str
    step_id: str
    agent: str
    task: str | None
    input: Any
    outputs: Mapping[str, Any]
    attempt: int
    item: Any = None
    index: int | None = None
    _heartbeat: Callable[[Any], None] = field(default=_no_heartbeat, repr=False, compare=False)

    def heartbeat(self, details: Any = None) -> None:
        """Report progress from a long-running agent (JSON details, optional).

        Keeps a step with ``heartbeat_timeout`` alive and renews the attempt's lease.
        """
        self._heartbeat(details)


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
