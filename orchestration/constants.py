"""Names shared by the client, the workers and the store."""

from __future__ import annotations

from typing import Final

DEFAULT_QUEUE: Final = "troupe"

START_TASK: Final = "troupe.start"
DELEGATE_TASK: Final = "troupe.delegate"
FINALIZE_TASK: Final = "troupe.finalize"

# Execution statuses.
PENDING: Final = "pending"
RUNNING: Final = "running"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
# Step-only statuses.
RETRYING: Final = "retrying"
SKIPPED: Final = "skipped"

EXECUTION_FINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED})
STEP_FINAL: Final = frozenset({COMPLETED, FAILED, SKIPPED, CANCELLED})

# Why a step was skipped: its own condition was false (not a failure; dependents still
# run), or something upstream failed (dependents are skipped too).
SKIP_CONDITION: Final = "condition"
SKIP_UPSTREAM: Final = "upstream"

# Attempt outcomes in the audit trail.
OUTCOME_SUCCESS: Final = "success"
OUTCOME_ERROR: Final = "error"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_REJECTED: Final = "rejected"  # breaker open: the agent was not called
OUTCOME_LOST: Final = "lost"  # the worker died mid-attempt

HEARTBEAT_TASK: Final = "troupe.heartbeat"
REAP_TASK: Final = "troupe.reap"
