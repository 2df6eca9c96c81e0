"""An agent spec's endpoints and limits as the limiter counts them, worked out once per
spec (a worker keeps a team's specs for as long as it keeps the team)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from orchestration.agents.identity import endpoint_identities, limits_identity
from orchestration.capacity import RateLimit, Routing
from orchestration.spec import AgentSpec, HttpAgentSpec, OpenAIAgentSpec, PythonAgentSpec

MS_PER_MINUTE = 60_000.0


@dataclass(frozen=True)
class Endpoint:
    index: int
    identity: str
    # The agent as it calls this endpoint (url, base_url and model set).
    spec: AgentSpec
    # Where the call goes, as an attempt records it (None: a python callable).
    address: str | None
    weight: float
    max_concurrency: int
    ms_per_request: float
    ms_per_token: float


@dataclass(frozen=True)
class AgentCapacity:
    endpoints: tuple[Endpoint, ...]
    routing: Routing
    # What the agent's own limits count against.
    group: str
    max_concurrency: int
    ms_per_request: float
    ms_per_token: float
    # Tokens a call holds from a tokens_per_minute limit until it settles.
    reserve_tokens: int
    # Anything to ask the limiter about (endpoints to route among, or limits)?
    limited: bool


def _rates(limit: RateLimit | None) -> tuple[float, float]:
    if limit is None:
        return 0.0, 0.0
    rpm, tpm = limit.requests_per_minute, limit.tokens_per_minute
    return (MS_PER_MINUTE / rpm if rpm else 0.0), (MS_PER_MINUTE / tpm if tpm else 0.0)


def _endpoints(spec: AgentSpec) -> tuple[Endpoint, ...]:
    identities = endpoint_identities(spec)
    if isinstance(spec, PythonAgentSpec) or not spec.endpoints:
        address = None
        if isinstance(spec, HttpAgentSpec):
            address = spec.call_url
        elif isinstance(spec, OpenAIAgentSpec):
            address = spec.base_url
        return (Endpoint(0, identities[0], spec, address, 1.0, 0, 0.0, 0.0),)
    found = []
    for i, (endpoint, identity) in enumerate(zip(spec.endpoints, identities, strict=True)):
        at = spec.at(endpoint)  # type: ignore[arg-type]
        address = at.call_url if isinstance(at, HttpAgentSpec) else at.base_url
        per_request, per_token = _rates(endpoint.rate_limit)
        found.append(
            Endpoint(
                index=i,
                identity=identity,
                spec=at,
                address=address,
                weight=endpoint.weight,
                max_concurrency=endpoint.max_concurrency or 0,
                ms_per_request=per_request,
                ms_per_token=per_token,
            )
        )
    return tuple(found)


def capacity_of(spec: AgentSpec) -> AgentCapacity:
    """Cached per spec object (specs are frozen)."""
    key = id(spec)
    with _lock:
        cached = _plans.get(key)
        if cached is not None and cached[0] is spec:
            return cached[1]
    endpoints = _endpoints(spec)
    per_request, per_token = _rates(spec.rate_limit)
    reserve = 0
    if isinstance(spec, OpenAIAgentSpec) and spec.max_tokens is not None:
        reserve = spec.max_tokens
    limited = (
        len(endpoints) > 1
        or bool(getattr(spec, "endpoints", ()))
        or spec.max_concurrency is not None
        or spec.rate_limit is not None
    )
    plan = AgentCapacity(
        endpoints=endpoints,
        routing=getattr(spec, "routing", Routing.LEAST_IN_FLIGHT),
        group=limits_identity(spec),
        max_concurrency=spec.max_concurrency or 0,
        ms_per_request=per_request,
        ms_per_token=per_token,
        reserve_tokens=reserve,
        limited=limited,
    )
    with _lock:
        _plans[key] = (spec, plan)
        if len(_plans) > _PLANS_KEPT:
            _plans.popitem(last=False)
    return plan


_PLANS_KEPT = 4096
_plans: OrderedDict[int, tuple[AgentSpec, AgentCapacity]] = OrderedDict()
_lock = threading.Lock()
