"""What an agent calls, as one string: the key of its circuit breaker and its health.

Two agents with the same identity call the same thing, whatever they are named and
whichever team declares them, so they share one breaker and one heartbeat; two agents
that share a name but call different things share nothing.

- ``python``: ``python:<module>:<callable>``
- (kinds to come) ``http``: ``http:<url>``; ``openai``: ``openai:<base_url>#<model>``
"""

from __future__ import annotations

import hashlib

from orchestration.spec import AgentSpec

# The width of the columns that hold an identity (troupe_breakers.key,
# troupe_agents.identity, troupe_heartbeats.identity).
MAX_LENGTH = 200
# A longer identity keeps its head, readable, and ends in this many hex digits of the
# sha256 of the whole string, so two long identities sharing a head stay apart.
_DIGEST_CHARS = 32


def agent_identity(spec: AgentSpec) -> str:
    """The identity of what ``spec`` calls, at most MAX_LENGTH characters."""
    if spec.kind == "python":
        return bounded(f"python:{spec.target}")
    raise NotImplementedError(f"agent kind {spec.kind!r}")  # pragma: no cover - spec forbids


def bounded(identity: str) -> str:
    """``identity`` itself if it fits the key columns, else its head and a digest."""
    if len(identity) <= MAX_LENGTH:
        return identity
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    return f"{identity[: MAX_LENGTH - _DIGEST_CHARS - 1]}~{digest}"
