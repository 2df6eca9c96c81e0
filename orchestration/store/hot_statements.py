"""The statements every delegation runs, built once with bound parameters.

Building a SQLAlchemy statement costs more Python time than PostgreSQL takes to run it
(~1.6 ms of a delegation's ~10 ms went to constructing and cache-keying clauses), so the
hot path executes these prebuilt constructs with parameter dictionaries.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import (
    JSON,
    DateTime,
    Table,
    TextClause,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)

from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    PENDING,
    RETRYING,
    RUNNING,
)
from orchestration.constants import STEP_FINAL as _FINAL
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow

# Declarative tables are Table objects; typed as such for the Core constructs below.
_steps: Table = StepRow.__table__  # type: ignore[assignment]
_attempts: Table = AttemptRow.__table__  # type: ignore[assignment]
_executions: Table = ExecutionRow.__table__  # type: ignore[assignment]

# The execution's status and input with the rows of this step and of the steps it reads
# (its dependencies or its ancestors), each found by primary key. Looking steps up by
# level instead made the planner, on a table without statistics yet, scan every step of
# the execution. The input comes with every read rather than from a per-worker cache:
# with more executions under way than such a cache holds (500 of them evicted 256
# entries before their next step came round), each delegation paid a round trip for it.
DELEGATION_STATE: Final[Any] = select(
    _steps,
    select(_executions.c.status)
    .where(_executions.c.id == bindparam("eid"))
    .scalar_subquery()
    .label("execution_status"),
    select(_executions.c.input)
    .where(_executions.c.id == bindparam("eid"))
    .scalar_subquery()
    .label("execution_input"),
).where(
    _steps.c.execution_id == bindparam("eid"),
    _steps.c.step_id.in_(bindparam("ids", expanding=True)),
)

# The same read for PostgreSQL's prepared statement, whose one generic plan must be
# good before the table has statistics: this step by its full primary key, and its
# ancestors (an array) only when it has any. (One ``step_id = ANY(array)`` made that
# plan filter every step of the execution for each delegation.)
DELEGATION_STATE_SQL: Final = """
SELECT troupe_steps.*,
    (SELECT status FROM troupe_executions WHERE id = :eid) AS execution_status,
    (SELECT input FROM troupe_executions WHERE id = :eid) AS execution_input
FROM troupe_steps WHERE execution_id = :eid AND step_id = :sid
UNION ALL
SELECT found.*, NULL, NULL
FROM unnest(CAST(:ids AS varchar[])) AS wanted(step_id)
CROSS JOIN LATERAL (
    SELECT * FROM troupe_steps
    WHERE execution_id = :eid AND step_id = wanted.step_id LIMIT 1
) AS found"""

EXECUTION_DIGEST_SQL: Final = """
SELECT spec_digest FROM troupe_executions WHERE id = :eid"""

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

# --- the end of an attempt, written in one round trip ---------------------------------
#
# An attempt that ends quickly is recorded once, at its end: the attempt row (inserted,
# or closed if a start marker was written while it ran), the execution's start, the
# step's result and, for the last step, the execution's end. Plain SQL that PostgreSQL
# and SQLite both speak; on PostgreSQL the statements are prepared and travel as one
# string over an autocommit connection, which the server runs as one implicit
# transaction (one round trip instead of five), elsewhere they run one by one inside a
# transaction. The step's UPDATE comes last: its row count says whether this attempt
# decided the step.


def _sql_list(values: frozenset[str]) -> str:
    return "(" + ", ".join(f"'{value}'" for value in sorted(values)) + ")"


_STEP_FINAL_SQL = _sql_list(_FINAL)
_EXECUTION_FINAL_SQL = _sql_list(frozenset({COMPLETED, "failed", CANCELLED}))

END_ATTEMPT_SQL: Final = """
INSERT INTO troupe_attempts (execution_id, step_id, attempt, agent, task_id, worker,
    started_at, finished_at, duration_ms, outcome, error_type, error_message)
VALUES (:eid, :sid, :att, :agent, :task_id, :worker,
    :started, :ts, :ms, :outcome, :error_type, :error_message)
ON CONFLICT (execution_id, step_id, attempt) DO UPDATE SET
    finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
    outcome = excluded.outcome, error_type = excluded.error_type,
    error_message = excluded.error_message
WHERE troupe_attempts.outcome IS NULL"""

MARK_EXECUTION_RUNNING_SQL: Final = f"""
UPDATE troupe_executions SET status = '{RUNNING}', started_at = :started
WHERE id = :eid AND status = '{PENDING}'"""

FINISH_EXECUTION_SQL: Final = f"""
UPDATE troupe_executions SET status = :final_status, output = :final_output,
    error = :final_error, finished_at = :ts
WHERE id = :eid AND status NOT IN {_EXECUTION_FINAL_SQL}"""

# A successful call's result is kept even if a stop marked the step cancelled while the
# call ran: the delegation read the execution as not cancelled before calling, so the
# stop came after the call began, which is what a step already marked running gets too
# (a stop cancels only steps that are pending or waiting to retry).
_DECIDED_SQL = _sql_list(_FINAL - {CANCELLED})
COMPLETE_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = '{COMPLETED}', attempts = :att, output = :out,
    error_type = NULL, error_message = NULL, reason = NULL, next_attempt_at = NULL,
    started_at = COALESCE(started_at, :started), finished_at = :ts, duration_ms = :step_ms
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_DECIDED_SQL}"""

RETRY_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = '{RETRYING}', attempts = :att,
    error_type = :error_type, error_message = :error_message, next_attempt_at = :next_at,
    started_at = COALESCE(started_at, :started)
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_STEP_FINAL_SQL}"""

FAIL_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = 'failed', attempts = :att,
    error_type = :error_type, error_message = :error_message, next_attempt_at = NULL,
    started_at = COALESCE(started_at, :started), finished_at = :ts, duration_ms = :step_ms
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_STEP_FINAL_SQL}"""

# --- the countdown of a level of more than one step ------------------------------------
#
# The write that decides a step of such a level also counts the level down, so the
# delegation learns in the same round trip whether it decided the level's last step (and
# moves the execution on). The level's row stays locked from this UPDATE to the commit,
# so concurrent members count down one after another and exactly one sees zero.

COUNT_DOWN_SQL: Final = """
UPDATE troupe_levels SET remaining = remaining - 1
WHERE execution_id = :eid AND level = :level
RETURNING remaining"""


def _counted(step_sql: str) -> str:
    """PostgreSQL: ``step_sql`` and, only if it decided the step, the countdown, as one
    statement that returns the level's remaining count (no row: not decided here)."""
    return f"""
WITH decided AS ({step_sql}
RETURNING 1)
UPDATE troupe_levels SET remaining = remaining - 1
WHERE execution_id = :eid AND level = :level AND EXISTS (SELECT 1 FROM decided)
RETURNING remaining"""


# The step's write and its level's countdown in one statement (SQLite runs the two).
COUNTED: Final = {sql: _counted(sql) for sql in (COMPLETE_STEP_SQL, FAIL_STEP_SQL)}

# Every statement a write script may contain (PostgreSQL prepares them all).
WRITE_SQL: Final = (
    END_ATTEMPT_SQL,
    MARK_EXECUTION_RUNNING_SQL,
    FINISH_EXECUTION_SQL,
    COMPLETE_STEP_SQL,
    RETRY_STEP_SQL,
    FAIL_STEP_SQL,
    *COUNTED.values(),
)

_BIND_TYPES: Final[dict[str, Any]] = {
    "started": DateTime(timezone=True),
    "ts": DateTime(timezone=True),
    "next_at": DateTime(timezone=True),
    "out": JSON(),
    "final_output": JSON(),
}


def _typed(sql: str) -> TextClause:
    named = set(re.findall(r"(?<!:):(\w+)", sql))
    return text(sql).bindparams(
        *(bindparam(name, type_=kind) for name, kind in _BIND_TYPES.items() if name in named)
    )


@lru_cache(maxsize=32)
def write_script(*parts: str) -> tuple[TextClause, ...]:
    """The statements of one write, to run one by one in a transaction (PostgreSQL runs
    them as prepared statements instead, see ``prepared``)."""
    return tuple(_typed(part) for part in parts)
