"""What a user reads of an execution's context: its input, the outputs of its finished
steps and its shared memory, now or as one step saw them; a memory key's history; the
messages its agents sent. The shapes of ``context --json`` and ``messages --json``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from orchestration.agents.team_channel import Message
from orchestration.constants import COMPLETED
from orchestration.errors import StepNotFound
from orchestration.spec import TeamSpec
from orchestration.store.executions import ExecutionRecords
from orchestration.store.memory import MemoryEntry, MemoryRecords, MemoryWrite
from workflows.plan import build_plan


class MemoryKeyReport(BaseModel):
    """One key of the memory as it stands: its value, version and last writer."""

    key: str
    value: Any
    version: int
    rule: str
    writer_step: str
    writer_attempt: int
    updated_at: str

    @classmethod
    def of(cls, entry: MemoryEntry) -> MemoryKeyReport:
        return cls(
            key=entry.key,
            value=entry.value,
            version=entry.version,
            rule=entry.rule,
            writer_step=entry.writer_step,
            writer_attempt=entry.writer_attempt,
            updated_at=entry.updated_at.isoformat(),
        )


class StepViewReport(BaseModel):
    """Which attempt of a step the context is shown for, and the memory version it saw
    (None: it read neither the memory nor its inbox, or it never ran)."""

    step: str
    attempt: int | None
    context_version: int | None


class ContextReport(BaseModel):
    execution_id: str
    input: Any
    # Step id → output of each finished step (with ``at``: each the step could see).
    outputs: dict[str, Any]
    # The memory's version and values; with ``at``, as the step saw them (None if it
    # read neither the memory nor its inbox).
    memory_version: int | None
    memory: dict[str, Any] | None
    # Without ``at``: each key's version and last writer.
    keys: list[MemoryKeyReport] = []
    at: StepViewReport | None = None


class MemoryWriteReport(BaseModel):
    """One write of a key: the value after it and the one it replaced."""

    key: str
    version: int
    memory_version: int
    value: Any
    previous: Any
    rule: str
    writer_step: str
    writer_attempt: int
    at: str

    @classmethod
    def of(cls, write: MemoryWrite) -> MemoryWriteReport:
        return cls(
            key=write.key,
            version=write.version,
            memory_version=write.memory_version,
            value=write.value,
            previous=write.previous,
            rule=write.rule,
            writer_step=write.writer_step,
            writer_attempt=write.writer_attempt,
            at=write.at.isoformat(),
        )


class MessageReport(BaseModel):
    id: int
    sender: str
    sender_step: str
    # None: a broadcast, to every agent.
    to: str | None
    type: str
    content: Any
    reply_to: int | None
    at: str

    @classmethod
    def of(cls, message: Message) -> MessageReport:
        return cls(
            id=message.id,
            sender=message.sender,
            sender_step=message.sender_step,
            to=message.to,
            type=message.type,
            content=message.content,
            reply_to=message.reply_to,
            at=message.at.isoformat(),
        )


def read_context(
    executions: ExecutionRecords, memory: MemoryRecords, execution_id: str, at: str | None
) -> ContextReport:
    """The context now, or (``at``: a step id) as that step's last attempt saw it."""
    execution = executions.execution(execution_id)
    steps = executions.steps(execution_id)
    if at is None:
        entries = memory.entries(execution_id)
        return ContextReport(
            execution_id=execution_id,
            input=execution.input,
            outputs={row.step_id: row.output for row in steps if row.status == COMPLETED},
            memory_version=memory.memory_version(execution_id),
            memory={entry.key: entry.value for entry in entries},
            keys=[MemoryKeyReport.of(entry) for entry in entries],
        )
    row = next((row for row in steps if row.step_id == at), None)
    if row is None:
        raise StepNotFound(execution_id, at)
    attempts = executions.attempts(execution_id, at)
    last = max(attempts, key=lambda attempt: attempt.attempt) if attempts else None
    seen = last.context_version if last is not None else None
    # What the step could see: the finished steps of its map step's (or its own) view,
    # which all ended before it began.
    plan = build_plan(TeamSpec.model_validate(execution.spec))
    visible = set(plan.step(row.parent_id or row.step_id).visible)
    return ContextReport(
        execution_id=execution_id,
        input=execution.input,
        outputs={
            other.step_id: other.output
            for other in steps
            if other.step_id in visible and other.status == COMPLETED
        },
        memory_version=seen,
        memory=None if seen is None else memory.values_at(execution_id, seen),
        at=StepViewReport(
            step=at, attempt=last.attempt if last is not None else None, context_version=seen
        ),
    )


def memory_history(memory: MemoryRecords, execution_id: str, key: str) -> list[MemoryWriteReport]:
    """Every write of ``key``, oldest first (empty: never written)."""
    memory.memory_version(execution_id)  # raises ExecutionNotFound
    return [MemoryWriteReport.of(write) for write in memory.history(execution_id, key)]


def messages(memory: MemoryRecords, execution_id: str) -> list[MessageReport]:
    """Every message delivered in the execution, in the order they were."""
    memory.memory_version(execution_id)  # raises ExecutionNotFound
    return [MessageReport.of(message) for message in memory.messages(execution_id)]
