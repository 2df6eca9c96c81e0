"""One attempt's collaboration: its shared memory and channel, made from what its team
declares, and at its end the batch the store applies if it succeeded."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from orchestration.agents.call import AgentResult
from orchestration.collaboration.memory import AttemptMemory, MemorySnapshot, StagedWrite
from orchestration.collaboration.messages import Asker, AttemptChannel, Inbox, StagedMessage
from orchestration.errors import InvalidTeamWrite
from orchestration.spec import MemoryRule


class TeamReads(Protocol):
    """What an attempt reads of its team, when it first looks."""

    def memory_snapshot(self, execution_id: str) -> MemorySnapshot: ...

    def inbox(self, execution_id: str, agent: str) -> Inbox: ...


@dataclass(frozen=True)
class Batch:
    """What one attempt of one step staged: applied once, if the attempt succeeds."""

    execution_id: str
    step_id: str
    attempt: int
    agent: str
    writes: tuple[StagedWrite, ...] = ()
    messages: tuple[StagedMessage, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.writes and not self.messages


class AttemptCollaboration:
    """``call.shared`` and the channel behind ``call.inbox/send/broadcast`` for one
    attempt of ``agent`` on ``step_id``."""

    def __init__(
        self,
        reads: TeamReads,
        execution_id: str,
        step_id: str,
        attempt: int,
        agent: str,
        *,
        rules: Mapping[str, MemoryRule],
        agents: Collection[str],
        asker: Asker | None = None,
    ) -> None:
        self._key = (execution_id, step_id, attempt, agent)
        self.memory = AttemptMemory(rules, lambda: reads.memory_snapshot(execution_id))
        self.channel = AttemptChannel(
            agent, agents, lambda: reads.inbox(execution_id, agent), asker
        )

    def with_updates(self, result: AgentResult) -> AgentResult:
        """Stage the ``context_updates`` the agent returned, each by its key's rule (an
        invalid one fails the attempt, like a write through ``call.shared``)."""
        updates = result.context_updates
        if not isinstance(updates, Mapping):
            raise InvalidTeamWrite(
                f"context_updates is a mapping of key to value, not {type(updates).__name__}"
            )
        for key, value in updates.items():
            self.memory.update(key, value)
        return result

    @property
    def context_version(self) -> int | None:
        """The memory version the attempt saw: that of its memory read, else of its
        inbox read; None if it read neither."""
        seen = self.memory.version
        return seen if seen is not None else self.channel.version

    def batch(self) -> Batch:
        """What the attempt staged; it can stage nothing more."""
        execution_id, step_id, attempt, agent = self._key
        return Batch(
            execution_id,
            step_id,
            attempt,
            agent,
            writes=self.memory.close(),
            messages=self.channel.close(),
        )
