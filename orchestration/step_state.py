"""What the engine reads of a step's row: the protocols an ORM row or a plain result row
satisfies, and the part of it an execution's outcome needs. Error type and message are
strings: exceptions do not survive JSON faithfully."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from workflows.outcome import StepRecord


class StepResult(Protocol):
    """What a step's row says of its result: all that an execution's outcome needs."""

    status: str
    reason: str | None
    output: Any
    error_type: str | None
    error_message: str | None
    skip_cause: str | None


class StepState(StepResult, Protocol):
    """A step's recorded state: an ORM row or a plain result row of troupe_steps."""

    execution_id: str
    step_id: str
    agent: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None
    waiting: int
    parent_id: str | None
    item_index: int | None
    item: Any
    origin: Any
    dependents: Any
    fan_out: int | None
    # A join with a deadline: when it passes, once its first parent started (else a
    # retry's due time).
    next_attempt_at: datetime | None


def record_of(row: StepResult) -> StepRecord:
    """What the outcome of an execution needs to know of one step."""
    error = f"{row.error_type}: {row.error_message}" if row.error_type else row.reason
    return StepRecord(status=row.status, output=row.output, error=error, cause=row.skip_cause)
