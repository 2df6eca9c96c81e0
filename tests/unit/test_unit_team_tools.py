"""The team tools an ``openai`` agent gets with ``team_tools: true``, called as the model
would call them: through the attempt's shared memory and channel."""

from __future__ import annotations

import pytest

from orchestration.agents.call import AgentCall
from orchestration.agents.team_tools import team_tools, with_team_tools
from orchestration.agents.tools import call_tool, load_tools
from orchestration.collaboration.attempt import AttemptCollaboration
from orchestration.errors import AgentLoadError
from tests.support.team_reads import RULES, Reads


def test_team_tools_act_through_the_call_and_tell_the_model_its_mistakes() -> None:
    team = AttemptCollaboration(
        Reads({"total": 1}), "e", "s", 1, "writer", rules=RULES, agents=("writer", "reader")
    )
    call = AgentCall("e", "s", "writer", None, None, {}, 1, shared=team.memory, _team=team.channel)
    tools = team_tools(call)
    assert sorted(tools) == [
        "ask_agent",
        "broadcast",
        "hand_off",
        "memory_list",
        "memory_read",
        "memory_write",
        "send_message",
    ]
    assert call_tool(tools, "memory_write", '{"key": "total", "value": 2}').content == (
        '{"written":"total"}'
    )
    assert call_tool(tools, "memory_read", '{"key": "total"}').content == "3"
    refused = call_tool(tools, "memory_write", '{"key": "total", "value": "two"}')
    assert refused.record.outcome == "error"
    assert "'total' is summed" in refused.content
    unknown = call_tool(tools, "send_message", '{"to": "nobody", "content": "hi"}')
    assert "no agent 'nobody'" in unknown.content
    call_tool(tools, "send_message", '{"to": "reader", "content": "hi"}')
    call_tool(tools, "broadcast", '{"content": {"all": true}}')
    assert call_tool(tools, "memory_list", "{}").content == '{"total":3}'
    batch = team.batch()
    assert [(w.key, w.value) for w in batch.writes] == [("total", 2)]
    assert [(m.to, m.content) for m in batch.messages] == [
        ("reader", "hi"),
        (None, {"all": True}),
    ]


def test_an_agents_own_tool_may_not_take_a_team_tools_name() -> None:
    call = AgentCall("e", "s", "writer", None, None, {}, 1)
    own = load_tools(["tests.support.llm_tools:add"])
    assert "add" in with_team_tools(own, call)
    clash = {"broadcast": own["add"]}
    with pytest.raises(AgentLoadError, match="like the team tool"):
        with_team_tools(clash, call)
