"""The statuses an execution, a step and an attempt can have.

StrEnums, so a status compares equal to the string stored in the database and formats
as that string inside SQL text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    # Paused until a person decides (or the approval times out); holds no worker. Not
    # final: what depends on the step waits, and the stall check leaves it alone until
    # its timeout.
    WAITING_APPROVAL = "waiting_approval"


class SkipCause(StrEnum):
    """Why a step was skipped: its own condition was false (not a failure; dependents
    still run), or something upstream failed (dependents are skipped too). And why a
    step was cancelled when the execution was not: a join stopped waiting for it (its
    quorum was met, its deadline passed, or it failed or was skipped first). And why a
    step was cancelled while it ran: the worker running it stopped with its process
    (embedded mode), so no result of it counts any more."""

    CONDITION = "condition"
    UPSTREAM = "upstream"
    JOIN = "join"
    STOPPED = "stopped"


class AttemptOutcome(StrEnum):
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"
    REJECTED = "rejected"  # refused before any call: breaker open, deadline passed
    LOST = "lost"  # the worker died mid-attempt


EXECUTION_FINAL: Final = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
# A step in one of these is decided: what depends on it may go ahead.
STEP_FINAL: Final = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)
