"""Endpoints, limits and keyed fairness in team files: what is accepted, what is refused
(one line naming the field), and what each endpoint is (its identity)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestration.agents.identity import agent_identity, endpoint_identities, limits_identity
from orchestration.errors import TeamFileError
from orchestration.limits.fairness import NO_KEY, fair_slot
from orchestration.limits.plan import capacity_of
from orchestration.spec import HttpAgentSpec, OpenAIAgentSpec, parse_agent
from orchestration.team_file import parse_team

pytestmark = pytest.mark.timeout(10)


def team_text(agent: dict[str, Any], **extra: Any) -> str:
    data = {
        "name": "t",
        **extra,
        "agents": {"a": agent},
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "a"}]},
    }
    return yaml.safe_dump(data, sort_keys=False)


def refused(agent: dict[str, Any], **extra: Any) -> str:
    with pytest.raises(TeamFileError) as caught:
        parse_team(team_text(agent, **extra), import_targets=False)
    return str(caught.value)


def test_an_http_agent_with_endpoints_has_an_identity_per_endpoint() -> None:
    spec = parse_agent(
        {
            "kind": "http",
            "endpoints": [
                {"url": "http://a.test/agent", "weight": 2, "max_concurrency": 4},
                {"url": "http://b.test/agent", "health_url": "http://b.test/health"},
            ],
            "routing": "weighted",
            "max_concurrency": 5,
            "rate_limit": {"requests_per_minute": 120},
        }
    )
    assert endpoint_identities(spec) == ("http:http://a.test/agent", "http:http://b.test/agent")
    assert agent_identity(spec) == "http:http://a.test/agent"
    assert limits_identity(spec).startswith("endpoints:")
    plan = capacity_of(spec)
    assert plan.limited and plan.routing == "weighted" and plan.max_concurrency == 5
    assert plan.ms_per_request == 500.0
    first, second = plan.endpoints
    assert (first.weight, first.max_concurrency, first.address) == (2.0, 4, "http://a.test/agent")
    assert isinstance(second.spec, HttpAgentSpec)
    assert second.spec.url == "http://b.test/agent" and second.spec.endpoints == ()
    assert second.spec.probe is not None and second.spec.probe.url == "http://b.test/health"


def test_an_openai_endpoint_takes_the_agents_base_url_and_model_unless_it_names_its_own() -> None:
    spec = parse_agent(
        {
            "kind": "openai",
            "base_url": "http://llm.test/v1",
            "model": "m",
            "max_tokens": 300,
            "endpoints": [{}, {"base_url": "http://other.test/v1/"}, {"model": "n"}],
            "rate_limit": {"tokens_per_minute": 6000},
        }
    )
    assert endpoint_identities(spec) == (
        "openai:http://llm.test/v1#m",
        "openai:http://other.test/v1#m",
        "openai:http://llm.test/v1#n",
    )
    plan = capacity_of(spec)
    assert plan.reserve_tokens == 300 and plan.ms_per_token == 10.0
    last = plan.endpoints[2].spec
    assert isinstance(last, OpenAIAgentSpec) and (last.base_url, last.model) == (
        "http://llm.test/v1",
        "n",
    )


def test_an_agent_without_endpoints_or_limits_asks_no_limiter() -> None:
    plain = parse_agent({"kind": "http", "url": "http://a.test/agent"})
    assert not capacity_of(plain).limited
    assert capacity_of(plain).endpoints[0].address == "http://a.test/agent"
    limited = parse_agent({"target": "pkg.mod:fn", "max_concurrency": 2})
    assert capacity_of(limited).limited
    # Its own limits count against what it calls, which other teams' agents share.
    assert limits_identity(limited) == agent_identity(limited) == "python:pkg.mod:fn"


@pytest.mark.parametrize(
    ("agent", "field", "problem"),
    [
        (
            {"kind": "http", "url": "http://a.test", "endpoints": [{"url": "http://b.test"}]},
            "agents.a.url",
            "exactly one of url or endpoints",
        ),
        ({"kind": "http"}, "agents.a.url", "exactly one of url or endpoints"),
        (
            {"kind": "http", "endpoints": [{"url": "http://a.test"}, {"url": "http://a.test"}]},
            "agents.a.endpoints[1]",
            "the same endpoint as endpoints[0]",
        ),
        (
            {
                "kind": "http",
                "endpoints": [{"url": "http://a.test"}],
                "health_url": "http://a.test/h",
            },
            "agents.a.health_url",
            "give each endpoint its health_url",
        ),
        (
            {"kind": "openai", "endpoints": [{"base_url": "http://a.test/v1"}]},
            "agents.a.model",
            "name one in every endpoint",
        ),
        (
            {
                "kind": "openai",
                "model": "m",
                "endpoints": [{}, {"base_url": "https://api.openai.com/v1/"}],
            },
            "agents.a.endpoints[1]",
            "the same endpoint",
        ),
        ({"target": "pkg.mod:fn", "rate_limit": {}}, "agents.a.rate_limit", "give requests"),
        ({"target": "pkg.mod:fn", "max_concurrency": 0}, "agents.a.max_concurrency", ""),
        (
            {"kind": "http", "endpoints": [{"url": "http://a.test", "weight": 0}]},
            "agents.a.endpoints[0].weight",
            "",
        ),
        (
            {"kind": "http", "url": "http://a.test", "routing": "random"},
            "agents.a.routing",
            "least_in_flight",
        ),
    ],
)
def test_refused_endpoints_and_limits_name_the_field(
    agent: dict[str, Any], field: str, problem: str
) -> None:
    message = refused(agent)
    assert field in message and problem in message, message


def test_a_fairness_key_is_cel_over_the_input_only() -> None:
    agent = {"target": "pkg.mod:fn"}
    assert "concurrency.key" in refused(agent, concurrency={"key": "input.", "max": 1})
    message = refused(agent, concurrency={"key": "steps.s.output", "max": 1})
    assert "concurrency.key" in message and "input only" in message
    spec = parse_team(
        team_text(agent, concurrency={"key": "input.customer", "max": 2}), import_targets=False
    )
    assert spec.concurrency is not None
    slot = fair_slot("t", spec.concurrency, "e1", {"customer": "acme"}, 60)
    assert slot is not None and (slot.key, slot.max, slot.lease_ms) == ("t:acme", 2, 60_000)
    missing = fair_slot("t", spec.concurrency, "e2", {"other": 1}, 60)
    assert missing is not None and missing.key == f"t:{NO_KEY}"
    assert fair_slot("t", None, "e3", {}, 60) is None
