"""An LLM agent as a team member, against a local server speaking OpenAI's protocol: in
one attempt it writes the shared memory, asks another agent, and hands its task off,
all through tool calls, each recorded under its attempt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.openai_server import OpenAIServer, Reply
from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(120)


def test_a_model_writes_memory_asks_an_agent_and_hands_off_through_tools(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    with OpenAIServer() as server:
        server.script_for(
            "planner-model",
            Reply.tool_calls_of(
                ("memory_write", {"key": "plan", "value": "launch on monday"}),
                ("ask_agent", {"agent": "expert", "question": "Which day is best?"}),
            ),
            Reply.tool_call("hand_off", {"to": "writer", "reason": "the writer words it"}),
        )
        server.script_for("writer-model", Reply.text("We launch on Monday."))
        openai = {"kind": "openai", "base_url": server.base_url, "api_key_env": None}
        team = {
            "name": "launch",
            "agents": {
                "planner": {**openai, "model": "planner-model", "team_tools": True},
                "writer": {**openai, "model": "writer-model"},
                "expert": {"kind": "python", "target": "tests.support.team_agents:specialist"},
            },
            "workflow": {
                "strategy": "sequential",
                "steps": [{"id": "plan", "agent": "planner", "task": "Plan the launch."}],
            },
        }
        path = tmp_path / "team.yaml"
        path.write_text(yaml.safe_dump(team, sort_keys=False), encoding="utf-8")
        result = run_manage(["run-team", str(path), "--json"], cli_env)
        planner_requests = [r for r in server.requests if r.body["model"] == "planner-model"]
    assert result.returncode == 0, describe(result)
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["output"] == "We launch on Monday."
    steps = {step["id"]: step for step in data["steps"]}
    asked = [sid for sid in steps if "~ask~expert~" in sid]
    assert len(asked) == 1 and steps[asked[0]]["status"] == "completed"
    assert steps["plan~to~writer"]["status"] == "completed"
    assert [(h["path"], h["outcome"]) for h in data["handoffs"]] == [
        (["planner", "writer"], "taken")
    ]
    # The model saw the expert's answer as the ask_agent tool's result.
    tool_results = [m for m in planner_requests[1].messages if m["role"] == "tool"]
    answer = json.loads(tool_results[1]["content"])
    assert answer["by"] == "expert" and answer["task"] == "Which day is best?"
    execution_id = data["execution_id"]
    context = json.loads(run_manage(["context", execution_id, "--json"], cli_env).stdout)
    assert context["memory"]["plan"] == "launch on monday"
    audit = json.loads(run_manage(["status", execution_id, "--attempts", "--json"], cli_env).stdout)
    planner = next(a for a in audit["attempts"] if a["agent"] == "planner")
    assert [c["tool"] for c in planner["tool_calls"]] == ["memory_write", "ask_agent", "hand_off"]
    assert planner["outcome"] == "success"
