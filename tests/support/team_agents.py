"""Agents for the handoff and ask tests. Each says who it is and what it was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestration import AgentCall, Handoff


def specialist(call: AgentCall) -> dict[str, Any]:
    """Any agent that does the work itself: who ran, on what task and input."""
    return {"by": call.agent, "task": call.task, "input": call.input}


def passes_to_writer(call: AgentCall) -> Handoff:
    return Handoff("writer", reason="copy is the writer's job", input={"brief": call.input})


def passes_to_editor(call: AgentCall) -> Handoff:
    return Handoff("editor", reason="needs editing")


def passes_back_to_lead(call: AgentCall) -> Handoff:
    return Handoff("lead", reason="back to you")


def asks_b(call: AgentCall) -> dict[str, Any]:
    return {"a": call.ask("b", {"question": "what does b say?"})}


def asks_c(call: AgentCall) -> dict[str, Any]:
    return {"b": call.ask("c", "what does c say?")}


def answers(call: AgentCall) -> dict[str, Any]:
    return {"c": call.input, "task": call.task}


def counted_answer(call: AgentCall) -> str:
    """Notes each call in the file its question names."""
    with Path(call.input["log"]).open("a", encoding="utf-8") as log:
        log.write(f"{call.step_id} {call.attempt}\n")
    return "forty-two"


def asks_then_fails_once(call: AgentCall) -> str:
    """Asks, then fails its first attempt: the retry must not ask again."""
    answer = call.ask("oracle", {"log": call.input["log"], "q": "the answer?"})
    if call.attempt == 1:
        raise RuntimeError("first attempt fails after asking")
    return f"got {answer}"


def passes_to_recorder(call: AgentCall) -> Handoff:
    """Hands off to ``recorder`` (tests.support.faults:record), passing its own input."""
    return Handoff("recorder", reason="the recorder does this")
