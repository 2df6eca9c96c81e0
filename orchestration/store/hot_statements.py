"""The statements every delegation runs, built once with bound parameters.

Building a SQLAlchemy statement costs more Python time than PostgreSQL takes to run it
(~1.6 ms of a delegation's ~10 ms went to constructing and cache-keying clauses), so the
hot path executes these prebuilt constructs with parameter dictionaries.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Table, bindparam, func, insert, select, union_all, update

from orchestration.constants import CANCELLED, COMPLETED, OUTCOME_SUCCESS, PENDING, RUNNING
from orchestration.constants import STEP_FINAL as _FINAL
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow

# Declarative tables are Table objects; typed as such for the Core constructs below.
_steps: Table = StepRow.__table__  # type: ignore[assignment]
_attempts: Table = AttemptRow.__table__  # type: ignore[assignment]
_executions: Table = ExecutionRow.__table__  # type: ignore[assignment]

# The execution's status, this step and every step of an earlier level. Two indexed
# lookups joined by UNION ALL: with an OR, PostgreSQL scans every step of the execution
# for each delegation, which made a 10,000-step fan-out quadratic.
_STATUS = (
    select(_executions.c.status)
    .where(_executions.c.id == bindparam("eid"))
    .scalar_subquery()
    .label("execution_status")
)
DELEGATION_STATE: Final[Any] = union_all(
    select(_steps, _STATUS).where(
        _steps.c.execution_id == bindparam("eid"), _steps.c.step_id == bindparam("sid")
    ),
    select(_steps, _STATUS).where(
        _steps.c.execution_id == bindparam("eid"), _steps.c.level < bindparam("lvl")
    ),
)

INSERT_ATTEMPT: Final[Any] = insert(_attempts)

# Claim the step for an attempt unless it is final or its execution was cancelled.
CLAIM_STEP: Final[Any] = (
    update(_steps)
    .where(
        _steps.c.execution_id == bindparam("eid"),
        _steps.c.step_id == bindparam("sid"),
        _steps.c.status.not_in(list(_FINAL)),
        select(_executions.c.id)
        .where(
            _executions.c.id == bindparam("eid"),
            _executions.c.status != CANCELLED,
        )
        .exists(),
    )
    .values(
        status=RUNNING,
        attempts=bindparam("att"),
        next_attempt_at=None,
        started_at=func.coalesce(_steps.c.started_at, bindparam("ts")),
    )
)

START_EXECUTION: Final[Any] = (
    update(_executions)
    .where(_executions.c.id == bindparam("eid"), _executions.c.status == PENDING)
    .values(status=RUNNING, started_at=bindparam("ts"))
)

CLOSE_ATTEMPT_SUCCESS: Final[Any] = (
    update(_attempts)
    .where(
        _attempts.c.execution_id == bindparam("eid"),
        _attempts.c.step_id == bindparam("sid"),
        _attempts.c.attempt == bindparam("att"),
    )
    .values(
        finished_at=bindparam("ts"),
        duration_ms=bindparam("ms"),
        outcome=OUTCOME_SUCCESS,
    )
)

COMPLETE_STEP: Final[Any] = (
    update(_steps)
    .where(
        _steps.c.execution_id == bindparam("eid"),
        _steps.c.step_id == bindparam("sid"),
        _steps.c.status.not_in(list(_FINAL)),
    )
    .values(
        status=COMPLETED,
        output=bindparam("out", type_=_steps.c.output.type),
        error_type=None,
        error_message=None,
        finished_at=bindparam("ts"),
        duration_ms=bindparam("step_ms_"),
    )
)

# An execution's end, recorded once: a redelivered last step finds it already final.
FINISH_EXECUTION: Final[Any] = (
    update(_executions)
    .where(
        _executions.c.id == bindparam("eid"),
        _executions.c.status.not_in(["completed", "failed", "cancelled"]),
    )
    .values(
        status=bindparam("final_status"),
        output=bindparam("final_output", type_=_executions.c.output.type),
        error=bindparam("final_error"),
        finished_at=bindparam("ts"),
    )
)
