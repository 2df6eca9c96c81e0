"""An ``openai`` agent with ``team_tools: true`` against a local server that speaks the
chat-completions protocol: the model writes the shared memory and sends messages by
calling tools, and the team's other agents find them there once its step succeeded."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from orchestration import Team
from tests.support.openai_server import OpenAIServer, Reply, running
from tests.support.teams import FAST_RETRY

pytestmark = pytest.mark.timeout(60)

MEMORY = "tests.support.memory_agents"
TEAM_TOOLS = {
    "memory_read",
    "memory_write",
    "memory_list",
    "send_message",
    "broadcast",
    "ask_agent",
    "hand_off",
}


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    yield from running()


def test_a_model_writes_memory_and_sends_a_message_through_tool_calls(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(
        Reply.tool_calls_of(
            ("memory_write", {"key": "findings", "value": "parse() is quadratic"}),
            ("send_message", {"to": "listener", "content": "look at parse()"}),
            ("send_message", {"to": "nobody", "content": "lost"}),
        ),
        Reply.tool_call("memory_read", {"key": "findings"}),
        Reply.text("reviewed"),
    )
    model = f"test-model-{uuid.uuid4().hex[:8]}"
    team = {
        "name": "team-tools",
        "memory": {"findings": "append"},
        "agents": {
            "analyst": {
                "kind": "openai",
                "base_url": server.base_url,
                "model": model,
                "api_key_env": None,
                "timeout": 10,
                "retry": dict(FAST_RETRY),
                "team_tools": True,
            },
            "listener": {"kind": "python", "target": f"{MEMORY}:inbox"},
            "reader": {"kind": "python", "target": f"{MEMORY}:reads_memory"},
        },
        "workflow": {
            "strategy": "dag",
            "steps": [
                {"id": "analyze", "agent": "analyst", "task": "Review parse()"},
                {"id": "listen", "agent": "listener", "after": ["analyze"]},
                {"id": "read", "agent": "reader", "after": ["analyze"]},
            ],
        },
    }
    handle = Team.from_yaml(yaml.safe_dump(team), source="team-tools.yaml").enqueue()
    report = handle.wait(timeout=30)
    assert report.status == "completed", report

    first, second, third = server.requests
    offered = {tool["function"]["name"] for tool in first.body["tools"]}
    assert offered == TEAM_TOOLS
    results = [m for m in second.messages if m["role"] == "tool"]
    assert json.loads(results[0]["content"]) == {"written": "findings"}
    assert json.loads(results[1]["content"]) == {"sent_to": "listener"}
    # A mistake goes back to the model, which may correct itself; the step goes on.
    assert "no agent 'nobody'" in json.loads(results[2]["content"])["error"]
    # The model reads its own write, staged until the step succeeds.
    assert json.loads(third.messages[-1]["content"]) == ["parse() is quadratic"]

    outputs = handle.context().outputs
    assert outputs["analyze"] == "reviewed"
    assert outputs["read"] == {"findings": ["parse() is quadratic"]}
    assert outputs["listen"] == [
        {"sender": "analyst", "step": "analyze", "to": "listener", "content": "look at parse()"}
    ]
    (attempt,) = [a for a in handle.attempts() if a.step == "analyze"]
    assert attempt.tool_calls is not None
    assert [(call["tool"], call["outcome"]) for call in attempt.tool_calls] == [
        ("memory_write", "success"),
        ("send_message", "success"),
        ("send_message", "error"),
        ("memory_read", "success"),
    ]
    assert attempt.context_version == 0  # it read the memory before anything was applied
