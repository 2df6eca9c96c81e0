"""What an agent may do with its team while it runs: read and write the execution's shared
memory, send messages, ask another agent, and hand its task off.

These are interfaces: the delegation gives each attempt objects that implement them on
the store (orchestration.collaboration), and the defaults below refuse politely, so an
agent called outside an execution (a unit test calling it directly) gets a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from orchestration.errors import PermanentAgentError


class SharedMemory(Protocol):
    """The execution's shared memory, as one attempt sees it.

    Reads see what was committed when the attempt first reads (the memory is read then,
    once), plus the attempt's own writes. Writes are kept with the attempt and applied,
    each by its key's rule (last writer, append, merge, sum), when the attempt succeeds,
    exactly once: a failed attempt's writes never apply, and a retry's do not apply twice.
    """

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None:
        """Write ``value`` as is (the rule ``last_writer`` whatever the key declares)."""
        ...

    def update(self, key: str, value: Any) -> None:
        """Write ``value`` by the key's declared rule (append it, merge it, add it)."""
        ...

    def all(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Message:
    """A message between agents of one execution. ``to`` None: a broadcast."""

    id: int
    sender: str
    sender_step: str
    to: str | None
    type: str
    content: Any
    reply_to: int | None
    at: datetime


class TeamChannel(Protocol):
    """Messages and asks."""

    def inbox(self) -> tuple[Message, ...]:
        """Messages addressed to this agent, and broadcasts from other agents, delivered
        by the time the attempt first looks (the inbox is read then, once)."""
        ...

    def send(
        self, to: str, content: Any, *, type: str = "message", reply_to: int | None = None
    ) -> None:
        """Kept with the attempt and delivered when it succeeds, once."""
        ...

    def broadcast(self, content: Any, *, type: str = "message") -> None: ...

    def ask(self, agent: str, question: Any, timeout: float | None = None) -> Any:
        """Delegate ``question`` to another agent of the team and return its output."""
        ...


@dataclass(frozen=True)
class Handoff:
    """Returned by an agent instead of an output: pass this step to agent ``to``. The
    target's output becomes the step's output. ``input`` None passes the step's own."""

    to: str
    reason: str = ""
    input: Any = None


class _NoTeam:
    def _refuse(self) -> PermanentAgentError:
        return PermanentAgentError("this call is not part of an execution: it has no team")

    def get(self, key: str, default: Any = None) -> Any:
        raise self._refuse()

    def set(self, key: str, value: Any) -> None:
        raise self._refuse()

    def update(self, key: str, value: Any) -> None:
        raise self._refuse()

    def all(self) -> dict[str, Any]:
        raise self._refuse()

    def inbox(self) -> tuple[Message, ...]:
        return ()

    def send(
        self, to: str, content: Any, *, type: str = "message", reply_to: int | None = None
    ) -> None:
        raise self._refuse()

    def broadcast(self, content: Any, *, type: str = "message") -> None:
        raise self._refuse()

    def ask(self, agent: str, question: Any, timeout: float | None = None) -> Any:
        raise self._refuse()


NO_TEAM = _NoTeam()
NO_MEMORY: SharedMemory = NO_TEAM
NO_CHANNEL: TeamChannel = NO_TEAM

# Context updates an agent returns: key → value, each written by its key's rule.
ContextUpdates = Mapping[str, Any]
