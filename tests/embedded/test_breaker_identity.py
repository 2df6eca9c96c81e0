"""Breakers and the agent registry belong to what agents call (their identity), not to
their names: on SQLite and PostgreSQL, across teams."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from orchestration.agents.identity import MAX_LENGTH, agent_identity
from orchestration.resilience.breaker import OPEN
from orchestration.spec import AgentSpec, TeamSpec
from orchestration.store.agent_registry import AgentRegistry, by_identity
from orchestration.store.breakers import BreakerStore
from orchestration.store.models import AgentRow, AttemptRow, BreakerRow, ExecutionRow, HeartbeatRow
from orchestration.store.repository import Store, now

pytestmark = pytest.mark.timeout(30)

TARGETS = "tests.support.resilience_agents"


def team(name: str, agents: dict[str, str], **breaker: Any) -> TeamSpec:
    """A team whose agents call the given callables of TARGETS (name → callable)."""
    return TeamSpec.model_validate(
        {
            "name": name,
            "agents": {
                agent: {"target": f"{TARGETS}:{target}", "breaker": breaker}
                for agent, target in agents.items()
            },
            "workflow": {
                "strategy": "parallel",
                "steps": [{"id": f"s_{i}", "agent": a} for i, a in enumerate(agents)],
            },
        }
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register(store: Store, spec: TeamSpec) -> None:
    agents = spec.model_dump(mode="json")["agents"]
    AgentRegistry(store).register_agents(spec.name, agents)


def fail_once(breakers: BreakerStore, agent: AgentSpec) -> str:
    return breakers.record_call(
        agent_identity(agent), agent.breaker, failed=True, trial=False, error="RuntimeError: down"
    )


@pytest.fixture
def store(url: str) -> Store:
    return Store(url)


def test_every_column_holding_an_identity_takes_the_longest_one() -> None:
    columns = (
        BreakerRow.__table__.c.key,
        AgentRow.__table__.c.identity,
        HeartbeatRow.__table__.c.identity,
    )
    assert [column.type.length for column in columns] == [MAX_LENGTH] * 3


def test_two_teams_calling_the_same_target_share_its_breaker(store: Store) -> None:
    target = unique("shared").replace("-", "_")
    first = team(unique("team-a"), {"e": target}, failure_threshold=1)
    second = team(unique("team-b"), {"scan": target}, failure_threshold=1)
    breakers = BreakerStore(store)

    assert agent_identity(first.agents["e"]) == agent_identity(second.agents["scan"])
    assert fail_once(breakers, first.agents["e"]) == OPEN

    admission = breakers.admit(agent_identity(second.agents["scan"]), second.agents["scan"].breaker)
    assert not admission.allowed
    assert admission.state == OPEN
    assert f"python:{TARGETS}:{target}" in (admission.reason or "")


def test_same_named_agents_calling_different_targets_do_not_share(store: Store) -> None:
    first = team(unique("team-a"), {"e": unique("x").replace("-", "_")}, failure_threshold=1)
    second = team(unique("team-b"), {"e": unique("y").replace("-", "_")}, failure_threshold=1)
    breakers = BreakerStore(store)

    assert fail_once(breakers, first.agents["e"]) == OPEN

    other = second.agents["e"]
    assert breakers.admit(agent_identity(other), other.breaker).allowed
    assert breakers.get(agent_identity(other)) is None
    assert breakers.get("e") is None


def test_the_registry_lists_every_name_and_team_of_an_identity(store: Store) -> None:
    x, y, z = (unique(n).replace("-", "_") for n in "xyz")
    a, b = unique("team-a"), unique("team-b")
    register(store, team(a, {"e": x, "f": y}))
    register(store, team(b, {"e": x, "g": x}))

    def users() -> dict[str, list[tuple[str, str]]]:
        groups = by_identity(AgentRegistry(store).agents())
        return {
            identity: [(row.team, row.name) for row in rows]
            for identity, rows in groups.items()
            if any(row.team in (a, b) for row in rows)
        }

    def ident(target: str) -> str:
        return f"python:{TARGETS}:{target}"

    assert users() == {ident(x): [(a, "e"), (b, "e"), (b, "g")], ident(y): [(a, "f")]}

    # Team A changes what `e` calls and drops `f`: its rows follow its file.
    register(store, team(a, {"e": z}))
    assert users() == {ident(x): [(b, "e"), (b, "g")], ident(z): [(a, "e")]}


def test_recent_outcomes_are_counted_per_team_and_agent(store: Store) -> None:
    a, b = unique("team-a"), unique("team-b")
    started = now()
    with store.session() as session, session.begin():
        for execution_id, team_name in ((f"{a}-run", a), (f"{b}-run", b)):
            session.add(
                ExecutionRow(
                    id=execution_id,
                    team=team_name,
                    strategy="parallel",
                    spec={},
                    status="completed",
                    created_at=started,
                )
            )
        session.flush()  # the executions first: attempts refer to them
        outcomes = [(a, "success"), (a, "error"), (a, "rejected"), (b, "success")]
        for attempt, (team_name, outcome) in enumerate(outcomes, start=1):
            session.add(
                AttemptRow(
                    execution_id=f"{team_name}-run",
                    step_id="s",
                    attempt=attempt,
                    agent="e",
                    started_at=started,
                    outcome=outcome,
                )
            )

    found = AgentRegistry(store).recent_outcomes(started - timedelta(seconds=1))

    # A rejected dispatch never reached the agent, so it is not counted.
    assert found[(a, "e")] == (1, 2)
    assert found[(b, "e")] == (1, 1)


def test_a_team_warns_of_the_open_breaker_of_what_its_agents_call(runtime: Any) -> None:
    from orchestration import Team

    target = unique("warned").replace("-", "_")
    first = Team(team(unique("team-a"), {"e": target}))
    second = Team(team(unique("team-b"), {"scan": target, "e": unique("z").replace("-", "_")}))
    third = Team(team(unique("team-c"), {"e": unique("w").replace("-", "_")}))
    agent = first.spec.agents["e"]
    BreakerStore(runtime.store).force_open(agent_identity(agent), agent.breaker, "E: down")

    assert set(first.open_breakers()) == {"e"}
    # Another team's agent calling the same target is warned of it, under its own name.
    assert list(second.open_breakers()) == ["scan"]
    assert second.open_breakers()["scan"].startswith("open (E: down")
    # Another `e` calling something else is not.
    assert third.open_breakers() == {}
