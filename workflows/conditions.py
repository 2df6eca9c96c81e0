"""Expressions in CEL: `when` conditions, `for_each` lists and keys (`concurrency.key`).
Safe by construction, compiled once; a condition is false on missing data.

Team files are user input, so expressions are written in the Common Expression Language
(cel-python): it cannot call Python, and a malformed expression fails at validation.
They see ``input`` and ``steps.<id>.output`` / ``steps.<id>.status``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
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

# cel-python parses and evaluates by recursion, and its compile time grows with the text:
# a team file's expressions are bounded before cel-python sees them. About five Python
# frames per tree level, within the 2,500 cel-python allows, leave room for a worker's stack.
MAX_EXPRESSION_CHARS = 2_000
MAX_EXPRESSION_NESTING = 16  # brackets: ( [ {
MAX_EXPRESSION_DEPTH = 200  # levels of the parsed tree (a 16-deep bracket nest is ~170)
# Compiling costs about 0.5 ms plus 15 µs a character: these keep a team's total well
# under a second. Within the compile cache, so a plan recompiles none of them.
MAX_TEAM_EXPRESSIONS = 500
MAX_TEAM_EXPRESSION_CHARS = 20_000
_OPENING, _CLOSING = frozenset("([{"), frozenset(")]}")


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


class ListExpressionError(ValueError):
    """A ``for_each`` expression did not give a list."""


def evaluate_list(
    condition: Condition, input_value: Any, steps: dict[str, dict[str, Any]]
) -> list[Any]:
    """The JSON list a ``for_each`` expression gives; ListExpressionError otherwise."""
    activation = {"input": json_to_cel(input_value), "steps": json_to_cel(steps)}
    try:
        result = condition._program.evaluate(activation)
    except CELEvalError as exc:
        raise ListExpressionError(
            f"`{condition.expression}` could not be evaluated: {_first_line(exc)}"
        ) from None
    if isinstance(result, CELEvalError):
        raise ListExpressionError(
            f"`{condition.expression}` could not be evaluated: {_first_line(result)}"
        )
    if not isinstance(result, list):
        raise ListExpressionError(
            f"`{condition.expression}` gave {type(result).__name__}, not a list"
        )
    return [_plain(value) for value in result]


def evaluate_key(condition: Condition, input_value: Any) -> str | None:
    """The text a key expression (``concurrency.key``) gives over ``input``: a string as
    it is, any other value as JSON; None when it cannot be evaluated."""
    try:
        result = condition._program.evaluate({"input": json_to_cel(input_value)})
    except CELEvalError:
        return None
    if isinstance(result, CELEvalError):
        return None
    value = _plain(result)
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _plain(value: Any) -> Any:
    """A CEL value as plain JSON (CEL's own types subclass Python's)."""
    if isinstance(value, BoolType):
        return bool(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def check_expression_bounds(expression: str) -> None:
    """Refuse, cheaply and before parsing, an expression too long or too deeply nested."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ConditionSyntaxError(
            f"expression of {len(expression):,} characters; at most {MAX_EXPRESSION_CHARS:,}"
        )
    depth = deepest = 0
    for char in _STRING_LITERAL.sub("''", expression):
        if char in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSING:
            depth -= 1
    if deepest > MAX_EXPRESSION_NESTING:
        raise ConditionSyntaxError(
            f"expression nested {deepest} brackets deep; at most {MAX_EXPRESSION_NESTING}"
        )


def check_expression_budget(expressions: Iterable[str]) -> None:
    """Refuse a team whose expressions together would take too long to compile."""
    distinct = set(expressions)
    if len(distinct) > MAX_TEAM_EXPRESSIONS:
        raise ConditionSyntaxError(
            f"{len(distinct):,} distinct expressions; at most {MAX_TEAM_EXPRESSIONS:,} a team"
        )
    total = sum(map(len, distinct))
    if total > MAX_TEAM_EXPRESSION_CHARS:
        raise ConditionSyntaxError(
            f"expressions of {total:,} characters in all; "
            f"at most {MAX_TEAM_EXPRESSION_CHARS:,} a team"
        )


@lru_cache(maxsize=1024)
def compile_condition(expression: str) -> Condition:
    check_expression_bounds(expression)
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
    # Operators chain without brackets (`!!!!x`, `1+1+1…`): only the tree shows the depth
    # that evaluation will recurse to.
    if _tree_depth(ast) > MAX_EXPRESSION_DEPTH:
        raise ConditionSyntaxError(
            f"expression `{_one_line(expression)}` is nested too deeply to evaluate "
            "(too many chained operators or brackets)"
        )
    return Condition(expression, environment.program(ast))


def _tree_depth(tree: Any) -> int:
    deepest = 0
    pending = [(tree, 1)]
    while pending:
        node, depth = pending.pop()
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in getattr(node, "children", ()))
    return deepest


def referenced_steps(expression: str) -> frozenset[str]:
    """Step ids an expression reads as ``steps.<id>``, ignoring string literals."""
    return frozenset(_STEP_REFERENCE.findall(_STRING_LITERAL.sub("''", expression)))


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    line = line.split(" (in activation")[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _one_line(expression: str, limit: int = 80) -> str:
    # Error messages quote the expression, but never more than a glance of it.
    line = " ".join(expression.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


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
