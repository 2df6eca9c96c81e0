"""Endpoints and limits on the embedded runtime, with no Redis: counted in the process.

Agents record their calls (tests.support.resilience_agents) and endpoints are local HTTP
services that record their requests, so what was called, where and when is counted.
"""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import Team
from orchestration.client.report import ExecutionReport
from orchestration.spec import parse_agent
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.breakers import BreakerStore
from orchestration.store.database import ensure_schema
from orchestration.store.repository import Store
from tests.support.agent_service import HEALTH_PATH, AgentService, Reply, output
from tests.support.faults import wait_for
from tests.support.resilience_agents import calls
from workers.health import run_heartbeat

pytestmark = pytest.mark.timeout(60)

FAST = {"max_attempts": 3, "initial_delay": 0.01, "max_delay": 0.05, "jitter": "none"}


def team(agents: dict[str, Any], steps: list[dict[str, Any]], **extra: Any) -> Team:
    data = {
        "name": f"limits-{uuid.uuid4().hex[:8]}",
        **extra,
        "agents": agents,
        "workflow": {"strategy": "parallel", "steps": steps},
    }
    return Team.from_yaml(yaml.safe_dump(data, sort_keys=False), source="limits.yaml")


def test_max_concurrency_holds_calls_apart_and_status_says_they_wait(tmp_path: Path) -> None:
    target = f"tests.support.resilience_agents:slow__{uuid.uuid4().hex[:8]}"
    limited = team(
        {"slow": {"target": target, "max_concurrency": 1, "retry": FAST}},
        [{"id": f"s{i}", "agent": "slow"} for i in range(3)],
    )
    handle = limited.enqueue({"dir": str(tmp_path), "sleep": 0.3})
    # While one call runs, the others wait for capacity, and say so.
    waiting = wait_for(
        lambda: [
            reason
            for reason in handle.report().reasons.values()
            if reason.startswith("waiting for capacity")
        ],
        10,
        "a step waiting for capacity",
        interval=0.02,
    )
    assert "calls in flight" in waiting[0]
    report = handle.wait(30)
    assert report.status == "completed", report
    starts = sorted(call["at"] for call in calls(tmp_path, "slow"))
    assert len(starts) == 3
    # One at a time: each started once the one before had run its 0.3 s.
    assert all(later - earlier >= 0.28 for earlier, later in itertools.pairwise(starts))


def http(urls: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "endpoints": [{"url": url} for url in urls],
        "timeout": 5,
        "retry": FAST,
        **fields,
    }


def endpoint_of(runtime: Any, report: ExecutionReport) -> list[tuple[str, str | None, Any]]:
    rows = runtime.executions.attempts(report.execution_id)
    return [(row.step_id, row.outcome, (row.usage or {}).get("endpoint")) for row in rows]


def test_calls_are_shared_among_endpoints_and_a_failed_attempt_goes_elsewhere(
    runtime: Any,
) -> None:
    with AgentService() as first, AgentService() as second:
        a = first.script("/agent", output("a"))
        b = second.script("/agent", Reply(503, body="overloaded"), output("b"))
        shared = team(
            {"remote": http([a, b])},
            [{"id": f"s{i}", "agent": "remote"} for i in range(6)],
        )
        report = shared.run(None, timeout=30)
        assert report.status == "completed", report
        attempts = endpoint_of(runtime, report)
        # Least in flight, ties taking turns: both endpoints were called.
        assert {endpoint for _, _, endpoint in attempts} == {a, b}
        # The one 503 is recorded with where it went, and its step's next attempt
        # went to the other endpoint.
        failed = [(step, endpoint) for step, outcome, endpoint in attempts if outcome == "error"]
        assert failed == [(failed[0][0], b)]
        retried = [e for step, o, e in attempts if step == failed[0][0] and o == "success"]
        assert retried == [a]
        # A failure reports no usage: the step's usage stays unknown, not zero.
        assert next(s for s in report.steps if s.id == failed[0][0]).usage is None


def test_the_heartbeat_probes_each_endpoint_at_its_own_health_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ensure_schema(url, auto_upgrade=True)
    store = Store(url)
    with AgentService() as up, AgentService() as down:
        down.healthy = False
        endpoints = [
            {"url": up.url("/agent"), "health_url": up.url(HEALTH_PATH)},
            {"url": down.url("/agent"), "health_url": down.url(HEALTH_PATH)},
            {"url": f"{up.base_url}/unprobed"},
        ]
        agent = parse_agent({**http([]), "endpoints": endpoints})
        AgentRegistry(store).register_agents("probed", {"svc": agent.model_dump(mode="json")})
        results = {r.identity: r for r in run_heartbeat(store, BreakerStore(store))}
    healthy, sick = f"http:{up.url('/agent')}", f"http:{down.url('/agent')}"
    assert set(results) == {healthy, sick}
    assert results[healthy].healthy and not results[sick].healthy
    assert results[sick].detail == "HTTP 503"
    # The failed probe counts on the sick endpoint's own breaker, nobody else's.
    sick_breaker = BreakerStore(store).get(sick)
    assert sick_breaker is not None and sick_breaker.snapshot.probe_failures == 1
    assert BreakerStore(store).get(healthy) is None
