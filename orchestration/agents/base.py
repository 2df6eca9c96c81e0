"""The interface every agent kind implements."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from orchestration.agents.call import AgentCall, AgentResult


class AgentAdapter(Protocol):
    def invoke(self, call: AgentCall) -> AgentResult:
        """Run one attempt. Raise to fail it; the caller classifies the error."""
        ...


# An adapter may also define ``start_on_loop(call) -> Future[AgentResult] | None``: the
# attempt begun as a coroutine on the process's shared event loop
# (``event_loop.shared_loop``), waited for by the delegation's own thread, with no thread
# of its own; None if this one runs through ``invoke``. Looked up by name: a runtime
# protocol check cost 3 µs of every delegation.
StartOnLoop = Callable[[AgentCall], "Future[AgentResult] | None"]
