"""Agents of the metrics and canvas tests. Their targets are theirs alone, so the
breakers these tests open are nobody else's (a breaker belongs to what is called)."""

from __future__ import annotations

from typing import Any

from orchestration import AgentResult, Usage
from orchestration.errors import PermanentAgentError

TOKENS_IN = 100
TOKENS_OUT = 20
MODEL = "metrics-test-model"


def uses_tokens(call: Any) -> AgentResult:
    """Reports a fixed usage on a model the test team prices."""
    return AgentResult(
        output={"seen": call.input},
        usage=Usage(tokens_in=TOKENS_IN, tokens_out=TOKENS_OUT, model=MODEL),
    )


def always_fails(call: Any) -> None:
    raise RuntimeError(f"{call.step_id} fails on purpose (attempt {call.attempt})")


def shout(call: Any) -> str:
    """The input as upper-case text: a team whose output a canvas passes on."""
    return str(call.input).upper()


def refuse(call: Any) -> None:
    raise PermanentAgentError(f"refused {call.input!r}")
