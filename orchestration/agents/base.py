"""The interface every agent kind implements."""

from __future__ import annotations

from typing import Protocol

from orchestration.agents.call import AgentCall, AgentResult


class AgentAdapter(Protocol):
    def invoke(self, call: AgentCall) -> AgentResult:
        """Run one attempt. Raise to fail it; the caller classifies the error."""
        ...
