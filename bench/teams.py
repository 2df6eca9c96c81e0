"""Team files for the benchmarks, as YAML text for ``Team.from_yaml``."""

from __future__ import annotations

from typing import Any

import yaml

NOOP = "bench.agents:noop"
SWITCHABLE = "bench.agents:switchable"
SLEEPY = "bench.agents:sleepy"
WAIT = "bench.agents:wait"
ASYNC_WAIT = "bench.agents:async_wait"
ITEMS = "bench.agents:items"


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
            # A target of its own: breakers belong to what is called, and each trip
            # needs a breaker nobody else has opened.
            "target": f"{SWITCHABLE}__{agent.replace('-', '_')}",
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


def crossed_dag_team(timeout: float) -> str:
    """Two independent branches, ``a_slow → b_fast`` and ``c_fast → d_slow``: the slow
    steps wait ``input["seconds"]``, the fast ones do nothing. The critical path is one
    slow step; a level barrier would make it two (d_slow waiting for a_slow)."""
    agents: dict[str, dict[str, Any]] = {
        "slow": {"target": WAIT, "timeout": timeout, "retry": {"max_attempts": 1}},
        "fast": {"target": NOOP},
    }
    steps: list[dict[str, Any]] = [
        {"id": "a_slow", "agent": "slow"},
        {"id": "b_fast", "agent": "fast", "after": ["a_slow"]},
        {"id": "c_fast", "agent": "fast"},
        {"id": "d_slow", "agent": "slow", "after": ["c_fast"]},
    ]
    return team_yaml("bench-crossed-dag", "dag", steps, agents)


def io_fanout_team(width: int, timeout: float, *, asynchronous: bool = False) -> str:
    """``width`` steps that each wait ``input["seconds"]`` (time.sleep, or asyncio.sleep
    when ``asynchronous``), and a join step after all of them."""
    agents: dict[str, dict[str, Any]] = {
        "wait": {
            "target": ASYNC_WAIT if asynchronous else WAIT,
            "timeout": timeout,
            "retry": {"max_attempts": 1},
        },
        "join": {"target": NOOP},
    }
    digits = len(str(width - 1))
    ids = [f"w{i:0{digits}d}" for i in range(width)]
    steps: list[dict[str, Any]] = [{"id": step, "agent": "wait"} for step in ids]
    steps.append({"id": "join", "agent": "join", "after": ids})
    name = "bench-io-fanout-async" if asynchronous else "bench-io-fanout"
    return team_yaml(name, "dag", steps, agents)


LLM_MODEL = "bench-model"
LLM_PROMPT = "Answer in one word: {{ input.question }}"
LLM_QUESTION = "ready?"


def llm_prompt(question: str) -> str:
    """What ``llm_team``'s agents send as the user message for this question (the raw
    side sends the same)."""
    return LLM_PROMPT.replace("{{ input.question }}", question)


def model_agent(base_url: str, timeout: float) -> dict[str, Any]:
    """An ``openai`` agent calling the chat-completions server at ``base_url`` (no key,
    one attempt, no budget) with ``LLM_PROMPT``."""
    return {
        "kind": "openai",
        "base_url": base_url,
        "model": LLM_MODEL,
        "api_key_env": None,
        "prompt": LLM_PROMPT,
        "timeout": timeout,
        "retry": {"max_attempts": 1},
    }


def llm_team(width: int, base_url: str, timeout: float) -> str:
    """``width`` steps of ``model_agent`` and a join step after all of them."""
    agents: dict[str, dict[str, Any]] = {
        "model": model_agent(base_url, timeout),
        "join": {"target": NOOP},
    }
    digits = len(str(width - 1))
    ids = [f"m{i:0{digits}d}" for i in range(width)]
    steps: list[dict[str, Any]] = [{"id": step, "agent": "model"} for step in ids]
    steps.append({"id": "join", "agent": "join", "after": ids})
    return team_yaml("bench-llm", "dag", steps, agents)


def model_team(name: str, strategy: str, size: int, base_url: str, timeout: float) -> str:
    """``size`` steps of ``model_agent``, ``parallel`` or ``sequential``."""
    width = len(str(size - 1))
    steps = [{"id": f"s{i:0{width}d}", "agent": "model"} for i in range(size)]
    return team_yaml(name, strategy, steps, {"model": model_agent(base_url, timeout)})


def map_team() -> str:
    """A step that returns ``{"items": [0 .. input["items"] - 1]}`` and a map step that
    runs the no-op agent once per item."""
    agents: dict[str, dict[str, Any]] = {"split": {"target": ITEMS}, "noop": {"target": NOOP}}
    steps = [
        {"id": "split", "agent": "split"},
        {"id": "each", "agent": "noop", "for_each": "steps.split.output.items"},
    ]
    return team_yaml("bench-map", "dag", steps, agents)
