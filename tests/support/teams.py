"""Build team files for tests: every support agent is declared, with tiny retry delays."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.support.agents import AGENT_NAMES

# Fast retries: a test that retries three times waits a few hundredths of a second.
FAST_RETRY: dict[str, Any] = {
    "max_attempts": 3,
    "initial_delay": 0.01,
    "backoff": 1.0,
    "max_delay": 0.05,
    "jitter": "none",
}


def agent(name: str, *, timeout: float = 20, **retry: Any) -> dict[str, Any]:
    """One agent entry targeting ``tests.support.agents:<name>``."""
    return {
        "kind": "python",
        "target": f"tests.support.agents:{name}",
        "timeout": timeout,
        "retry": {**FAST_RETRY, **retry},
    }


def team_data(
    strategy: str,
    steps: Iterable[Mapping[str, Any]],
    *,
    name: str = "test-team",
    agents: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A team mapping. Steps are dicts; ``agent`` defaults to ``echo``.

    ``agents`` overrides or adds agent entries on top of one entry per support agent.
    """
    declared: dict[str, Any] = {n: agent(n) for n in AGENT_NAMES}
    declared.update({k: dict(v) for k, v in (agents or {}).items()})
    step_list = []
    for step in steps:
        entry = dict(step)
        entry.setdefault("agent", "echo")
        step_list.append(entry)
    return {
        "name": name,
        "agents": declared,
        "workflow": {"strategy": strategy, "steps": step_list},
    }


def team_yaml(strategy: str, steps: Iterable[Mapping[str, Any]], **kwargs: Any) -> str:
    return yaml.safe_dump(team_data(strategy, steps, **kwargs), sort_keys=False)


def write_team(
    directory: Path,
    strategy: str,
    steps: Iterable[Mapping[str, Any]],
    *,
    filename: str = "team.yaml",
    **kwargs: Any,
) -> Path:
    """Write a team file under ``directory`` and return its path."""
    path = directory / filename
    path.write_text(team_yaml(strategy, steps, **kwargs), encoding="utf-8")
    return path


def write_text(directory: Path, filename: str, text: str) -> Path:
    """Write a hand-written (possibly broken) team file."""
    path = directory / filename
    path.write_text(text, encoding="utf-8")
    return path
