"""Tools an ``openai`` agent's model may call: importable functions, sync or async.

A tool's JSON schema comes from its signature and type hints through a pydantic model,
and the same model validates the arguments the model sends, so what the model is told
and what the function receives cannot drift apart. The first line of the docstring is
the tool's description. A tool is built once per process and target.
"""

from __future__ import annotations

import inspect
import json
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import to_json

from orchestration.agents.call import ToolCall
from orchestration.agents.event_loop import shared_loop
from orchestration.agents.python_callable import load_target
from orchestration.agents.secrets import redact
from orchestration.errors import AgentError, AgentLoadError

# OpenAI's rule for function names.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_MAX_NAME = 64
# What the model is shown of a tool's error.
_MAX_ERROR = 2000


@dataclass(frozen=True)
class Tool:
    name: str
    target: str
    description: str | None
    function: Callable[..., Any]
    arguments: type[BaseModel]
    # The names of positional-only parameters, which cannot be passed by keyword.
    positional: tuple[str, ...]

    def schema(self) -> dict[str, Any]:
        """The tool as the chat-completions API declares one."""
        function: dict[str, Any] = {
            "name": self.name,
            "parameters": self.arguments.model_json_schema(by_alias=True),
        }
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@lru_cache(maxsize=512)
def load_tool(target: str) -> Tool:
    """The tool ``package.module:function``; AgentLoadError if it cannot be one."""
    function = load_target(target)
    return tool_of(function, target.rpartition(":")[2].rpartition(".")[2], target)


def tool_of(function: Callable[..., Any], name: str, target: str, *, given: int = 0) -> Tool:
    """``function`` as the tool ``name``. Its first ``given`` parameters are not the
    model's to give: the caller binds them (see ``team_tools``)."""
    if len(name) > _MAX_NAME or not set(name) <= _NAME_CHARS:
        raise AgentLoadError(f"tool {target!r}: {name!r} is not a valid function name")
    try:
        signature = inspect.signature(function)
        # Resolves string annotations (``from __future__ import annotations``) against
        # the function's own module, as pydantic would.
        hints = typing.get_type_hints(function, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise AgentLoadError(f"tool {target!r}: cannot read its signature: {exc}") from None
    fields: dict[str, Any] = {}
    positional: list[str] = []
    for index, parameter in enumerate(list(signature.parameters.values())[given:]):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise AgentLoadError(
                f"tool {target!r}: *{parameter.name} has no schema; name every parameter"
            )
        if parameter.kind is parameter.POSITIONAL_ONLY:
            positional.append(parameter.name)
        default = ... if parameter.default is parameter.empty else parameter.default
        # Fields get neutral names and the parameter's name as alias: a parameter may be
        # called ``json`` or ``schema``, which a pydantic field may not shadow.
        fields[f"p{index}"] = (hints.get(parameter.name, Any), Field(default, alias=parameter.name))
    try:
        arguments = create_model(
            f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        arguments.model_json_schema(by_alias=True)
    except Exception as exc:  # pydantic's schema errors have no common base
        problem = f"its type hints have no JSON schema: {exc}"
        raise AgentLoadError(f"tool {target!r}: {problem}") from None
    doc = inspect.getdoc(function)
    description = doc.strip().splitlines()[0] if doc and doc.strip() else None
    return Tool(name, target, description, function, arguments, tuple(positional))


def load_tools(targets: Iterable[str]) -> dict[str, Tool]:
    """Tools by the name the model calls them; two tools may not share one."""
    tools: dict[str, Tool] = {}
    for target in targets:
        tool = load_tool(target)
        other = tools.get(tool.name)
        if other is not None:
            raise AgentLoadError(
                f"tools {other.target!r} and {target!r} would both be called {tool.name!r}"
            )
        tools[tool.name] = tool
    return tools


@dataclass(frozen=True)
class ToolReply:
    """What goes back to the model in a ``tool`` message, and the audit record."""

    content: str
    record: ToolCall


def call_tool(tools: dict[str, Tool], name: str, raw_arguments: str) -> ToolReply:
    """Run one tool call the model asked for.

    Whatever goes wrong in the call (no such tool, arguments that are not JSON or do not
    fit the signature, an exception in the tool) goes back to the model as
    ``{"error": ...}``, so it can correct itself: it is not the attempt's failure. A tool
    that raises one of Troupe's agent errors (PermanentAgentError,
    TransientAgentError...) means it, and ends the attempt.
    """
    started = time.perf_counter()
    arguments: Any = raw_arguments
    try:
        try:
            arguments = json.loads(raw_arguments) if raw_arguments.strip() else {}
        except ValueError as exc:
            raise _ToolProblem(f"arguments are not valid JSON: {exc}") from None
        tool = tools.get(name)
        if tool is None:
            known = ", ".join(sorted(tools)) or "none"
            raise _ToolProblem(f"there is no tool named {name!r} (tools: {known})")
        if not isinstance(arguments, dict):
            raise _ToolProblem("arguments must be a JSON object")
        result = _invoke(tool, arguments)
        content = to_json(result, fallback=str).decode()
    except AgentError:
        raise
    except Exception as exc:
        described = str(exc) if isinstance(exc, _ToolProblem) else f"{type(exc).__name__}: {exc}"
        error = redact(described)[:_MAX_ERROR]
        return ToolReply(
            content=json.dumps({"error": error}, ensure_ascii=False),
            record=ToolCall(name, arguments, _ms_since(started), "error", error),
        )
    return ToolReply(content, ToolCall(name, arguments, _ms_since(started), "success"))


class _ToolProblem(Exception):
    """A tool call that could not be made as asked."""


def _invoke(tool: Tool, arguments: dict[str, Any]) -> Any:
    try:
        validated = tool.arguments.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise _ToolProblem(f"invalid arguments: {problems}") from None
    values = {
        field.alias or key: getattr(validated, key)
        for key, field in type(validated).model_fields.items()
    }
    positional = [values.pop(name) for name in tool.positional]
    result = tool.function(*positional, **values)
    if inspect.isawaitable(result):
        result = shared_loop.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
