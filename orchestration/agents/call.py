"""What an agent receives and what it gives back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestration.agents.team_channel import (
    NO_CHANNEL,
    NO_MEMORY,
    ContextUpdates,
    Handoff,
    Message,
    SharedMemory,
    TeamChannel,
)


def _no_heartbeat(details: Any = None) -> None:
    return None


@dataclass(frozen=True)
class Reservation:
    """Spend held against a budget until the request it was made for is settled."""

    tokens: int
    cost_usd: float


class BudgetGate(Protocol):
    """An execution's budget and price table, as one attempt sees them.

    An adapter that knows a request's worst case (an LLM call: an upper bound of its
    prompt's tokens, and ``max_tokens`` out) reserves it before the request and settles
    it to what the server reported after. A request that does not fit raises
    BudgetExceeded and is not made. What an attempt's result reports beyond what it
    settled this way is charged when the attempt ends.
    """

    def price(self, usage: Usage) -> Usage:
        """``usage`` with its cost from the price table, unless it carries one."""
        ...

    def reserve(self, model: str | None, tokens_in: int, tokens_out: int | None) -> Reservation:
        """Hold a request's worst case. ``tokens_out`` None (no ``max_tokens``) is
        unbounded: under a budget, that raises BudgetExceeded saying so."""
        ...

    def settle(self, reservation: Reservation, usage: Usage | None) -> Usage | None:
        """Replace the reservation by ``usage``, priced (returned). None: unknown (the
        request timed out, the server may have run it), so all of it stays spent."""
        ...


class _Unlimited:
    def price(self, usage: Usage) -> Usage:
        return usage

    def reserve(self, model: str | None, tokens_in: int, tokens_out: int | None) -> Reservation:
        return Reservation(tokens_in + (tokens_out or 0), 0.0)

    def settle(self, reservation: Reservation, usage: Usage | None) -> Usage | None:
        return usage


UNLIMITED: BudgetGate = _Unlimited()


@dataclass(frozen=True)
class AgentCall:
    """One attempt of one delegation, as the agent sees it.

    ``input`` is the execution's input (in a pipeline, the previous step's output);
    ``outputs`` maps every finished step this step may see to its output, read from the
    database the first time the agent looks at it. In a map step, ``item`` is this
    call's item of the list and ``index`` its position (both None elsewhere).
    """

    execution_id: str
    step_id: str
    agent: str
    task: str | None
    input: Any
    outputs: Mapping[str, Any]
    attempt: int
    item: Any = None
    index: int | None = None
    _heartbeat: Callable[[Any], None] = field(default=_no_heartbeat, repr=False, compare=False)
    # The execution's budget, for adapters that reserve before each request they make.
    budget: BudgetGate = field(default_factory=lambda: UNLIMITED, repr=False, compare=False)
    # The execution's shared memory (call.shared.get/set/update/all).
    shared: SharedMemory = field(default_factory=lambda: NO_MEMORY, repr=False, compare=False)
    _team: TeamChannel = field(default_factory=lambda: NO_CHANNEL, repr=False, compare=False)

    @property
    def inbox(self) -> tuple[Message, ...]:
        """Messages sent to this agent, and broadcasts from other agents, delivered by the
        time this attempt first looks."""
        return self._team.inbox()

    def send(
        self, to: str, content: Any, *, type: str = "message", reply_to: int | None = None
    ) -> None:
        """Send ``content`` to agent ``to``; delivered if this attempt succeeds."""
        self._team.send(to, content, type=type, reply_to=reply_to)

    def broadcast(self, content: Any, *, type: str = "message") -> None:
        """Send ``content`` to every other agent of the team; delivered if this attempt
        succeeds."""
        self._team.broadcast(content, type=type)

    def ask(self, agent: str, question: Any, timeout: float | None = None) -> Any:
        """Delegate ``question`` to ``agent`` (a real delegation, with its policies,
        breaker, audit and usage) and return its output."""
        return self._team.ask(agent, question, timeout)

    def heartbeat(self, details: Any = None) -> None:
        """Report progress from a long-running agent (JSON details, optional).

        Keeps a step with ``heartbeat_timeout`` alive and renews the attempt's lease.
        """
        self._heartbeat(details)


@dataclass(frozen=True)
class Usage:
    """What one call (or a sum of calls) consumed, as the server reported it.

    ``cost_usd`` is None when it is unknown (a model missing from the price table):
    unknown is not free. A call that reports nothing consumed costs 0.
    """

    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    model: str | None = None
    endpoint: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.tokens_in or self.tokens_out) and not self.cost_usd

    @property
    def known_cost(self) -> float | None:
        """The cost, with nothing consumed counted as 0 and unknown left None."""
        if self.cost_usd is not None:
            return self.cost_usd
        return 0.0 if self.empty else None

    def __add__(self, other: Usage) -> Usage:
        mine, theirs = self.known_cost, other.known_cost
        return Usage(
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=None if mine is None or theirs is None else mine + theirs,
            model=self.model if self.model == other.model or other.empty else other.model,
            endpoint=self.endpoint or other.endpoint,
        )


@dataclass(frozen=True)
class ToolCall:
    """One tool call an agent made during an attempt, for the audit trail."""

    tool: str
    arguments: Any
    duration_ms: int
    # "success", or "error" with the error the model was shown.
    outcome: str
    error: str | None = None


@dataclass(frozen=True)
class AgentResult:
    """An agent may return this to report usage alongside its output."""

    output: Any
    usage: Usage = field(default_factory=Usage)
    tool_calls: tuple[ToolCall, ...] = ()
    # Shared-memory writes, each by its key's rule, applied if the attempt succeeds.
    context_updates: ContextUpdates = field(default_factory=dict)
    # Set instead of an output: the step passes to another agent.
    handoff: Handoff | None = None
