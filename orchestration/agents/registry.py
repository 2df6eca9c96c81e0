"""Build the adapter for an agent spec. Routing decisions live here and only here."""

from __future__ import annotations

from orchestration.agents.base import AgentAdapter
from orchestration.agents.python_callable import PythonCallableAgent
from orchestration.spec import AgentSpec


def build_adapter(spec: AgentSpec) -> AgentAdapter:
    if spec.kind == "python":
        return PythonCallableAgent(spec.target)
    raise NotImplementedError(f"agent kind {spec.kind!r}")  # pragma: no cover - spec forbids
