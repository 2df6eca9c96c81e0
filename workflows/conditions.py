"""`when` conditions in CEL: safe by construction, compiled once, false on missing data.

Team files are user input, so conditions are written in the Common Expression Language
(cel-python): it cannot call Python, and a malformed expression fails at validation.
Conditions see ``input`` and ``steps.<id>.output`` / ``steps.<id>.status``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError

# `steps` as a root name only: `input.steps.x` is a field of the input, not a step.
_STEP_REFERENCE = re.compile(r"(?<![\w.])(?<!\.\s)steps\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)")
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


class ConditionSyntaxError(ValueError):
    """The expression is not valid CEL."""


@dataclass(frozen=True)
class ConditionOutcome:
    value: bool
    reason: str


class Condition:
    def __init__(self, expression: str, program: Any) -> None:
        self.expression = expression
        self._program = program

    def evaluate(self, input_value: Any, steps: dict[str, dict[str, Any]]) -> ConditionOutcome:
        activation = {
            "input": json_to_cel(input_value),
            "steps": json_to_cel(steps),
        }
        try:
            result = self._program.evaluate(activation)
        except CELEvalError as exc:
            # A missing field makes the condition false, with the reason on record.
            return ConditionOutcome(
                False, f"`{self.expression}` could not be evaluated: {_first_line(exc)}"
            )
        if isinstance(result, CELEvalError):
            return ConditionOutcome(
                False, f"`{self.expression}` could not be evaluated: {_first_line(result)}"
            )
        if not isinstance(result, bool | BoolType):
            return ConditionOutcome(False, f"`{self.expression}` gave {result!r}, not a boolean")
        return ConditionOutcome(bool(result), f"`{self.expression}` is {str(bool(result)).lower()}")


@lru_cache(maxsize=1024)
def compile_condition(expression: str) -> Condition:
    environment = celpy.Environment()
    try:
        ast = environment.compile(expression)
    except CELParseError as exc:
        line, column = _error_position(expression, exc)
        where = (
            f"line {line}, column {column}" if "\n" in expression.strip() else f"column {column}"
        )
        raise ConditionSyntaxError(
            f"malformed expression `{_one_line(expression)}` (syntax error at {where})"
        ) from None
    return Condition(expression, environment.program(ast))


def referenced_steps(expression: str) -> frozenset[str]:
    """Step ids an expression reads as ``steps.<id>``, ignoring string literals."""
    return frozenset(_STEP_REFERENCE.findall(_STRING_LITERAL.sub("''", expression)))


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    line = line.split(" (in activation")[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _one_line(expression: str) -> str:
    return " ".join(expression.split())


def _error_position(expression: str, exc: BaseException) -> tuple[int, int]:
    """cel-python prints the offending source line with a caret under the error."""
    text = str(exc.args[0] if exc.args else exc).splitlines()
    for i, line in enumerate(text[1:], start=1):
        if line.strip() == "^":
            source = text[i - 1]
            lines = expression.splitlines() or [expression]
            number = next((n for n, s in enumerate(lines, 1) if s == source), 1)
            return number, line.index("^") + 1
    return 1, 1
