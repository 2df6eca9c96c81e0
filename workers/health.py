"""The beat heartbeat: probe each identity (what registered agents call) once, record it,
and feed that identity's breaker (consecutive failed probes open it; a healthy probe after
the cool-down half-opens it).

Agents of several teams that call the same thing share one probe. When they declare
different health checks or breaker policies, the first of them by team and name that has
a health check is the one used. Each endpoint of an agent is an identity of its own,
probed at its own ``health_url``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from orchestration.agents.python_callable import load_target
from orchestration.errors import AttemptTimeout
from orchestration.limits.plan import capacity_of
from orchestration.resilience.time_limit import call_with_time_limit
from orchestration.spec import AgentSpec, HealthCheck, parse_agent
from orchestration.store.agent_registry import AgentRegistry, by_identity
from orchestration.store.breakers import BreakerStore
from orchestration.store.repository import Store


@dataclass(frozen=True)
class ProbeResult:
    identity: str
    healthy: bool
    latency_ms: int
    detail: str | None
    breaker: str


def probe(check: HealthCheck) -> tuple[bool, str | None]:
    try:
        if check.url is not None:
            response = httpx.get(check.url, timeout=check.timeout)
            healthy = response.is_success
            return healthy, None if healthy else f"HTTP {response.status_code}"
        assert check.target is not None
        function = load_target(check.target)
        verdict = call_with_time_limit(function, check.timeout)
        # A probe says unhealthy by returning False (or raising); None means fine.
        if verdict is False:
            return False, "probe returned false"
        return True, None
    except AttemptTimeout:
        return False, f"probe timed out after {check.timeout:g}s"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"[:500]


def run_heartbeat(store: Store, breakers: BreakerStore) -> list[ProbeResult]:
    registry = AgentRegistry(store)
    probed = []
    for identity, rows in by_identity(registry.agents()).items():
        for row in rows:
            spec = _calling(parse_agent(row.spec), identity)
            if spec.probe is not None:
                probed.append((identity, spec))
                break
    if not probed:
        return []

    def one(item: tuple[str, AgentSpec]) -> ProbeResult:
        identity, spec = item
        check = spec.probe
        assert check is not None
        started = time.perf_counter()
        healthy, detail = probe(check)
        latency = int((time.perf_counter() - started) * 1000)
        registry.record_heartbeat(identity, healthy, latency, detail)
        state = breakers.record_probe(
            identity,
            spec.breaker,
            healthy=healthy,
            failures_to_open=check.failures_to_open,
            detail=detail,
        )
        return ProbeResult(identity, healthy, latency, detail, state)

    with ThreadPoolExecutor(max_workers=min(8, len(probed))) as pool:
        return list(pool.map(one, probed))


def _calling(spec: AgentSpec, identity: str) -> AgentSpec:
    """The agent as it calls ``identity`` (one of its endpoints: its own health_url)."""
    for endpoint in capacity_of(spec).endpoints:
        if endpoint.identity == identity:
            return endpoint.spec
    return spec
