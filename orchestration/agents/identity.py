"""What an agent calls, as one string: the key of its circuit breaker and its health.

Two agents with the same identity call the same thing, whatever they are named and
whichever team declares them, so they share one breaker and one heartbeat; two agents
that share a name but call different things share nothing.

- ``python``: ``python:<module>:<callable>``
- ``http``: ``http:<url>``
- ``openai``: ``openai:<base_url>#<model>``
"""

from __future__ import annotations

import hashlib

from orchestration.spec import AgentSpec, HttpAgentSpec, OpenAIAgentSpec, PythonAgentSpec

# The width of the columns that hold an identity (troupe_breakers.key,
# troupe_agents.identity, troupe_heartbeats.identity).
MAX_LENGTH = 200
# A longer identity keeps its head, readable, and ends in this many hex digits of the
# sha256 of the whole string, so two long identities sharing a head stay apart.
_DIGEST_CHARS = 32


def agent_identity(spec: AgentSpec) -> str:
    """The identity of what ``spec`` calls, at most MAX_LENGTH characters."""
    match spec:
        case PythonAgentSpec():
            return bounded(f"python:{spec.target}")
        case HttpAgentSpec():
            return bounded(f"http:{spec.url}")
        case OpenAIAgentSpec():
            return bounded(f"openai:{spec.base_url.rstrip('/')}#{spec.model}")


def bounded(identity: str) -> str:
    """``identity`` itself if it fits the key columns, else its head and a digest."""
    if len(identity) <= MAX_LENGTH:
        return identity
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    return f"{identity[: MAX_LENGTH - _DIGEST_CHARS - 1]}~{digest}"
