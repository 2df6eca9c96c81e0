"""The ``openai`` agent kind end to end: team files with ``kind: openai`` run on the
embedded runtime against a local server that speaks the chat-completions protocol over
real HTTP (tests.support.openai_server), so the official client, its errors and its
headers are all the real thing.

Usage and budget bookkeeping are asserted on the adapter itself (``OpenAIChatAgent``
invoked with an ``AgentCall``), where every reservation and settlement can be seen.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from orchestration import ExecutionReport, StepReport, Team
from orchestration.agents.call import AgentCall, Reservation, Usage
from orchestration.agents.openai_chat import OpenAIChatAgent
from orchestration.errors import (
    AgentProtocolError,
    BudgetExceeded,
    PermanentAgentError,
    SecretMissing,
    TransientAgentError,
)
from orchestration.spec import Budget, parse_agent
from tests.support.openai_server import OpenAIServer, Reply, Request, running
from tests.support.teams import FAST_RETRY, team_yaml

pytestmark = pytest.mark.timeout(30)

TOOLS = "tests.support.llm_tools"
KEY_ENV = "TROUPE_TEST_LLM_KEY"
KEY = "sk-troupe-test-4f1d2c9a7b"


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    yield from running()


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    # The embedded worker runs in this process: it reads the key from this environment.
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def llm(server: OpenAIServer, **fields: Any) -> dict[str, Any]:
    """An ``openai`` agent entry calling ``server``; a model name of its own, so no
    two tests share a breaker."""
    return {
        "kind": "openai",
        "base_url": server.base_url,
        "model": f"test-model-{uuid.uuid4().hex[:8]}",
        "api_key_env": KEY_ENV,
        "timeout": 10,
        "retry": dict(FAST_RETRY),
        **fields,
    }


def run(
    server: OpenAIServer,
    input: Any = None,
    *,
    steps: list[dict[str, Any]] | None = None,
    strategy: str = "sequential",
    **fields: Any,
) -> ExecutionReport:
    steps = steps or [{"id": "ask", "agent": "llm", "task": "Say hello"}]
    text = team_yaml(strategy, steps, agents={"llm": llm(server, **fields)})
    return Team.from_yaml(text, source="openai-team.yaml").run(input, timeout=20)


def step(report: ExecutionReport, step_id: str = "ask") -> StepReport:
    return next(s for s in report.steps if s.id == step_id)


def completed(report: ExecutionReport, step_id: str = "ask") -> StepReport:
    assert report.status == "completed", report
    found = step(report, step_id)
    assert found.status == "completed" and found.error is None, found
    return found


def last_message(request: Request) -> dict[str, Any]:
    return request.messages[-1]


# --- replies -----------------------------------------------------------------------------


def test_plain_text_reply_is_the_output(runtime: Any, server: OpenAIServer) -> None:
    server.script(Reply.text("Hello there."))
    report = run(server, {"name": "Ada"}, system="You are terse.", temperature=0.2, max_tokens=50)
    assert completed(report).attempts == 1
    assert report.output == "Hello there."
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    body = request.body
    assert body["model"].startswith("test-model-")
    assert body["temperature"] == 0.2
    # Not api.openai.com: the name every compatible server knows.
    assert body["max_tokens"] == 50
    assert "response_format" not in body and "tools" not in body
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    # The default prompt: the task, then the input as JSON.
    assert user["role"] == "user"
    assert user["content"].startswith("Say hello\n\nInput:\n")
    assert '"name": "Ada"' in user["content"]


def test_the_key_comes_from_the_variable_api_key_env_names(
    runtime: Any, server: OpenAIServer, api_key: str
) -> None:
    server.script(Reply.text("ok"))
    completed(run(server))
    assert server.requests[0].authorization == f"Bearer {api_key}"


def test_a_refused_key_fails_at_once_and_the_error_does_not_show_it(
    runtime: Any, server: OpenAIServer, api_key: str
) -> None:
    # Servers echo a bad key back in their message.
    server.script(Reply.failure(401, f"Incorrect API key provided: {api_key}"))
    report = run(server)
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert failed.error is not None
    assert "authentication failed" in failed.error
    assert api_key not in failed.error and "[redacted]" in failed.error


def test_an_unset_key_variable_fails_the_step_naming_it(
    runtime: Any, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    report = run(server)
    assert report.status == "failed" and step(report).attempts == 1
    assert KEY_ENV in (step(report).error or "")
    assert server.requests == []


def test_json_schema_reply_is_parsed_and_validated(runtime: Any, server: OpenAIServer) -> None:
    schema = {
        "type": "object",
        "properties": {"sentiment": {"enum": ["good", "bad"]}, "score": {"type": "number"}},
        "required": ["sentiment", "score"],
    }
    server.script(Reply.json({"sentiment": "good", "score": 0.9}))
    report = run(server, "I love it", output_schema=schema)
    assert completed(report).attempts == 1
    assert report.output == {"sentiment": "good", "score": 0.9}
    assert server.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }


def test_json_true_asks_for_a_json_object(runtime: Any, server: OpenAIServer) -> None:
    server.script(Reply.text('```json\n{"items": [1, 2]}\n```'))
    report = run(server, json=True)
    # A code fence around the JSON is tolerated.
    assert report.output == {"items": [1, 2]}
    body = server.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    # OpenAI refuses json_object unless a message mentions JSON.
    assert "json" in server.requests[0].text().lower()


def test_an_invalid_reply_is_repaired_with_the_validation_error(
    runtime: Any, server: OpenAIServer
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    server.script(Reply.json({"n": "three"}), Reply.json({"n": 3}))
    report = run(server, output_schema=schema)
    # A repair is part of the attempt, not a retry.
    assert completed(report).attempts == 1
    assert report.output == {"n": 3}
    first, second = server.requests
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[-2] == {"role": "assistant", "content": '{"n": "three"}'}
    repair = last_message(second)
    assert repair["role"] == "user"
    assert "'three' is not of type 'integer'" in repair["content"]
    assert "$['n']" in repair["content"]


def test_a_reply_still_invalid_after_max_repairs_fails_the_step(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(Reply.text("not json"), Reply.text("still not json"))
    report = run(server, json=True, max_repairs=1)
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert "AgentProtocolError" in (failed.error or "")
    assert "not valid JSON" in (failed.error or "")
    assert len(server.requests) == 2


# --- tools ---------------------------------------------------------------------------------


def test_a_tool_loop_of_three_turns(runtime: Any, server: OpenAIServer) -> None:
    server.script(
        Reply.tool_call("add", {"a": 2, "b": 3}),
        Reply.tool_calls_of(
            ("multiply", {"a": 5}),
            ("distance", {"p": {"x": 0, "y": 0}, "q": {"x": 3, "y": 4}, "unit": "km"}),
        ),
        Reply.text("The answer is 10."),
    )
    report = run(server, tools=[f"{TOOLS}:add", f"{TOOLS}:multiply", f"{TOOLS}:distance"])
    assert completed(report).attempts == 1
    assert report.output == "The answer is 10."
    first, second, third = server.requests
    declared = {t["function"]["name"]: t["function"] for t in first.body["tools"]}
    assert set(declared) == {"add", "multiply", "distance"}
    # The schema comes from the type hints, the description from the docstring's first line.
    assert declared["add"]["description"] == "Add two integers."
    assert declared["add"]["parameters"]["properties"]["a"]["type"] == "integer"
    assert declared["add"]["parameters"]["required"] == ["a", "b"]
    assert declared["distance"]["parameters"]["properties"]["unit"]["enum"] == ["m", "km"]
    # Each request carries the assistant's tool calls and one tool message per call.
    assert second.messages[-2]["tool_calls"][0]["function"]["name"] == "add"
    assert last_message(second) == {
        "role": "tool",
        "tool_call_id": second.messages[-2]["tool_calls"][0]["id"],
        "content": "5",
    }
    multiply, distance = third.messages[-2:]
    assert multiply["role"] == distance["role"] == "tool"
    assert multiply["content"] == "10.0"  # b's default, 2.0
    # The async tool ran on the shared loop.
    assert distance["content"] == '{"distance":0.005,"unit":"km"}'
    # The attempt's record: every tool call, and the usage of all three requests.
    (attempt,) = runtime.executions.attempts(report.execution_id, "ask")
    assert [(c["tool"], c["arguments"], c["outcome"]) for c in attempt.tool_calls] == [
        ("add", {"a": 2, "b": 3}, "success"),
        ("multiply", {"a": 5}, "success"),
        ("distance", {"p": {"x": 0, "y": 0}, "q": {"x": 3, "y": 4}, "unit": "km"}, "success"),
    ]
    assert (attempt.usage["tokens_in"], attempt.usage["tokens_out"]) == (30, 15)
    assert attempt.usage["endpoint"] == server.base_url


def test_a_tool_error_goes_back_to_the_model_and_the_step_completes(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(
        Reply.tool_call("lookup", {"key": "missing"}),
        Reply.tool_call("lookup", {"wrong": 1}),
        Reply.text("There is no such entry."),
    )
    report = run(server, tools=[f"{TOOLS}:lookup"])
    assert completed(report).attempts == 1
    assert report.output == "There is no such entry."
    _, second, third = server.requests
    assert last_message(second)["role"] == "tool"
    error = json.loads(last_message(second)["content"])
    assert error == {"error": "KeyError: \"no entry for 'missing'\""}
    # Arguments that do not fit the signature are an error the model can correct too.
    invalid = last_message(third)["content"]
    assert "invalid arguments" in invalid and "key: Field required" in invalid


def test_a_request_that_may_not_fit_the_budget_is_not_made(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(Reply.text("never asked"))
    text = team_yaml(
        "sequential",
        [{"id": "ask", "agent": "llm", "task": "Say hello"}],
        agents={"llm": llm(server, max_tokens=10)},
    )
    team = Team.from_yaml(text, source="openai-team.yaml")
    # The prompt alone may take more tokens than that (one per byte at worst).
    report = team.run(None, timeout=20, budget=Budget(max_tokens=20))
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert "BudgetExceeded" in (failed.error or "")
    assert server.requests == []


def test_a_model_that_keeps_calling_tools_fails_after_max_turns(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(*[Reply.tool_call("add", {"a": 1, "b": 1}) for _ in range(3)])
    report = run(server, tools=[f"{TOOLS}:add"], max_turns=3)
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert "max_turns=3" in (failed.error or "")
    # The third reply's tool call was not run: there is no turn left to report it.
    assert len(server.requests) == 3


# --- errors ------------------------------------------------------------------------------


def test_rate_limited_then_success_on_attempt_two_after_retry_after(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(
        Reply.failure(429, "Rate limit", type="requests", headers={"retry-after-ms": "300"}),
        Reply.text("ok"),
    )
    report = run(server)
    assert completed(report).attempts == 2
    assert report.output == "ok"
    first, second = server.requests
    # The policy's own delays are hundredths of a second: the server's wait was honoured.
    assert second.received_at - first.received_at >= 0.28


def test_a_server_error_is_retried(runtime: Any, server: OpenAIServer) -> None:
    server.script(Reply.failure(503, "overloaded", type="server_error"), Reply.text("ok"))
    report = run(server)
    assert completed(report).attempts == 2


def test_context_length_exceeded_fails_after_one_attempt(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(
        Reply.failure(
            400,
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9001 tokens.",
            code="context_length_exceeded",
        )
    )
    report = run(server)
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert failed.error is not None and "context length exceeded" in failed.error
    assert len(server.requests) == 1


def test_a_content_filtered_reply_fails_the_step_saying_so(
    runtime: Any, server: OpenAIServer
) -> None:
    server.script(Reply.text("", finish_reason="content_filter"))
    report = run(server)
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert "content filter" in (failed.error or "")


# --- prompts -----------------------------------------------------------------------------


def echo_prompt(request: Request) -> Reply:
    return Reply.text(str(last_message(request)["content"]))


def test_the_prompt_template_sees_task_input_upstream_outputs_and_item(
    runtime: Any, server: OpenAIServer
) -> None:
    server.default = echo_prompt
    prompt = (
        "{{ task }} | input={{ input | join('+') }}"
        " | files={{ steps.split.output.files | join(',') }}"
        " | item {{ index }}={{ item }}"
    )
    report = run(
        server,
        ["a.py", "b.py"],
        strategy="dag",
        steps=[
            {"id": "split", "agent": "split"},
            {
                "id": "each",
                "agent": "llm",
                "task": "Review",
                "for_each": "steps.split.output.files",
            },
        ],
        prompt=prompt,
    )
    completed(report, "each")
    assert report.output == [
        "Review | input=a.py+b.py | files=a.py,b.py | item 0=a.py",
        "Review | input=a.py+b.py | files=a.py,b.py | item 1=b.py",
    ]


def test_a_template_naming_an_unknown_step_fails_without_a_request(
    runtime: Any, server: OpenAIServer
) -> None:
    report = run(server, prompt="{{ steps.nowhere.output }}")
    failed = step(report)
    assert report.status == "failed" and failed.attempts == 1
    assert "prompt template" in (failed.error or "") and "nowhere" in (failed.error or "")
    assert server.requests == []


def test_a_template_cannot_reach_python_internals(runtime: Any, server: OpenAIServer) -> None:
    report = run(server, prompt="{{ input.__class__.__mro__ }}", input={"a": 1})
    assert report.status == "failed"
    assert "prompt template" in (step(report).error or "")
    assert server.requests == []


# --- usage and budget, on the adapter --------------------------------------------------------


@dataclass
class RecordingBudget:
    """A BudgetGate that prices every token at 1 µ$ and records what it is asked;
    ``room`` reservations fit, the next raises BudgetExceeded."""

    room: int = 100
    # Models with a price (None: every model).
    priced: frozenset[str] | None = None
    reserved: list[tuple[str | None, int, int | None]] = field(default_factory=list)
    settled: list[Usage | None] = field(default_factory=list)

    def price(self, usage: Usage) -> Usage:
        if self.priced is not None and usage.model not in self.priced:
            return usage
        cost = (usage.tokens_in + usage.tokens_out) / 1e6
        return Usage(**{**usage.__dict__, "cost_usd": cost})

    def reserve(self, model: str | None, tokens_in: int, tokens_out: int | None) -> Reservation:
        if len(self.reserved) >= self.room:
            raise BudgetExceeded("over budget")
        self.reserved.append((model, tokens_in, tokens_out))
        return Reservation(tokens_in + (tokens_out or 0), 0.0)

    def settle(self, reservation: Reservation, usage: Usage | None) -> Usage | None:
        self.settled.append(usage)
        return None if usage is None else self.price(usage)


def adapter(server: OpenAIServer, **fields: Any) -> OpenAIChatAgent:
    spec = parse_agent({**llm(server, **fields), "model": "gpt-test"})
    return OpenAIChatAgent(spec)  # type: ignore[arg-type]


def agent_call(budget: RecordingBudget, **kwargs: Any) -> AgentCall:
    return AgentCall(
        execution_id="e1",
        step_id="ask",
        agent="llm",
        task="Add things up",
        input={"numbers": [1, 2]},
        outputs={},
        attempt=1,
        budget=budget,
        **kwargs,
    )


def test_usage_is_summed_over_turns_and_each_request_is_reserved_and_settled(
    server: OpenAIServer,
) -> None:
    server.script(
        Reply.tool_call("add", {"a": 1, "b": 2}, prompt_tokens=100, completion_tokens=20),
        Reply.text(
            "3",
            model="gpt-test-2025",
            prompt_tokens=150,
            completion_tokens=10,
            cached_tokens=90,
            reasoning_tokens=4,
        ),
    )
    budget = RecordingBudget()
    result = adapter(server, tools=[f"{TOOLS}:add"], max_tokens=64).invoke(agent_call(budget))
    assert result.output == "3"
    assert result.usage == Usage(
        tokens_in=250,
        tokens_out=30,
        cached_tokens=90,
        reasoning_tokens=4,
        cost_usd=pytest.approx(280 / 1e6),
        model="gpt-test-2025",
        endpoint=server.base_url,
    )
    assert [(c.tool, c.arguments, c.outcome) for c in result.tool_calls] == [
        ("add", {"a": 1, "b": 2}, "success")
    ]
    # One reservation per request, for the spec's model and max_tokens, each bounding the
    # prompt it was made for from above (at least one byte per token).
    assert len(budget.reserved) == 2
    for (model, tokens_in, tokens_out), request in zip(
        budget.reserved, server.requests, strict=True
    ):
        assert (model, tokens_out) == ("gpt-test", 64)
        content = "".join(str(m.get("content") or "") for m in request.messages)
        tools = json.dumps(request.body["tools"], separators=(",", ":"))
        assert tokens_in >= len(content.encode()) + len(tools.encode())
    assert budget.reserved[1][1] > budget.reserved[0][1]
    assert [u.tokens_in if u else None for u in budget.settled] == [100, 150]


def test_usage_names_the_spec_model_when_only_it_has_a_price(server: OpenAIServer) -> None:
    # A local server reports its own name for the model the team file prices.
    server.script(Reply.text("ok", model="/models/llama-3-8b-instruct.gguf"))
    budget = RecordingBudget(priced=frozenset({"gpt-test"}))
    result = adapter(server).invoke(agent_call(budget))
    assert result.usage.model == "gpt-test"
    assert result.usage.cost_usd == pytest.approx(15 / 1e6)


def test_a_refused_request_settles_as_nothing_consumed(server: OpenAIServer) -> None:
    server.script(Reply.failure(429, "slow down", headers={"retry-after": "2"}))
    budget = RecordingBudget()
    with pytest.raises(TransientAgentError) as raised:
        adapter(server).invoke(agent_call(budget))
    assert raised.value.retry_after == 2.0
    assert budget.settled == [Usage()]


def test_a_timed_out_request_stays_spent(server: OpenAIServer) -> None:
    server.script(Reply.text("late", delay=1.0))
    budget = RecordingBudget()
    with pytest.raises(TransientAgentError, match="timed out"):
        adapter(server, timeout=0.3).invoke(agent_call(budget))
    assert budget.settled == [None]


def test_a_request_over_budget_is_not_made(server: OpenAIServer) -> None:
    server.script(Reply.tool_call("add", {"a": 1, "b": 2}), Reply.text("never asked"))
    budget = RecordingBudget(room=1)
    with pytest.raises(BudgetExceeded):
        adapter(server, tools=[f"{TOOLS}:add"]).invoke(agent_call(budget))
    assert len(server.requests) == 1
    assert server.pending() == 1


def test_no_key_variable_sends_a_placeholder(server: OpenAIServer) -> None:
    server.script(Reply.text("ok"))
    adapter(server, api_key_env=None).invoke(agent_call(RecordingBudget()))
    assert server.requests[0].authorization == "Bearer none"


def test_a_missing_key_is_secret_missing(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(SecretMissing, match=KEY_ENV):
        adapter(server).invoke(agent_call(RecordingBudget()))


def test_protocol_errors_are_permanent(server: OpenAIServer) -> None:
    assert issubclass(AgentProtocolError, PermanentAgentError)
    server.script(Reply(content=None))
    with pytest.raises(AgentProtocolError, match="neither content nor tool calls"):
        adapter(server).invoke(agent_call(RecordingBudget()))


def test_a_reply_cut_off_at_max_tokens_says_so(server: OpenAIServer) -> None:
    server.script(Reply.text('{"summary": "a long', finish_reason="length"))
    with pytest.raises(AgentProtocolError, match="cut off at max_tokens"):
        adapter(server, json=True, max_repairs=0).invoke(agent_call(RecordingBudget()))


def test_an_output_schema_that_is_not_one_fails_before_any_request(server: OpenAIServer) -> None:
    agent = adapter(server, output_schema={"type": "no-such-type"})
    with pytest.raises(PermanentAgentError, match="not a valid JSON Schema"):
        agent.invoke(agent_call(RecordingBudget()))
    assert server.requests == []
