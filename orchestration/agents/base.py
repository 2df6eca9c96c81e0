"""The interface every agent kind implements."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Protocol, runtime_checkable

from orchestration.agents.call import AgentCall, AgentResult


class AgentAdapter(Protocol):
    def invoke(self, call: AgentCall) -> AgentResult:
        """Run one attempt. Raise to fail it; the caller classifies the error."""
        ...


@runtime_checkable
class StartsOnLoop(Protocol):
    """An agent whose calls can run as coroutines on the process's shared event loop
    (``event_loop.shared_loop``), waited for by the delegation's own thread: no thread
    of their own for each call."""

    def start_on_loop(self, call: AgentCall) -> Future[AgentResult] | None:
        """The attempt begun on the loop; None if this one runs through ``invoke``."""
        ...
