"""What an agent calls, as one string: the key of its circuit breaker and its health.

Two agents with the same identity call the same thing, whatever they are named and
whichever team declares them, so they share one breaker and one heartbeat; two agents
that share a name but call different things share nothing.

- ``python``: ``python:<module>:<callable>``
- ``http``: ``http:<url>``
- ``openai``: ``openai:<base_url>#<model>``

An agent with ``endpoints`` calls several things: each endpoint is an identity of its
own, with its own breaker, health and counts of calls in flight.
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
    """The identity of what ``spec`` calls (of its first endpoint, for an agent with
    several), at most MAX_LENGTH characters."""
    return endpoint_identities(spec)[0]


def endpoint_identities(spec: AgentSpec) -> tuple[str, ...]:
    """The identity of each thing ``spec`` may call, in the order of its endpoints."""
    match spec:
        case PythonAgentSpec():
            return (bounded(f"python:{spec.target}"),)
        case HttpAgentSpec():
            urls = [e.url for e in spec.endpoints] or [spec.call_url]
            return tuple(bounded(f"http:{url}") for url in urls)
        case OpenAIAgentSpec():
            pairs = [(e.base_url or spec.base_url, e.model or spec.model) for e in spec.endpoints]
            return tuple(
                bounded(f"openai:{base.rstrip('/')}#{model}")
                for base, model in pairs or [(spec.base_url, spec.model)]
            )


def limits_identity(spec: AgentSpec) -> str:
    """What the agent's own limits (``max_concurrency``, ``rate_limit`` beside its kind)
    count against: what it calls, or with ``endpoints``, all of them together (apart
    from each endpoint's own limits)."""
    identities = endpoint_identities(spec)
    if isinstance(spec, PythonAgentSpec) or not spec.endpoints:
        return identities[0]
    return bounded("endpoints:" + ",".join(sorted(identities)))


def bounded(identity: str) -> str:
    """``identity`` itself if it fits the key columns, else its head and a digest."""
    if len(identity) <= MAX_LENGTH:
        return identity
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    return f"{identity[: MAX_LENGTH - _DIGEST_CHARS - 1]}~{digest}"
