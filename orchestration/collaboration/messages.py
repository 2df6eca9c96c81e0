"""Messages as one attempt sees them: its inbox, read once when it first looks, and the
messages it sends, kept with the attempt and delivered (by the store, in the same
transaction as its memory writes) only if it succeeds."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from orchestration.agents.team_channel import Message
from orchestration.collaboration.memory import json_copy
from orchestration.errors import InvalidTeamWrite, PermanentAgentError

# The width of troupe_messages.type.
MAX_TYPE = 50


@dataclass(frozen=True)
class Inbox:
    """Messages to one agent, and the memory version when they were read."""

    version: int
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class StagedMessage:
    to: str | None  # None: every agent of the team
    type: str
    content: Any
    reply_to: int | None = None


# ``ask`` is carried out by whoever gives the attempt one (see AttemptChannel).
Asker = Callable[[str, Any, float | None], Any]


class AttemptChannel:
    """The TeamChannel of one attempt of agent ``agent``.

    ``inbox()`` holds the messages addressed to the agent, and broadcasts from other
    agents, committed when the attempt first looks (``read`` is called once, then).
    ``send`` and ``broadcast`` are checked at once (a recipient must be an agent of the
    team) and kept until the attempt ends. ``ask`` goes to ``asker``; without one it is
    refused.
    """

    def __init__(
        self,
        agent: str,
        agents: Collection[str],
        read: Callable[[], Inbox],
        asker: Asker | None = None,
    ) -> None:
        self._agent = agent
        self._agents = agents
        self._read = read
        self._asker = asker
        self._inbox: Inbox | None = None
        self._sent: list[StagedMessage] = []
        self._closed = False
        self._lock = threading.Lock()

    # --- TeamChannel -----------------------------------------------------------------

    def inbox(self) -> tuple[Message, ...]:
        with self._lock:
            if self._inbox is None:
                self._inbox = self._read()
            return self._inbox.messages

    def send(
        self, to: str, content: Any, *, type: str = "message", reply_to: int | None = None
    ) -> None:
        if not isinstance(to, str) or to not in self._agents:
            known = ", ".join(sorted(self._agents))
            raise InvalidTeamWrite(
                f"no agent {to!r:.200} in this team to send to (agents: {known})"
            )
        if reply_to is not None and (isinstance(reply_to, bool) or not isinstance(reply_to, int)):
            raise InvalidTeamWrite(f"reply_to is a message id, not {reply_to!r:.80}")
        self._stage(
            StagedMessage(to, _checked_type(type), json_copy(content, "a message"), reply_to)
        )

    def broadcast(self, content: Any, *, type: str = "message") -> None:
        self._stage(StagedMessage(None, _checked_type(type), json_copy(content, "a message")))

    def ask(self, agent: str, question: Any, timeout: float | None = None) -> Any:
        if self._asker is None:
            raise PermanentAgentError("ask is not available to this call")
        return self._asker(agent, question, timeout)

    # --- the attempt's side ----------------------------------------------------------

    @property
    def version(self) -> int | None:
        """The memory version when the inbox was read (None: it never was)."""
        found = self._inbox
        return found.version if found is not None else None

    def close(self) -> tuple[StagedMessage, ...]:
        """The messages to deliver, in order; later ones are refused (the attempt ended)."""
        with self._lock:
            self._closed = True
            return tuple(self._sent)

    def _stage(self, message: StagedMessage) -> None:
        with self._lock:
            if self._closed:
                raise InvalidTeamWrite("the attempt has ended: its message is too late")
            self._sent.append(message)


def _checked_type(kind: Any) -> str:
    if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE:
        raise InvalidTeamWrite(
            f"a message type is a string of 1 to {MAX_TYPE} characters, not {kind!r:.80}"
        )
    return kind
