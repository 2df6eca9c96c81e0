"""Build the adapter for an agent spec. Routing decisions live here and only here."""

from __future__ import annotations

from orchestration.agents.base import AgentAdapter
from orchestration.agents.python_callable import PythonCallableAgent
from orchestration.spec import AgentSpec, HttpAgentSpec, OpenAIAgentSpec, PythonAgentSpec


def build_adapter(spec: AgentSpec) -> AgentAdapter:
    match spec:
        case PythonAgentSpec():
            return PythonCallableAgent(spec.target)
        case HttpAgentSpec():
            from orchestration.agents.http_service import HttpServiceAgent

            return HttpServiceAgent(spec)
        case OpenAIAgentSpec():
            from orchestration.agents.openai_chat import OpenAIChatAgent

            return OpenAIChatAgent(spec)
