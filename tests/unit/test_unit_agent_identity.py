"""agent_identity: what an agent calls, as a bounded key."""

from __future__ import annotations

import pytest

from orchestration.agents.identity import MAX_LENGTH, agent_identity, bounded
from orchestration.spec import AgentSpec, parse_agent

pytestmark = pytest.mark.timeout(5)


def python_agent(target: str, **fields: object) -> AgentSpec:
    return parse_agent({"target": target, **fields})


def test_a_python_agent_is_its_target() -> None:
    spec = python_agent("examples.agents.audit:scan_syntax")
    assert agent_identity(spec) == "python:examples.agents.audit:scan_syntax"


def test_only_the_target_counts_not_the_policies() -> None:
    plain = python_agent("pkg.mod:fn")
    tuned = python_agent(
        "pkg.mod:fn", timeout=5, breaker={"failure_threshold": 1}, description="other team"
    )
    assert agent_identity(plain) == agent_identity(tuned)
    assert agent_identity(plain) != agent_identity(python_agent("pkg.mod:other"))


def test_a_long_target_is_cut_to_the_key_columns_and_stays_distinct() -> None:
    # Targets that fit a team file but not beside the "python:" prefix.
    head = "pkg." + "m" * 186
    first = agent_identity(python_agent(f"{head}:first"))
    second = agent_identity(python_agent(f"{head}:second"))
    assert len(first) == len(second) == MAX_LENGTH
    assert first != second
    assert first.startswith("python:pkg.mmm")
    # The same target gives the same identity every time.
    assert agent_identity(python_agent(f"{head}:first")) == first
    # However long the string, the result fits.
    assert len(bounded("http:" + "x" * 5000)) == MAX_LENGTH


def test_a_target_that_fits_exactly_is_kept_whole() -> None:
    target = "p:" + "f" * (MAX_LENGTH - len("python:p:"))
    assert agent_identity(python_agent(target)) == f"python:{target}"
