"""Envelopes: what a delegation returns instead of raising.

A level must always be counted down to its end, so a delegation that finally fails
returns a failed envelope, as one that succeeds does. Error type and message travel as
strings: exceptions do not survive JSON faithfully. Outputs stay in the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol, TypedDict

from workflows.outcome import StepRecord


class StepResult(Protocol):
    """What a step's row says of its result: all that an execution's outcome needs."""

    status: str
    reason: str | None
    output: Any
    error_type: str | None
    error_message: str | None


class StepState(StepResult, Protocol):
    """A step's recorded state: an ORM row or a plain result row of troupe_steps."""

    execution_id: str
    step_id: str
    agent: str
    attempts: int
    skip_cause: str | None
    started_at: datetime | None
    duration_ms: int | None


class Envelope(TypedDict):
    execution_id: str
    step_id: str
    status: str
    attempts: int
    error_type: str | None
    error_message: str | None
    duration_ms: int | None
    # The execution's final status was recorded together with this step's result.
    finalized: bool
    # This step was the last of its level to be decided (by this delegation's write):
    # the delegation moves the execution on.
    closes_level: bool


def envelope_of(row: StepState) -> Envelope:
    return Envelope(
        execution_id=row.execution_id,
        step_id=row.step_id,
        status=row.status,
        attempts=row.attempts,
        error_type=row.error_type,
        error_message=row.error_message or row.reason,
        duration_ms=row.duration_ms,
        finalized=False,
        closes_level=False,
    )


def record_of(row: StepResult) -> StepRecord:
    """What the outcome of an execution needs to know of one step."""
    error = f"{row.error_type}: {row.error_message}" if row.error_type else row.reason
    return StepRecord(status=row.status, output=row.output, error=error)
