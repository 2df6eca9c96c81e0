"""Handoffs and asks, end to end in embedded mode as a user runs a team: rules that
hand a task on with the documents' confidence, agents that hand off or ask, loops and
depth refused and recorded, and a retried asker that does not ask twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(120)


def agent(name: str) -> dict[str, Any]:
    return {
        "kind": "python",
        "target": f"tests.support.team_agents:{name}",
        "retry": {"max_attempts": 2, "initial_delay": 0.01, "max_delay": 0.05},
    }


def run_team(tmp: Path, env: dict[str, str], data: dict[str, Any], *args: str) -> dict[str, Any]:
    path = tmp / "team.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    result = run_manage(["run-team", str(path), "--json", *args], env)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(describe(result))
    data["_exit"] = result.returncode
    return data


MARKETING = {
    "name": "agency",
    "agents": {
        "marketing": agent("specialist"),
        "copywriting": agent("specialist"),
        "finance": agent("specialist"),
    },
    "handoffs": [
        {
            "from": "marketing",
            "to": "copywriting",
            "triggers": ["copy", "texto", "conteúdo", "landing page"],
        },
        {"from": "marketing", "to": "finance", "triggers": ["ROI", "orçamento", "budget", "custo"]},
    ],
}


def test_a_rule_hands_the_documents_example_to_copywriting_with_85_percent(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = {
        **MARKETING,
        "workflow": {
            "strategy": "sequential",
            "steps": [
                {"id": "launch", "agent": "marketing", "task": "Criar copy para landing page"},
                {"id": "plan", "agent": "marketing", "task": "Plan the launch event"},
            ],
        },
    }
    data = run_team(tmp_path, cli_env, team)
    assert data["_exit"] == 0, data
    steps = {step["id"]: step for step in data["steps"]}
    # The step's output is the target's: marketing was not called for it.
    output = data["output"]
    assert steps["launch~to~copywriting"]["status"] == "completed"
    assert steps["launch~to~copywriting"]["parent"] == "launch"
    assert steps["launch"]["status"] == "completed"
    assert steps["plan"]["status"] == "completed"
    assert output["by"] == "marketing"  # "plan" matched no rule: marketing did it
    (handoff,) = data["handoffs"]
    assert handoff == {
        "step": "launch",
        "from_agent": "marketing",
        "to_agent": "copywriting",
        "outcome": "taken",
        "reason": "the task mentions copy, landing page",
        "confidence": 0.85,
        "path": ["marketing", "copywriting"],
        "detail": None,
    }
    status = run_manage(["status", data["execution_id"], "--json"], cli_env)
    launch = json.loads(status.stdout)
    # What copywriting was told: the structured handoff prompt.
    attempts = run_manage(["status", data["execution_id"], "--attempts", "--json"], cli_env)
    assert json.loads(attempts.stdout)["attempts"][0]["agent"] == "copywriting"
    assert launch["handoffs"] == data["handoffs"]
    validate = run_manage(["validate", str(tmp_path / "team.yaml")], cli_env)
    assert "marketing" in validate.stdout and "landing page" in validate.stdout


def test_the_target_is_told_who_passed_the_task_why_and_how_sure(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = {
        **MARKETING,
        "workflow": {
            "strategy": "pipeline",
            "steps": [
                {"id": "launch", "agent": "marketing", "task": "Criar copy para landing page"},
            ],
        },
    }
    data = run_team(tmp_path, cli_env, team, "--input", "spring sale")
    output = data["output"]
    assert output["by"] == "copywriting"
    assert output["input"] == "spring sale"
    prompt = output["task"]
    for line in (
        "## Handoff",
        "**From agent:** marketing",
        "**To agent:** copywriting",
        "**Reason:** the task mentions copy, landing page",
        "**Confidence:** 85%",
        "Criar copy para landing page",
    ):
        assert line in prompt, prompt


def test_an_agent_hands_off_and_its_dependents_get_the_targets_output(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = {
        "name": "handing",
        "agents": {"lead": agent("passes_to_writer"), "writer": agent("specialist")},
        "workflow": {
            "strategy": "dag",
            "steps": [
                {"id": "draft", "agent": "lead", "task": "Write the announcement"},
                {"id": "review", "agent": "writer", "after": ["draft"]},
            ],
        },
    }
    data = run_team(tmp_path, cli_env, team, "--input", "v2 is out")
    assert data["_exit"] == 0, data
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["draft"]["status"] == "completed"
    assert steps["draft"]["attempts"] == 1  # lead's one successful attempt
    assert steps["draft~to~writer"]["status"] == "completed"
    review_input = data["output"]["input"]
    assert review_input == "v2 is out"
    (handoff,) = data["handoffs"]
    assert (handoff["path"], handoff["reason"]) == (["lead", "writer"], "copy is the writer's job")


def test_a_handoff_loop_is_refused_and_recorded_with_its_path(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = {
        "name": "loop",
        "agents": {
            "lead": agent("passes_to_editor"),
            "editor": agent("passes_back_to_lead"),
        },
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "lead"}]},
    }
    data = run_team(tmp_path, cli_env, team)
    assert data["_exit"] == 1, data
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["s~to~editor"]["status"] == "failed"
    assert steps["s~to~editor"]["error"] == ("HandoffRefused: handoff loop: lead → editor → lead")
    assert steps["s"]["status"] == "failed"
    assert steps["s"]["error"].startswith("HandoffFailed: handoff s~to~editor did not complete")
    assert [(h["outcome"], h["path"]) for h in data["handoffs"]] == [
        ("taken", ["lead", "editor"]),
        ("refused", ["lead", "editor", "lead"]),
    ]


def test_handoffs_stop_at_the_teams_depth(tmp_path: Path, cli_env: dict[str, str]) -> None:
    team = {
        "name": "deep",
        "max_handoff_depth": 1,
        "agents": {
            "lead": agent("passes_to_writer"),
            "writer": agent("passes_to_editor"),
            "editor": agent("specialist"),
        },
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "lead"}]},
    }
    data = run_team(tmp_path, cli_env, team)
    assert data["_exit"] == 1, data
    refused = [h for h in data["handoffs"] if h["outcome"] == "refused"]
    assert [(h["path"], h["detail"]) for h in refused] == [
        (
            ["lead", "writer", "editor"],
            "handoff depth 2 would exceed max_handoff_depth 1",
        )
    ]


def test_a_chain_of_asks_answers_through_every_agent(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    team = {
        "name": "askers",
        "agents": {"a": agent("asks_b"), "b": agent("asks_c"), "c": agent("answers")},
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "a"}]},
    }
    data = run_team(tmp_path, cli_env, team)
    assert data["_exit"] == 0, data
    assert data["output"] == {"a": {"b": {"c": "what does c say?", "task": "what does c say?"}}}
    asked = [step for step in data["steps"] if "~ask~" in step["id"]]
    # Each question is a step of its own, under the step that asked it.
    assert sorted((step["agent"], step["status"]) for step in asked) == [
        ("b", "completed"),
        ("c", "completed"),
    ]
    by_agent = {step["agent"]: step for step in asked}
    assert by_agent["b"]["parent"] == "s"
    assert by_agent["c"]["parent"] == by_agent["b"]["id"]


def test_a_retried_asker_does_not_ask_the_same_question_twice(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    log = tmp_path / "oracle.log"
    team = {
        "name": "retry-ask",
        "agents": {"asker": agent("asks_then_fails_once"), "oracle": agent("counted_answer")},
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "asker"}]},
    }
    data = run_team(tmp_path, cli_env, team, "--input-json", json.dumps({"log": str(log)}))
    assert data["_exit"] == 0, data
    assert data["output"] == "got forty-two"
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["s"]["attempts"] == 2
    # Two attempts of the asker, one call of the oracle.
    assert len(log.read_text().splitlines()) == 1
