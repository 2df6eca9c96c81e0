"""A stand-in for the store's reads of an attempt's team (TeamReads), counting them."""

from __future__ import annotations

from typing import Any

from orchestration.collaboration.memory import MemorySnapshot
from orchestration.collaboration.messages import Inbox
from orchestration.spec import MemoryRule

RULES = {"log": MemoryRule.APPEND, "total": MemoryRule.SUM, "facts": MemoryRule.MERGE}


class Reads:
    """A TeamReads that counts its reads."""

    def __init__(self, values: dict[str, Any] | None = None, version: int = 3) -> None:
        self.values = values or {}
        self.version = version
        self.memory_reads = 0
        self.inbox_reads = 0

    def memory_snapshot(self, execution_id: str) -> MemorySnapshot:
        self.memory_reads += 1
        return MemorySnapshot(self.version, dict(self.values))

    def inbox(self, execution_id: str, agent: str) -> Inbox:
        self.inbox_reads += 1
        return Inbox(self.version + 1, ())
