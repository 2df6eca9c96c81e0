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
    select,
    text,
)

from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    PENDING,
    RETRYING,
    RUNNING,
    SKIP_JOIN,
    SKIP_STOPPED,
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

# An execution started by a Celery signature (Team.s): its completion, claimed once the
# execution ended. Every execution's end asks, so this is prepared: one without a row
# costs a primary-key lookup.
CANVAS_CLAIM_SQL: Final = """
UPDATE troupe_canvas SET sent_at = :ts WHERE execution_id = :eid AND sent_at IS NULL
RETURNING completion"""

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

# An attempt marked lost may still end: its lease lapsed while the database was out of
# reach, not because its worker died. Its real end replaces the guess.
END_ATTEMPT_SQL: Final = """
INSERT INTO troupe_attempts (execution_id, step_id, attempt, agent, task_id, worker,
    started_at, finished_at, duration_ms, outcome, error_type, error_message, usage,
    tool_calls, context_version)
VALUES (:eid, :sid, :att, :agent, :task_id, :worker,
    :started, :ts, :ms, :outcome, :error_type, :error_message, :usage, :tool_calls,
    :context_version)
ON CONFLICT (execution_id, step_id, attempt) DO UPDATE SET
    finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
    outcome = excluded.outcome, error_type = excluded.error_type,
    error_message = excluded.error_message, usage = excluded.usage,
    tool_calls = excluded.tool_calls, context_version = excluded.context_version
WHERE troupe_attempts.outcome IS NULL OR troupe_attempts.outcome = 'lost'"""

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
# (a stop cancels only steps that are pending or waiting to retry). Not so for a parent
# a join cancelled when it stopped waiting for it: that cancel counted down what waits
# for the parent, and the join's record must not change, so the late result stays in
# the attempt's row only. Nor for a step cancelled while it ran because its embedded
# worker stopped with its process: that run is over, and a result that still lands
# (the worker's last moments) must not bring the step back.
_DECIDED_SQL = _sql_list(_FINAL - {CANCELLED})
_FINAL_CANCELS_SQL = _sql_list(frozenset({SKIP_JOIN, SKIP_STOPPED}))
COMPLETE_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = '{COMPLETED}', attempts = :att, output = :out,
    error_type = NULL, error_message = NULL, reason = NULL, next_attempt_at = NULL,
    started_at = COALESCE(started_at, :started), finished_at = :ts, duration_ms = :step_ms
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_DECIDED_SQL}
    AND (skip_cause IS NULL OR skip_cause NOT IN {_FINAL_CANCELS_SQL})"""

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

SKIP_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = :status, skip_cause = :cause, reason = :reason,
    finished_at = :ts
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_STEP_FINAL_SQL}"""

# --- counting down what waits for a decided step ---------------------------------------
#
# The write that decides a step also counts down every step that waits for it (its
# dependents, sorted, so concurrent writers lock rows in one order) and, for a sink, the
# execution's ``sinks_left``, so the delegation learns in the same round trip which
# steps it made ready and whether it ended the execution. The counted rows stay locked
# to the commit, so concurrent deciders count one after another and exactly one of them
# sees each count reach zero. Rows returned: ('', -1) if the step was decided here, then
# (dependent, its count now) for each dependent, and (NULL, sinks left) for a sink.

COUNT_DOWN_SQL: Final = """
UPDATE troupe_steps SET waiting = waiting - 1
WHERE execution_id = :eid AND step_id = :dep
RETURNING step_id, waiting"""

SINK_DOWN_SQL: Final = """
UPDATE troupe_executions SET sinks_left = sinks_left - 1
WHERE id = :eid
RETURNING sinks_left"""


# Dependents counted one by one, each found by its full primary key, up to this many;
# beyond it, one UPDATE joined to the unnested list. (With the list alone, the prepared
# statement's generic plan read every step row of the execution for each count: a
# 1,000-way fan-out's join read 1,001 rows a thousand times.)
ONE_BY_ONE: Final = 4


def _counted(step_sql: str, arity: int | None) -> str:
    """PostgreSQL: ``step_sql`` and, only if it decided the step, the countdowns, as one
    statement. ``arity``: how many dependents, named :dep0, :dep1, …; None: any number,
    as the array :deps."""
    if arity is None:
        counts = [
            """counted AS (
    UPDATE troupe_steps SET waiting = troupe_steps.waiting - 1
    FROM unnest(CAST(:deps AS varchar[])) AS wanted(step_id)
    WHERE troupe_steps.execution_id = :eid AND troupe_steps.step_id = wanted.step_id
        AND EXISTS (SELECT 1 FROM decided)
    RETURNING troupe_steps.step_id, troupe_steps.waiting)"""
        ]
        names = ["counted"]
    else:
        counts = [
            f"""counted{i} AS (
    UPDATE troupe_steps SET waiting = waiting - 1
    WHERE execution_id = :eid AND step_id = :dep{i} AND EXISTS (SELECT 1 FROM decided)
    RETURNING step_id, waiting)"""
            for i in range(arity)
        ]
        names = [f"counted{i}" for i in range(arity)]
    selects = "".join(f"\nUNION ALL SELECT step_id, waiting FROM {name}" for name in names)
    with_counts = "".join(f",\n{count}" for count in counts)
    return f"""
WITH decided AS ({step_sql}
RETURNING 1){with_counts},
ended AS (
    UPDATE troupe_executions SET sinks_left = sinks_left - 1
    WHERE id = :eid AND CAST(:sink AS boolean) AND EXISTS (SELECT 1 FROM decided)
    RETURNING sinks_left)
SELECT CAST('' AS varchar) AS step_id, -1 AS waiting FROM decided{selects}
UNION ALL SELECT NULL, sinks_left FROM ended"""


DECIDING_SQL: Final = (COMPLETE_STEP_SQL, FAIL_STEP_SQL, SKIP_STEP_SQL)
ARITIES: Final = (*range(ONE_BY_ONE + 1), None)
# The step's write and its countdowns in one statement, by (step SQL, arity) (SQLite
# runs them one by one).
COUNTED: Final = {(sql, arity): _counted(sql, arity) for sql in DECIDING_SQL for arity in ARITIES}


def counted(step_sql: str, dependents: int) -> tuple[str, int | None]:
    """The key in COUNTED for a step with this many dependents."""
    return step_sql, dependents if dependents <= ONE_BY_ONE else None


# --- the start marker and the lease of an attempt that runs for a while ----------------

BEGIN_ATTEMPT_SQL: Final = """
INSERT INTO troupe_attempts (execution_id, step_id, attempt, agent, task_id, worker,
    started_at)
VALUES (:eid, :sid, :att, :agent, :task_id, :worker, :started)"""

CLAIM_STEP_SQL: Final = f"""
UPDATE troupe_steps SET status = '{RUNNING}', attempts = :att, next_attempt_at = NULL,
    started_at = COALESCE(started_at, :started)
WHERE execution_id = :eid AND step_id = :sid AND status NOT IN {_STEP_FINAL_SQL}
    AND EXISTS (SELECT 1 FROM troupe_executions
                WHERE id = :eid AND status != '{CANCELLED}')"""

# PostgreSQL: the claim and the marker in one statement: (claimed, inserted). Not
# claimed: the step is final or the execution cancelled. Claimed but not inserted:
# another copy of the message recorded this attempt first.
BEGIN_ATTEMPT_SQL_GUARDED: Final = f"""
WITH claimed AS ({CLAIM_STEP_SQL}
RETURNING 1),
inserted AS (
    INSERT INTO troupe_attempts (execution_id, step_id, attempt, agent, task_id, worker,
        started_at)
    SELECT :eid, :sid, :att, :agent, :task_id, :worker, :started
    WHERE EXISTS (SELECT 1 FROM claimed)
    ON CONFLICT (execution_id, step_id, attempt) DO NOTHING
    RETURNING 1)
SELECT (SELECT count(*) FROM claimed) AS claimed, (SELECT count(*) FROM inserted) AS inserted"""

RENEW_LEASE_SQL: Final = """
UPDATE troupe_attempts SET heartbeat_at = :ts, progress = :progress
WHERE execution_id = :eid AND step_id = :sid AND attempt = :att AND outcome IS NULL"""

# Every statement a write script may contain (PostgreSQL prepares them all).
WRITE_SQL: Final = (
    END_ATTEMPT_SQL,
    MARK_EXECUTION_RUNNING_SQL,
    FINISH_EXECUTION_SQL,
    COMPLETE_STEP_SQL,
    RETRY_STEP_SQL,
    FAIL_STEP_SQL,
    SKIP_STEP_SQL,
    BEGIN_ATTEMPT_SQL,
    CLAIM_STEP_SQL,
    BEGIN_ATTEMPT_SQL_GUARDED,
    RENEW_LEASE_SQL,
    *COUNTED.values(),
)

_BIND_TYPES: Final[dict[str, Any]] = {
    "started": DateTime(timezone=True),
    "ts": DateTime(timezone=True),
    "next_at": DateTime(timezone=True),
    "out": JSON(),
    "final_output": JSON(),
    "progress": JSON(),
    "usage": JSON(),
    "tool_calls": JSON(),
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
