"""Tools for an ``openai`` agent's team (``team_tools: true``): its shared memory, its
messages, and delegation (ask another agent, hand the task off), as function tools the
model calls like any other (each call is recorded with its attempt). They act through
the attempt's call (``call.shared``, ``call.send``, ``call.broadcast``, ``call.ask``),
so what the model writes or sends is staged with the attempt like a Python agent's:
applied once, and only if the attempt succeeds; a question is a delegation of its own;
a handoff ends the attempt and passes its step on, as a Python agent's ``Handoff``.

A team tool is a function whose first parameter is the ``AgentCall``, registered with
``@team_tool``: its other parameters, typed, are what the model sees and gives (their
schema, as for any tool, comes from the type hints), and the first line of its
docstring is the description. Adding one is adding such a function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Annotated, Any, TypeVar

from pydantic import Field

from orchestration.agents.call import AgentCall
from orchestration.agents.team_channel import Handoff
from orchestration.agents.tools import Tool, tool_of
from orchestration.errors import AgentError, AgentLoadError, InvalidTeamWrite, PermanentAgentError

F = TypeVar("F", bound=Callable[..., Any])

# Every team tool, by the name the model calls it.
_TEAM_TOOLS: dict[str, Tool] = {}


def team_tool(function: F) -> F:
    """Register ``function`` (first parameter: the AgentCall) as a team tool."""
    name = function.__name__
    if name in _TEAM_TOOLS:
        raise ValueError(f"a team tool named {name!r} is registered already")
    _TEAM_TOOLS[name] = tool_of(function, name, f"team:{name}", given=1)
    return function


def team_tools(call: AgentCall) -> dict[str, Tool]:
    """The team tools, acting for ``call``'s attempt."""
    return {
        name: replace(tool, function=partial(tool.function, call))
        for name, tool in _TEAM_TOOLS.items()
    }


def with_team_tools(tools: Mapping[str, Tool], call: AgentCall) -> dict[str, Tool]:
    """``tools`` and the team tools; a tool of the agent's own may not take a team
    tool's name."""
    team = team_tools(call)
    for name, tool in tools.items():
        if name in team:
            raise AgentLoadError(
                f"tool {tool.target!r} would be called {name!r}, like the team tool "
                "team_tools: true gives"
            )
    return {**tools, **team}


def _refused(exc: InvalidTeamWrite) -> ValueError:
    # The model asked for something it cannot have (an unknown agent, a value its key's
    # rule cannot take): told so, it can correct itself. Raised as is, the error would
    # end the attempt (a tool's agent error means to).
    return ValueError(str(exc))


Key = Annotated[str, Field(description="the key, a name of up to 200 characters")]


@team_tool
def memory_read(call: AgentCall, key: Key) -> Any:
    """Read a key of the team's shared memory (null if it was never written)."""
    return call.shared.get(key)


@team_tool
def memory_write(
    call: AgentCall,
    key: Key,
    value: Annotated[Any, Field(description="any JSON value")],
) -> dict[str, Any]:
    """Write a key of the shared memory by its declared rule: replace, append, merge or add."""
    try:
        call.shared.update(key, value)
    except InvalidTeamWrite as exc:
        raise _refused(exc) from None
    return {"written": key}


@team_tool
def memory_list(call: AgentCall) -> dict[str, Any]:
    """Every key of the team's shared memory with its value."""
    return call.shared.all()


@team_tool
def send_message(
    call: AgentCall,
    to: Annotated[str, Field(description="the name of the agent to send it to")],
    content: Annotated[Any, Field(description="the message: text or any JSON value")],
) -> dict[str, Any]:
    """Send a message to another agent of the team (delivered when this step succeeds)."""
    try:
        call.send(to, content)
    except InvalidTeamWrite as exc:
        raise _refused(exc) from None
    return {"sent_to": to}


@team_tool
def broadcast(
    call: AgentCall,
    content: Annotated[Any, Field(description="the message: text or any JSON value")],
) -> dict[str, Any]:
    """Send a message to every agent of the team (delivered when this step succeeds)."""
    try:
        call.broadcast(content)
    except InvalidTeamWrite as exc:
        raise _refused(exc) from None
    return {"sent_to": "everyone"}


class HandoffRequested(AgentError):
    """Raised by the ``hand_off`` tool: the model's turn ends and its step goes to
    another agent (the adapter returns the handoff; nothing fails)."""

    def __init__(self, handoff: Handoff, arguments: dict[str, Any]) -> None:
        self.handoff = handoff
        self.arguments = arguments
        super().__init__(f"handed off to {handoff.to}")


Agent = Annotated[str, Field(description="the name of another agent of the team")]


@team_tool
def ask_agent(
    call: AgentCall,
    agent: Agent,
    question: Annotated[str, Field(description="the question, in full")],
) -> Any:
    """Ask another agent of the team a question and get its answer."""
    try:
        return call.ask(agent, question)
    except (PermanentAgentError, TimeoutError) as exc:
        # Unknown agent, or it could not answer: the model is told and may go on.
        raise ValueError(str(exc)) from None


@team_tool
def hand_off(
    call: AgentCall,
    to: Agent,
    reason: Annotated[str, Field(description="why that agent should do it")],
) -> None:
    """Hand this whole task to another agent of the team; its answer becomes the result.
    Ends your turn."""
    raise HandoffRequested(Handoff(to, reason), {"to": to, "reason": reason})
