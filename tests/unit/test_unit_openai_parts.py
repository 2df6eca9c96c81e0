"""The pieces of the ``openai`` agent kind that need no server: prompts, tools, and how
an HTTP reply's Retry-After is read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from orchestration.agents.call import AgentCall
from orchestration.agents.openai_client import retry_after
from orchestration.agents.prompts import default_prompt, render_prompt
from orchestration.agents.tools import call_tool, load_tools
from orchestration.errors import AgentLoadError, PermanentAgentError

TOOLS = "tests.support.llm_tools"


def make_call(**fields: Any) -> AgentCall:
    values: dict[str, Any] = {
        "execution_id": "e",
        "step_id": "s",
        "agent": "a",
        "task": "Summarise",
        "input": {"text": "héllo"},
        "outputs": {"scan": {"issues": 2}},
        "attempt": 1,
    }
    values.update(fields)
    return AgentCall(**values)


# --- prompts -----------------------------------------------------------------------------


def test_default_prompt_is_the_task_then_the_context_as_json() -> None:
    text = default_prompt(make_call(item="a.py", index=0))
    assert text == (
        "Summarise\n\n"
        'Input:\n{\n  "text": "héllo"\n}\n\n'
        'Item 0:\n"a.py"\n\n'
        'Output of step scan:\n{\n  "issues": 2\n}'
    )


def test_template_renders_the_call() -> None:
    source = "{{ task }}: {{ input.text }} ({{ steps.scan.output.issues }} issues)"
    assert render_prompt(source, make_call()) == "Summarise: héllo (2 issues)"


def test_outputs_are_not_read_unless_the_template_looks() -> None:
    class Exploding(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise AssertionError("read")

        def __iter__(self) -> Any:
            raise AssertionError("read")

    assert render_prompt("{{ task }}", make_call(outputs=Exploding())) == "Summarise"


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("{{ task ", "line 1"),
        ("{{ nothing }}", "'nothing' is undefined"),
        ("{{ steps.absent.output }}", "absent"),
        ("{{ input.__class__ }}", "unsafe"),
        ("{{ 'x' * 100000000 }}", "repetition"),
        ("{{ 9 ** 99999 }}", "power"),
    ],
)
def test_template_problems_are_permanent_and_named(source: str, needle: str) -> None:
    with pytest.raises(PermanentAgentError, match="prompt template") as raised:
        render_prompt(source, make_call())
    assert needle in str(raised.value)


def test_an_immutable_sandbox_leaves_the_input_alone() -> None:
    call = make_call(input={"items": [1]})
    with pytest.raises(PermanentAgentError):
        render_prompt("{{ input['items'].append(2) }}", call)
    assert call.input == {"items": [1]}


# --- tools -------------------------------------------------------------------------------


def test_tool_schema_comes_from_type_hints_and_docstring() -> None:
    tools = load_tools([f"{TOOLS}:lookup", f"{TOOLS}:multiply"])
    lookup = tools["lookup"].schema()["function"]
    assert lookup["description"] == "Look a key up in a table that has only one key."
    assert lookup["parameters"]["properties"]["key"]["description"] == "the key to look up"
    multiply = tools["multiply"].schema()["function"]["parameters"]
    assert multiply["required"] == ["a"]
    assert multiply["properties"]["b"]["default"] == 2.0


def test_a_tool_without_named_parameters_is_refused() -> None:
    with pytest.raises(AgentLoadError, match=r"\*args"):
        load_tools([f"{TOOLS}:takes_anything"])


def test_two_tools_with_one_name_are_refused() -> None:
    with pytest.raises(AgentLoadError, match="both be called"):
        load_tools([f"{TOOLS}:add", f"{TOOLS}:add"])


@pytest.mark.parametrize(
    ("name", "arguments", "needle"),
    [
        ("add", '{"a": 1', "not valid JSON"),
        ("add", "[1, 2]", "must be a JSON object"),
        ("add", '{"a": 1, "b": 2, "c": 3}', "c: Extra inputs are not permitted"),
        ("subtract", "{}", "no tool named 'subtract'"),
    ],
)
def test_a_bad_tool_call_is_an_error_for_the_model(name: str, arguments: str, needle: str) -> None:
    reply = call_tool(load_tools([f"{TOOLS}:add"]), name, arguments)
    assert reply.record.outcome == "error"
    assert needle in json.loads(reply.content)["error"]
    assert reply.record.error == json.loads(reply.content)["error"]


def test_a_tool_result_goes_back_as_json() -> None:
    reply = call_tool(load_tools([f"{TOOLS}:add"]), "add", '{"a": 1, "b": "2"}')
    assert (reply.content, reply.record.outcome, reply.record.arguments) == (
        "3",
        "success",
        {"a": 1, "b": "2"},
    )


# --- Retry-After ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after(httpx2.Response(429, headers=headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after(httpx2.Response(429, headers={"retry-after": when}))
    assert seconds is not None and 25 <= seconds <= 31
