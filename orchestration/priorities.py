"""How urgently an execution's steps are served, and which executions the reaper may
promote when their steps have waited too long.

An execution has one priority (the team file's ``priority``, or the one given at
enqueue); every message of the execution carries it. The broker serves a queue's
messages highest priority first, so a step of a lower priority waits while higher ones
keep coming: the reaper bounds that wait by sending such a step again above every
priority (see ``workers.reaper``); of the two messages, the one that comes second runs
nothing.
"""

from __future__ import annotations

from enum import StrEnum


class Priority(StrEnum):
    """An execution's priority, most urgent first."""

    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @classmethod
    def of(cls, value: object) -> Priority:
        """The priority a stored spec names; normal if it names none (an execution
        recorded before priorities existed) or none known."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.NORMAL

    @property
    def promotable(self) -> bool:
        """Whether the reaper promotes this execution's long-waiting steps. A critical
        step waits only behind critical ones (and promoted steps), served in the order
        they were sent: sending it again would only add a copy."""
        return self is not Priority.CRITICAL


# Most urgent first: the order the broker serves them in.
PRIORITIES: tuple[Priority, ...] = tuple(Priority)
