"""The ``openai`` agent kind: a model behind an OpenAI-compatible chat-completions API.

One attempt is a conversation: the system message and the prompt, then as many requests
as the model's tool calls and the repairs of invalid structured replies need, bounded by
``max_turns`` and ``max_repairs``. Before each request the attempt reserves that
request's worst case against the execution's budget, and settles it to the usage the
server reports after; the attempt's usage is the sum of what was settled.

The adapter is built per call (registry.build_adapter), so construction only keeps the
spec; the client, the compiled prompt template, the tools and the schema validator are
all cached per process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped]
import openai
from openai.types.chat import ChatCompletion, ChatCompletionMessage

from orchestration.agents.call import AgentCall, AgentResult, BudgetGate, Reservation, ToolCall
from orchestration.agents.call import Usage as CallUsage
from orchestration.agents.openai_client import client_for, translate
from orchestration.agents.prompts import render_prompt
from orchestration.agents.secrets import read_secret, redact
from orchestration.agents.team_tools import HandoffRequested, with_team_tools
from orchestration.agents.tools import Tool, call_tool, load_tools
from orchestration.errors import AgentProtocolError, PermanentAgentError
from orchestration.spec import OpenAIAgentSpec

# Sent as the key when ``api_key_env`` is None (a local server that wants none): the SDK
# refuses to run without one.
NO_KEY = "none"
# Tokens a chat message costs beyond its content (role and separators: 3-4 for OpenAI's
# models), with room to spare, plus the few that prime the reply.
MESSAGE_OVERHEAD = 16
REPLY_OVERHEAD = 16
# What the model is shown of its invalid reply's problem.
_MAX_PROBLEM = 1000


class OpenAIChatAgent:
    def __init__(self, spec: OpenAIAgentSpec) -> None:
        self.spec = spec

    def invoke(self, call: AgentCall) -> AgentResult:
        spec = self.spec
        tools = load_tools(spec.tools)
        if spec.team_tools:
            tools = with_team_tools(tools, call)
        if spec.output_schema is not None:
            # A schema that is not one fails the attempt before anything is spent.
            _validator(_schema_key(spec.output_schema))
        api_key = read_secret(spec.api_key_env) if spec.api_key_env is not None else NO_KEY
        conversation = _Conversation()
        if spec.system is not None:
            conversation.add({"role": "system", "content": spec.system})
        prompt = render_prompt(spec.prompt, call)
        if spec.json_output and not _mentions_json(spec.system, prompt):
            # OpenAI refuses response_format json_object unless a message says "JSON".
            conversation.add({"role": "system", "content": "Reply with a JSON object."})
        conversation.add({"role": "user", "content": prompt})
        return _Attempt(
            spec=spec,
            call=call,
            client=client_for(spec.base_url, api_key),
            tools=tools,
            conversation=conversation,
            deadline=time.monotonic() + spec.timeout,
        ).run()


@dataclass
class _Conversation:
    """The messages so far, and an upper bound of the prompt tokens they cost."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    # A BPE token covers at least one byte, so the UTF-8 size of the messages (as JSON:
    # a little more than their content) bounds their tokens from above.
    token_bound: int = 0

    def add(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.token_bound += _json_bytes(message) + MESSAGE_OVERHEAD


@dataclass
class _Attempt:
    spec: OpenAIAgentSpec
    call: AgentCall
    client: openai.OpenAI
    tools: dict[str, Tool]
    conversation: _Conversation
    deadline: float
    usage: CallUsage = field(default_factory=CallUsage)
    tool_calls: list[ToolCall] = field(default_factory=list)
    requests: int = 0

    def run(self) -> AgentResult:
        spec = self.spec
        fixed = self._fixed_request()
        # The tools and the response format are part of every prompt.
        fixed_bound = _json_bytes(fixed) + REPLY_OVERHEAD
        # Turns are the requests of the tool loop; repairs are counted on their own.
        turns = repairs = 0
        while True:
            message, finish_reason = self._complete(fixed, fixed_bound)
            if message.tool_calls:
                turns += 1
                if turns >= spec.max_turns:
                    raise AgentProtocolError(
                        f"the model was still calling tools after max_turns={spec.max_turns}"
                    )
                try:
                    self._run_tools(message)
                except HandoffRequested as requested:
                    # The model handed the task on: the attempt ends here, and its
                    # step goes to that agent (what it used so far is its usage).
                    return AgentResult(
                        output=None,
                        usage=self.usage,
                        tool_calls=tuple(self.tool_calls),
                        handoff=requested.handoff,
                    )
                continue
            if message.content is None:
                raise AgentProtocolError("the model's reply has neither content nor tool calls")
            if not spec.structured:
                return self._result(message.content)
            value, problem = _parse(message.content, spec.output_schema)
            if problem is None:
                return self._result(value)
            if finish_reason == "length":
                problem += " (the reply was cut off at max_tokens)"
            if repairs >= spec.max_repairs:
                raise AgentProtocolError(
                    redact(
                        f"the model's reply is not valid after {repairs} "
                        f"repair{'s' if repairs != 1 else ''}: {problem}"
                    )
                )
            repairs += 1
            self.conversation.add({"role": "assistant", "content": message.content})
            self.conversation.add({"role": "user", "content": _repair_request(problem)})

    def _fixed_request(self) -> dict[str, Any]:
        spec = self.spec
        request: dict[str, Any] = {"model": spec.model_name}
        if self.tools:
            request["tools"] = [tool.schema() for tool in self.tools.values()]
        if spec.output_schema is not None:
            # Not ``strict``: OpenAI's strict mode accepts only a subset of JSON Schema
            # (every property required, no additionalProperties). The reply is checked
            # here against the whole schema instead, and repaired if it fails.
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": spec.output_schema},
            }
        elif spec.json_output:
            request["response_format"] = {"type": "json_object"}
        if spec.temperature is not None:
            request["temperature"] = spec.temperature
        if spec.max_tokens is not None:
            request[_max_tokens_parameter(spec.base_url)] = spec.max_tokens
        return request

    def _complete(
        self, fixed: Mapping[str, Any], fixed_bound: int
    ) -> tuple[ChatCompletionMessage, str]:
        """One request: reserve, call, settle; the reply's message and finish reason."""
        spec, budget = self.spec, self.call.budget
        reservation = budget.reserve(
            spec.model_name, self.conversation.token_bound + fixed_bound, spec.max_tokens
        )
        try:
            completion = self.client.chat.completions.create(
                **fixed,
                # Plain dicts, the wire format; the SDK's TypedDicts add nothing here.
                messages=cast(Any, self.conversation.messages),
                # What is left of the attempt: a request must not outlive the attempt's
                # time limit (in a helper thread, a cut-off call runs on unobserved).
                timeout=max(0.01, self.deadline - time.monotonic()),
            )
        except openai.APIStatusError as exc:
            # The server refused it: nothing was generated.
            self._settle(budget, reservation, CallUsage())
            raise translate(exc, spec.base_url) from None
        except openai.OpenAIError as exc:
            # Timed out or cut off: the server may have run it, so its cost is unknown.
            self._settle(budget, reservation, None)
            raise translate(exc, spec.base_url) from None
        except BaseException:
            self._settle(budget, reservation, None)
            raise
        self.requests += 1
        if not isinstance(completion, ChatCompletion):
            self._settle(budget, reservation, None)
            raise AgentProtocolError(f"{spec.base_url} did not reply with a chat completion")
        self._settle(budget, reservation, self._usage_of(completion))
        self.call.heartbeat({"requests": self.requests, "tool_calls": len(self.tool_calls)})
        if not completion.choices:
            raise AgentProtocolError(f"{spec.base_url} replied with no choices")
        choice = completion.choices[0]
        if choice.finish_reason == "content_filter":
            raise PermanentAgentError("content filter: the model's reply was withheld")
        if choice.message.refusal:
            raise PermanentAgentError(
                redact(f"the model refused: {' '.join(choice.message.refusal.split())[:500]}")
            )
        return choice.message, choice.finish_reason

    def _usage_of(self, completion: ChatCompletion) -> CallUsage | None:
        reported = completion.usage
        if reported is None:
            # Not reported (some local servers): unknown, so the reservation stays spent.
            return None
        prompt_details = reported.prompt_tokens_details
        completion_details = reported.completion_tokens_details
        return CallUsage(
            tokens_in=reported.prompt_tokens,
            tokens_out=reported.completion_tokens,
            cached_tokens=(prompt_details.cached_tokens or 0) if prompt_details else 0,
            reasoning_tokens=(
                (completion_details.reasoning_tokens or 0) if completion_details else 0
            ),
            model=self._model_of(completion),
            endpoint=self.spec.base_url,
        )

    def _model_of(self, completion: ChatCompletion) -> str:
        """The model the server says answered, unless only the spec's name has a price.

        A server names the model as it knows it (a local path, a provider's id, an
        Azure deployment's model), while prices are written for the team file's name,
        which is also what the request was reserved as: priced under a name the table
        does not know, a request's cost would be unknown and go uncounted in a budget.
        """
        spec_model, reported = self.spec.model_name, completion.model
        if not reported or reported == spec_model:
            return spec_model
        budget = self.call.budget
        if _unpriced(budget, reported) and not _unpriced(budget, spec_model):
            return spec_model
        return reported

    def _settle(
        self, budget: BudgetGate, reservation: Reservation, usage: CallUsage | None
    ) -> None:
        priced = budget.settle(reservation, usage)
        if priced is not None:
            self.usage = self.usage + priced

    def _run_tools(self, message: ChatCompletionMessage) -> None:
        calls = message.tool_calls or []
        wire_calls: list[dict[str, Any]] = []
        for tool_call in calls:
            if tool_call.type != "function":
                raise AgentProtocolError(
                    f"the model called a {tool_call.type!r} tool; only functions are declared"
                )
            wire_calls.append(
                {
                    "id": tool_call.id,
                    "type": "function",
                    "function": {
                        "name": tool_call.function.name,
                        "arguments": tool_call.function.arguments,
                    },
                }
            )
        self.conversation.add(
            {"role": "assistant", "content": message.content, "tool_calls": wire_calls}
        )
        for wire in wire_calls:
            started = time.perf_counter()
            try:
                reply = call_tool(
                    self.tools, wire["function"]["name"], wire["function"]["arguments"]
                )
            except HandoffRequested as requested:
                self.tool_calls.append(
                    ToolCall(
                        tool=wire["function"]["name"],
                        arguments=requested.arguments,
                        duration_ms=int((time.perf_counter() - started) * 1000),
                        outcome="success",
                    )
                )
                raise
            self.tool_calls.append(reply.record)
            self.conversation.add(
                {"role": "tool", "tool_call_id": wire["id"], "content": reply.content}
            )
            self.call.heartbeat({"requests": self.requests, "tool_calls": len(self.tool_calls)})

    def _result(self, output: Any) -> AgentResult:
        return AgentResult(output=output, usage=self.usage, tool_calls=tuple(self.tool_calls))


def _unpriced(budget: BudgetGate, model: str) -> bool:
    return budget.price(CallUsage(tokens_in=1, model=model)).cost_usd is None


def _max_tokens_parameter(base_url: str) -> str:
    # OpenAI's own API takes max_completion_tokens (its reasoning models refuse
    # max_tokens); OpenAI-compatible servers (vLLM, llama.cpp, Ollama...) all take
    # max_tokens, and not all of them know the newer name.
    host = urlsplit(base_url).hostname or ""
    return "max_completion_tokens" if host == "api.openai.com" else "max_tokens"


def _mentions_json(system: str | None, prompt: str) -> bool:
    return "json" in prompt.lower() or (system is not None and "json" in system.lower())


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


# --- structured output ------------------------------------------------------------------


def _parse(content: str, schema: dict[str, Any] | None) -> tuple[Any, str | None]:
    """The reply as JSON and None, or None and what is wrong with it."""
    try:
        value = json.loads(_unfenced(content), parse_constant=_no_constant)
    except ValueError as exc:
        return None, f"the reply is not valid JSON: {exc}"
    if schema is None:
        return value, None
    validator = _validator(_schema_key(schema))
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return value, None
    where = "$" + "".join(f"[{part!r}]" for part in error.absolute_path)
    problem = f"the reply does not match the output schema at {where}: {error.message}"
    return None, problem[:_MAX_PROBLEM]


def _unfenced(content: str) -> str:
    # Many models wrap JSON in a Markdown code fence even when asked not to.
    text = content.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        return text[text.index("\n") + 1 : -3]
    return text


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and an output holding them cannot be stored.
    raise ValueError(f"{name} is not a JSON value")


def _schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        problem = f"output_schema is not a valid JSON Schema: {exc.message}"
        raise PermanentAgentError(problem) from None
    return cls(schema)


def _repair_request(problem: str) -> str:
    return (
        f"Your reply cannot be used: {problem}\n"
        "Reply again with only the corrected JSON, nothing else."
    )
