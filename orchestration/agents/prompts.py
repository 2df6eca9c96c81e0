"""The user message of an ``openai`` agent: its ``prompt`` template, or a default.

A prompt is a Jinja2 template from a team file, which is untrusted input: it runs in
Jinja's immutable sandbox (no reaching Python internals, no mutating the call's input),
with StrictUndefined (a misspelt name is an error, not an empty string). Its output and
the one-expression ways to build a huge value (``"x" * 10**10``) are bounded; anything
slower is cut off by the attempt's time limit. Templates are compiled once per process.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestration.agents.call import AgentCall
from orchestration.errors import PermanentAgentError

# A rendered prompt larger than this is a template bug (a model's context is far
# smaller); rendering stops there rather than filling the worker's memory.
MAX_PROMPT_CHARS = 4_000_000
# ``"x" * n`` and ``[..] * n`` in a template: the largest result allowed.
_MAX_REPEAT = 1_000_000
_MAX_POWER_BITS = 4096


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    # The sandbox guards attributes and calls but not arithmetic: ``"x" * 10**10`` would
    # allocate all it asks for. These two operators are checked before they run.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > _MAX_REPEAT
                ):
                    raise PermanentAgentError(
                        f"prompt template: a repetition of {count} is too large"
                    )
            return operator.mul(left, right)
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left).bit_length() * right > _MAX_POWER_BITS
        ):
            raise PermanentAgentError("prompt template: a power is too large")
        return operator.pow(left, right)


_environment = _PromptEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=256)
def compile_prompt(source: str) -> Template:
    """The compiled template; PermanentAgentError naming the syntax problem."""
    try:
        return _environment.from_string(source)
    except TemplateSyntaxError as exc:
        raise PermanentAgentError(f"prompt template: line {exc.lineno}: {exc.message}") from None


class _Steps(Mapping[str, Mapping[str, Any]]):
    """``steps.<id>.output`` over the call's outputs, read only if the template looks
    (the call reads them from the database the first time they are touched)."""

    def __init__(self, outputs: Mapping[str, Any]) -> None:
        self._outputs = outputs

    def __getitem__(self, step_id: str) -> Mapping[str, Any]:
        return {"output": self._outputs[step_id]}

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)


def render_prompt(source: str | None, call: AgentCall) -> str:
    """The user message for ``call``: the template rendered, or the default prompt."""
    if source is None:
        return default_prompt(call)
    template = compile_prompt(source)
    context = {
        "task": call.task,
        "input": call.input,
        "steps": _Steps(call.outputs),
        "item": call.item,
        "index": call.index,
    }
    return _bounded(lambda: template.generate(context))


def _bounded(chunks: Callable[[], Iterator[str]]) -> str:
    parts: list[str] = []
    size = 0
    try:
        for chunk in chunks():
            size += len(chunk)
            if size > MAX_PROMPT_CHARS:
                raise PermanentAgentError(
                    f"prompt template: the prompt exceeds {MAX_PROMPT_CHARS:,} characters"
                )
            parts.append(chunk)
    except TemplateError as exc:
        # UndefinedError, SecurityError and the like: the message names the problem
        # ("'steps' has no attribute 'scan'").
        raise PermanentAgentError(f"prompt template: {exc.message or exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise PermanentAgentError(f"prompt template: {type(exc).__name__}: {exc}") from None
    return "".join(parts)


def default_prompt(call: AgentCall) -> str:
    """The task, then what the step was given, as JSON: its input, its item of a map
    step, and the output of every step it may see."""
    sections: list[str] = []
    if call.task:
        sections.append(call.task)
    if call.input is not None:
        sections.append(f"Input:\n{_json(call.input)}")
    if call.index is not None or call.item is not None:
        sections.append(f"Item {call.index}:\n{_json(call.item)}")
    for step_id, output in call.outputs.items():
        sections.append(f"Output of step {step_id}:\n{_json(output)}")
    return "\n\n".join(sections) or "(no task and no input)"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)
