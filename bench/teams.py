"""Team files for the benchmarks, as YAML text for ``Team.from_yaml``."""

from __future__ import annotations

from typing import Any

import yaml

NOOP = "bench.agents:noop"
SWITCHABLE = "bench.agents:switchable"
SLEEPY = "bench.agents:sleepy"


def team_yaml(
    name: str, strategy: str, steps: list[dict[str, Any]], agents: dict[str, dict[str, Any]]
) -> str:
    return yaml.safe_dump(
        {"name": name, "agents": agents, "workflow": {"strategy": strategy, "steps": steps}},
        sort_keys=False,
    )


def noop_team(name: str, strategy: str, size: int, **agent: Any) -> str:
    """``size`` steps of the no-op agent, ``parallel`` or ``sequential``; default policies
    unless ``agent`` gives some (e.g. ``breaker={...}``)."""
    width = len(str(size - 1))
    steps = [{"id": f"s{i:0{width}d}", "agent": "noop"} for i in range(size)]
    return team_yaml(name, strategy, steps, {"noop": {"target": NOOP, **agent}})


def switchable_team(agent: str, failure_threshold: int, reset_timeout: float) -> str:
    """One step of an agent that fails while a flag file exists; no retries, so each
    failing execution is one failed call the breaker counts."""
    agents = {
        agent: {
            "target": SWITCHABLE,
            # Short enough for the recovery script's 10 s visibility timeout.
            "timeout": 5,
            "retry": {"max_attempts": 1},
            "breaker": {
                "failure_threshold": failure_threshold,
                "reset_timeout": reset_timeout,
                "when_open": "fail",
            },
        }
    }
    return team_yaml(f"breaker-{agent}", "sequential", [{"id": "call", "agent": agent}], agents)


def sleepy_team(timeout: float) -> str:
    """One step that sleeps (its input says how long), renewing its lease as it goes."""
    agents = {"sleepy": {"target": SLEEPY, "timeout": timeout, "retry": {"max_attempts": 3}}}
    return team_yaml("recovery-sleepy", "sequential", [{"id": "sleep", "agent": "sleepy"}], agents)
