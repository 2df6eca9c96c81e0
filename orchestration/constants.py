"""Names shared by the client, the workers and the store.

The statuses themselves are StrEnums in ``workflows.status``; the short names here are
the ones the store's SQL and the workers use.
"""

from __future__ import annotations

from typing import Final

from workflows.status import (
    EXECUTION_FINAL,
    STEP_FINAL,
    AttemptOutcome,
    ExecutionStatus,
    SkipCause,
    StepStatus,
)

DEFAULT_QUEUE: Final = "troupe"

START_TASK: Final = "troupe.start"
DELEGATE_TASK: Final = "troupe.delegate"
FINALIZE_TASK: Final = "troupe.finalize"
HEARTBEAT_TASK: Final = "troupe.heartbeat"
REAP_TASK: Final = "troupe.reap"
APPROVAL_DUE_TASK: Final = "troupe.approval_due"
# A team run as a Celery signature (Team.s), and the task that completes it.
RUN_TEAM_TASK: Final = "troupe.run_team"
TEAM_RESULT_TASK: Final = "troupe.team_result"

PENDING: Final = StepStatus.PENDING
RUNNING: Final = StepStatus.RUNNING
COMPLETED: Final = StepStatus.COMPLETED
FAILED: Final = StepStatus.FAILED
CANCELLED: Final = StepStatus.CANCELLED
RETRYING: Final = StepStatus.RETRYING
SKIPPED: Final = StepStatus.SKIPPED
WAITING_APPROVAL: Final = StepStatus.WAITING_APPROVAL

SKIP_CONDITION: Final = SkipCause.CONDITION
SKIP_UPSTREAM: Final = SkipCause.UPSTREAM
SKIP_JOIN: Final = SkipCause.JOIN
SKIP_STOPPED: Final = SkipCause.STOPPED

OUTCOME_SUCCESS: Final = AttemptOutcome.SUCCESS
OUTCOME_ERROR: Final = AttemptOutcome.ERROR
OUTCOME_TIMEOUT: Final = AttemptOutcome.TIMEOUT
OUTCOME_REJECTED: Final = AttemptOutcome.REJECTED
OUTCOME_LOST: Final = AttemptOutcome.LOST

__all__ = [
    "APPROVAL_DUE_TASK",
    "CANCELLED",
    "COMPLETED",
    "DEFAULT_QUEUE",
    "DELEGATE_TASK",
    "EXECUTION_FINAL",
    "FAILED",
    "FINALIZE_TASK",
    "HEARTBEAT_TASK",
    "OUTCOME_ERROR",
    "OUTCOME_LOST",
    "OUTCOME_REJECTED",
    "OUTCOME_SUCCESS",
    "OUTCOME_TIMEOUT",
    "PENDING",
    "REAP_TASK",
    "RETRYING",
    "RUNNING",
    "RUN_TEAM_TASK",
    "SKIPPED",
    "SKIP_CONDITION",
    "SKIP_JOIN",
    "SKIP_STOPPED",
    "SKIP_UPSTREAM",
    "START_TASK",
    "STEP_FINAL",
    "TEAM_RESULT_TASK",
    "WAITING_APPROVAL",
    "ExecutionStatus",
    "StepStatus",
]
