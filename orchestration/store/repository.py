"""Reads and writes of execution state. Each write is one short transaction.

Writes retry transient database errors (a restarted PostgreSQL, a busy SQLite file) so that
an outage delays a run instead of failing it or losing its records.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, and_, func, insert, or_, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestration.constants import (
    CANCELLED,
    EXECUTION_FINAL,
    OUTCOME_LOST,
    OUTCOME_REJECTED,
    OUTCOME_SUCCESS,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    STEP_FINAL,
)
from orchestration.errors import ExecutionNotFound
from orchestration.store import hot_statements as hot
from orchestration.store import prepared
from orchestration.store.database import get_autocommit_engine, get_engine
from orchestration.store.models import (
    AgentRow,
    AttemptRow,
    ExecutionRow,
    HeartbeatRow,
    LevelRow,
    StepRow,
)
from workflows.plan import ExecutionPlan

P = ParamSpec("P")
R = TypeVar("R")


def plain_update(model: type[Any]) -> Any:
    """An UPDATE that leaves objects in the session alone: our writes are conditional
    (compare-and-set), so Python-side evaluation of the criteria would be both wasted
    work and wrong for SQLite's naive datetimes."""
    return update(model).execution_options(synchronize_session=False)


def _unfinished_step(execution_id: str, step_id: str) -> Any:
    """UPDATE of one step that has not reached a final status: a finished step's record
    is never overwritten, whatever arrives late."""
    return plain_update(StepRow).where(
        StepRow.execution_id == execution_id,
        StepRow.step_id == step_id,
        StepRow.status.not_in(STEP_FINAL),
    )


def _attempt(execution_id: str, step_id: str, attempt: int) -> Any:
    """UPDATE of one attempt of one step."""
    return plain_update(AttemptRow).where(
        AttemptRow.execution_id == execution_id,
        AttemptRow.step_id == step_id,
        AttemptRow.attempt == attempt,
    )


def now() -> datetime:
    return datetime.now(UTC)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _retrying(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, retried under tenacity once it has failed with a transient error.

    The first try runs outside tenacity: setting up its retry state cost about as much
    Python as the delegation's own statements, on every call that never needed it."""
    retried = retry(
        retry=retry_if_exception(_is_transient),
        wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
        stop=stop_after_delay(120),
        reraise=True,
    )(fn)

    @functools.wraps(fn)
    def first_try(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_transient(exc):
                raise
        return retried(*args, **kwargs)

    return first_try


@dataclass(frozen=True)
class Decided:
    """This write decided the step (no other copy of its message had)."""

    # From the step's first start to now, when it was known (else the attempt's).
    step_ms: int = 0
    # The step was the last of its level to be decided (the only one, or the last one
    # counted down): the writer moves the execution on.
    closes_level: bool = False


@dataclass(frozen=True)
class AttemptError:
    type: str
    message: str
    outcome: str


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt of a delegation ended: its audit row."""

    execution_id: str
    step_id: str
    attempt: int
    agent: str
    task_id: str | None
    worker: str | None
    started_at: datetime
    duration_ms: int
    outcome: str = OUTCOME_SUCCESS
    error: AttemptError | None = None

    def params(self, finished_at: datetime) -> dict[str, Any]:
        return {
            "eid": self.execution_id,
            "sid": self.step_id,
            "att": self.attempt,
            "agent": self.agent,
            "task_id": self.task_id,
            "worker": self.worker,
            "started": self.started_at,
            "ts": finished_at,
            "ms": self.duration_ms,
            "outcome": self.outcome,
            "error_type": self.error.type if self.error else None,
            "error_message": self.error.message if self.error else None,
        }


class Store:
    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or get_engine(url)
        # Single-statement reads and the one-round-trip writes need no BEGIN/COMMIT.
        self.reader = (
            get_autocommit_engine(url)
            if engine is None
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        # On PostgreSQL the delegation's read and writes are prepared statements.
        self.prepared = self.engine.dialect.name == "postgresql" and engine is None
        self._hot = prepared.HotConnections(self.reader.engine) if self.prepared else None
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._registered: set[tuple[str, str]] = set()

    def session(self) -> Session:
        return self._session()

    @property
    def hot_round_trips(self) -> int:
        """Round trips of the prepared hot path so far (profiling)."""
        return self._hot.round_trips if self._hot is not None else 0

    # --- executions -------------------------------------------------------------------

    @_retrying
    def create_execution(
        self,
        execution_id: str,
        spec: dict[str, Any],
        plan: ExecutionPlan,
        input_value: Any,
        digest: str | None = None,
    ) -> None:
        """The execution's row (pending) and one pending row per step, atomically."""
        execution = {
            "id": execution_id,
            "team": plan.team,
            "strategy": plan.strategy.value,
            "spec": spec,
            "spec_digest": digest or spec_digest(spec),
            "input": input_value,
            "status": PENDING,
            "created_at": now(),
        }
        steps = [
            {
                "execution_id": execution_id,
                "step_id": step.id,
                "agent": step.agent,
                "position": step.position,
                "level": step.level,
                "status": PENDING,
                "attempts": 0,
            }
            for step in plan.steps
        ]
        levels = [
            {"execution_id": execution_id, "level": index, "size": len(level)}
            for index, level in enumerate(plan.levels)
            if len(level) > 1
        ]
        if self._hot is not None:
            # One round trip: the INSERTs as one string, one implicit transaction.
            self._hot.execute(_insert_script(self._hot.quote, execution, steps, levels))
            return
        with self.engine.begin() as connection:
            connection.execute(insert(ExecutionRow), execution)
            connection.execute(insert(StepRow), steps)
            if levels:
                connection.execute(
                    insert(LevelRow), [{**level, "remaining": level["size"]} for level in levels]
                )

    @_retrying
    def execution_digest(self, execution_id: str) -> str | None:
        """The digest of the spec an execution was enqueued with (None for executions
        recorded before digests were)."""
        if self._hot is not None:
            found, _ = self._hot.execute(prepared.DIGEST.execute_sql, {"eid": execution_id})
        else:
            with self.reader.connect() as connection:
                found = list(
                    connection.execute(text(hot.EXECUTION_DIGEST_SQL), {"eid": execution_id})
                )
        if not found:
            raise ExecutionNotFound(execution_id)
        digest: str | None = found[0].spec_digest
        return digest

    @_retrying
    def execution(self, execution_id: str) -> ExecutionRow:
        with self.session() as session:
            row = session.get(ExecutionRow, execution_id)
        if row is None:
            raise ExecutionNotFound(execution_id)
        return row

    @_retrying
    def execution_spec(self, execution_id: str) -> dict[str, Any]:
        """The team spec an execution was enqueued with (as stored: JSON)."""
        with self.reader.connect() as connection:
            spec = connection.execute(
                select(ExecutionRow.spec).where(ExecutionRow.id == execution_id)
            ).scalar()
        if spec is None:
            raise ExecutionNotFound(execution_id)
        return dict(spec)

    @_retrying
    def execution_status(self, execution_id: str) -> str:
        with self.session() as session:
            status = session.scalar(
                select(ExecutionRow.status).where(ExecutionRow.id == execution_id)
            )
        if status is None:
            raise ExecutionNotFound(execution_id)
        return status

    @_retrying
    def steps(self, execution_id: str) -> list[StepRow]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(StepRow)
                    .where(StepRow.execution_id == execution_id)
                    .order_by(StepRow.position)
                )
            )

    @_retrying
    def step_results(self, execution_id: str) -> list[Any]:
        """What deciding an execution's outcome needs of each step (id, status, output,
        error type and message, reason), as plain rows: an ORM object per step of a
        10,000-step execution held 8.5 MiB more in the worker that finished it."""
        query = select(
            StepRow.step_id,
            StepRow.status,
            StepRow.output,
            StepRow.error_type,
            StepRow.error_message,
            StepRow.reason,
        ).where(StepRow.execution_id == execution_id)
        with self.reader.connect() as connection:
            return list(connection.execute(query))

    @_retrying
    def delegation_state(
        self, execution_id: str, step_id: str, ancestors: Iterable[str] = ()
    ) -> tuple[str | None, Any, dict[str, Any]]:
        """Everything a delegation reads, in one statement: the execution's status and
        input, this step's row and the rows of the steps whose results it reads."""
        if self._hot is not None:
            params = {"eid": execution_id, "sid": step_id, "ids": list(ancestors)}
            found, _ = self._hot.execute(prepared.READ.execute_sql, params)
        else:
            with self.reader.connect() as connection:
                params = {"eid": execution_id, "ids": [step_id, *ancestors]}
                found = list(connection.execute(hot.DELEGATION_STATE, params))
        rows = {row.step_id: row for row in found}
        mine = rows.get(step_id)
        if mine is None:
            raise ExecutionNotFound(execution_id)
        return mine.execution_status, mine.execution_input, rows

    @_retrying
    def steps_by_id(self, execution_id: str, step_ids: Iterable[str]) -> dict[str, StepRow]:
        ids = list(step_ids)
        if not ids:
            return {}
        with self.session() as session:
            rows = session.scalars(
                select(StepRow).where(
                    StepRow.execution_id == execution_id, StepRow.step_id.in_(ids)
                )
            )
            return {row.step_id: row for row in rows}

    @_retrying
    def attempts(self, execution_id: str, step_id: str | None = None) -> list[AttemptRow]:
        query = select(AttemptRow).where(AttemptRow.execution_id == execution_id)
        if step_id is not None:
            query = query.where(AttemptRow.step_id == step_id)
        with self.session() as session:
            return list(session.scalars(query.order_by(AttemptRow.id)))

    @_retrying
    def finish_execution(
        self, execution_id: str, status: str, output: Any, error: str | None
    ) -> bool:
        """Record the final status once; a later call (a redelivered finalize) changes nothing."""
        with self.session() as session, session.begin():
            result = session.execute(
                plain_update(ExecutionRow)
                .where(
                    ExecutionRow.id == execution_id,
                    ExecutionRow.status.not_in(EXECUTION_FINAL),
                )
                .values(status=status, output=output, error=error, finished_at=now())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    @_retrying
    def cancel_execution(self, execution_id: str, reason: str) -> bool:
        """Durably cancel: the execution and its unstarted steps, before anything is revoked."""
        stamp = now()
        with self.session() as session, session.begin():
            row = session.get(ExecutionRow, execution_id, with_for_update=True)
            if row is None:
                raise ExecutionNotFound(execution_id)
            if row.status in EXECUTION_FINAL:
                return False
            row.status = CANCELLED
            row.error = reason
            row.cancel_requested_at = stamp
            row.finished_at = stamp
            session.execute(
                plain_update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.status.in_([PENDING, RETRYING]),
                )
                .values(status=CANCELLED, reason=reason, finished_at=stamp)
            )
            return True

    # --- steps and attempts -----------------------------------------------------------

    @_retrying
    def begin_attempt(
        self,
        execution_id: str,
        step_id: str,
        agent: str,
        attempt: int,
        task_id: str | None,
        worker: str | None,
        *,
        execution_pending: bool = True,
        started_at: datetime | None = None,
    ) -> str:
        """Record that an attempt is running (its start marker; its lease begins), in one
        transaction.

        Returns "started"; "duplicate" if this attempt was already recorded; "cancelled"
        if the step is final or the execution was cancelled since the caller looked.
        """
        stamp = started_at or now()
        keys = {"eid": execution_id, "sid": step_id, "ts": stamp}
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    hot.INSERT_ATTEMPT,
                    {
                        "execution_id": execution_id,
                        "step_id": step_id,
                        "attempt": attempt,
                        "agent": agent,
                        "task_id": task_id,
                        "worker": worker,
                        "started_at": stamp,
                    },
                )
                claimed = connection.execute(hot.CLAIM_STEP, {**keys, "att": attempt})
                if not claimed.rowcount:
                    connection.rollback()
                    return "cancelled"
                if execution_pending:
                    connection.execute(hot.START_EXECUTION, keys)
        except IntegrityError:
            return "duplicate"
        return "started"

    @_retrying
    def attempt_row(self, execution_id: str, step_id: str, attempt: int) -> AttemptRow | None:
        with self.session() as session:
            return session.scalar(
                select(AttemptRow).where(
                    AttemptRow.execution_id == execution_id,
                    AttemptRow.step_id == step_id,
                    AttemptRow.attempt == attempt,
                )
            )

    def _write(
        self, parts: tuple[str, ...], params: dict[str, Any], level: int | None = None
    ) -> tuple[bool, bool]:
        """Run one write script (statements of ``hot_statements``) whose last statement
        decides a step; with ``level`` (the step shares it with others), count that level
        down if it did. Returns (the step was decided here, its level is now decided: at
        once for a step alone on its level)."""
        if self._hot is not None:
            if level is not None:
                parts = (*parts[:-1], hot.COUNTED[parts[-1]])
                params = {**params, "level": level}
            rows, count = self._hot.execute(prepared.script(parts), prepared.values(params))
            if level is None:
                return bool(count), bool(count)
            return bool(rows), bool(rows) and rows[0][0] == 0
        with self.engine.begin() as connection:
            count = 0
            for clause in hot.write_script(*parts):
                count = int(connection.execute(clause, params).rowcount)
            if not count or level is None:
                return bool(count), bool(count)
            return True, _count_down(connection, params["eid"], level)

    @_retrying
    def record_success(
        self,
        end: AttemptEnd,
        output: Any,
        *,
        step_started_at: datetime | None = None,
        execution_pending: bool = False,
        finish: tuple[str, Any, str | None] | None = None,
        level: int | None = None,
    ) -> Decided | None:
        """The attempt's row, the step's result and (``finish``: status, output, error)
        the execution's end, in one round trip; ``level``: the step's level of more than
        one step, counted down. None if the step had already reached a final status
        (cancelled meanwhile, or decided by another copy of the message)."""
        stamp = now()
        step_ms = _elapsed_ms(step_started_at or end.started_at, stamp, end.duration_ms)
        parts = [hot.END_ATTEMPT_SQL]
        params = end.params(stamp)
        params.update(out=output, step_ms=step_ms)
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        _finishing(parts, params, finish)
        parts.append(hot.COMPLETE_STEP_SQL)
        decided, closes = self._write(tuple(parts), params, level)
        return Decided(step_ms, closes) if decided else None

    @_retrying
    def record_retry(
        self, end: AttemptEnd, next_attempt_at: datetime, *, execution_pending: bool = False
    ) -> None:
        params = end.params(now())
        params["next_at"] = next_attempt_at
        parts = [hot.END_ATTEMPT_SQL]
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        self._write((*parts, hot.RETRY_STEP_SQL), params)

    @_retrying
    def record_failure(
        self,
        end: AttemptEnd,
        *,
        step_started_at: datetime | None = None,
        execution_pending: bool = False,
        level: int | None = None,
    ) -> Decided | None:
        stamp = now()
        params = end.params(stamp)
        params["step_ms"] = _elapsed_ms(step_started_at or end.started_at, stamp, end.duration_ms)
        parts = [hot.END_ATTEMPT_SQL]
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        decided, closes = self._write((*parts, hot.FAIL_STEP_SQL), params, level)
        return Decided(params["step_ms"], closes) if decided else None

    @_retrying
    def finish_step_without_call(
        self,
        execution_id: str,
        step_id: str,
        status: str,
        cause: str | None,
        reason: str,
        level: int | None = None,
    ) -> Decided | None:
        """Skipped or cancelled: the agent is never called, so no attempt row."""
        assert status in (SKIPPED, CANCELLED)
        with self.engine.begin() as connection:
            result = connection.execute(
                _unfinished_step(execution_id, step_id).values(
                    status=status, skip_cause=cause, reason=reason, finished_at=now()
                )
            )
            if not result.rowcount:
                return None
            closes = level is None or _count_down(connection, execution_id, level)
            return Decided(0, closes)

    @_retrying
    def renew_lease(self, execution_id: str, step_id: str, attempt: int, progress: Any) -> None:
        with self.session() as session, session.begin():
            session.execute(
                _attempt(execution_id, step_id, attempt)
                .where(AttemptRow.outcome.is_(None))
                .values(heartbeat_at=now(), progress=progress)
            )

    @_retrying
    def mark_attempt_lost(self, execution_id: str, step_id: str, attempt: int) -> bool:
        """Close an attempt whose worker died. False if someone else closed it first."""
        with self.session() as session, session.begin():
            result = session.execute(
                _attempt(execution_id, step_id, attempt)
                .where(AttemptRow.outcome.is_(None))
                .values(
                    outcome=OUTCOME_LOST,
                    finished_at=now(),
                    error_type="WorkerLost",
                    error_message="the worker running this attempt stopped answering",
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    @_retrying
    def lost_attempts(self, execution_id: str, step_id: str) -> int:
        with self.session() as session:
            return len(
                list(
                    session.scalars(
                        select(AttemptRow.id).where(
                            AttemptRow.execution_id == execution_id,
                            AttemptRow.step_id == step_id,
                            AttemptRow.outcome == OUTCOME_LOST,
                        )
                    )
                )
            )

    @_retrying
    def record_waiting(self, execution_id: str, step_id: str, until: datetime, reason: str) -> None:
        """The step waits (e.g. for a breaker's cool-down) without using an attempt."""
        with self.session() as session, session.begin():
            session.execute(
                _unfinished_step(execution_id, step_id).values(
                    status=RETRYING, reason=reason, next_attempt_at=until
                )
            )
            session.execute(
                plain_update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.step_id == step_id,
                    StepRow.started_at.is_(None),
                )
                .values(started_at=now())
            )

    @_retrying
    def record_rejection(
        self,
        end: AttemptEnd,
        finish: tuple[str, Any, str | None] | None = None,
        level: int | None = None,
    ) -> Decided | None:
        """A dispatch refused before any call (breaker open, deadline passed): audited as
        an attempt, and the step fails (with ``finish``, the execution ends), in one
        round trip. None if the step had already reached a final status."""
        params = end.params(end.started_at)
        params["step_ms"] = 0
        parts = [hot.END_ATTEMPT_SQL]
        _finishing(parts, params, finish)
        decided, closes = self._write((*parts, hot.FAIL_STEP_SQL), params, level)
        return Decided(0, closes) if decided else None

    @_retrying
    def open_attempts(self, older_than: datetime) -> list[AttemptRow]:
        """Attempts with no end whose lease (last heartbeat, else start) is older than this."""
        with self.session() as session:
            return list(
                session.scalars(
                    select(AttemptRow).where(
                        AttemptRow.outcome.is_(None),
                        or_(
                            AttemptRow.heartbeat_at < older_than,
                            and_(
                                AttemptRow.heartbeat_at.is_(None),
                                AttemptRow.started_at < older_than,
                            ),
                        ),
                    )
                )
            )

    @_retrying
    def attempt_activity(self, execution_id: str) -> tuple[bool, datetime | None]:
        """(Has an attempt without an end?, the latest start, end or lease renewal.)"""
        with self.session() as session:
            row = session.execute(
                select(
                    func.count().filter(AttemptRow.outcome.is_(None)),
                    func.max(AttemptRow.started_at),
                    # Marking an attempt lost is the reaper's doing, not the execution's.
                    func.max(AttemptRow.finished_at).filter(AttemptRow.outcome != OUTCOME_LOST),
                    func.max(AttemptRow.heartbeat_at),
                ).where(AttemptRow.execution_id == execution_id)
            ).one()
        moments = [_aware(value) for value in row[1:] if value is not None]
        return bool(row[0]), max(moments) if moments else None

    @_retrying
    def unfinished_executions(self) -> list[ExecutionRow]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(ExecutionRow).where(ExecutionRow.status.in_([PENDING, RUNNING]))
                )
            )

    @_retrying
    def register_agents(self, team: str, agents: dict[str, dict[str, Any]]) -> None:
        """Remember the team's agents so the heartbeat knows whom to probe."""
        fingerprint = (team, json.dumps(agents, sort_keys=True))
        if fingerprint in self._registered:
            return  # this process registered exactly these agents already
        self._register(team, agents)
        self._registered.add(fingerprint)

    def _register(self, team: str, agents: dict[str, dict[str, Any]]) -> None:
        stamp = now()
        with self.session() as session, session.begin():
            for name, spec in agents.items():
                row = session.get(AgentRow, name)
                if row is None:
                    session.add(AgentRow(name=name, team=team, spec=spec, updated_at=stamp))
                elif row.spec != spec or row.team != team:
                    row.spec, row.team, row.updated_at = spec, team, stamp

    @_retrying
    def agents(self) -> list[AgentRow]:
        with self.session() as session:
            return list(session.scalars(select(AgentRow).order_by(AgentRow.name)))

    @_retrying
    def record_heartbeat(
        self, agent: str, healthy: bool, latency_ms: int, detail: str | None
    ) -> None:
        with self.session() as session, session.begin():
            session.add(
                HeartbeatRow(
                    agent=agent, at=now(), healthy=healthy, latency_ms=latency_ms, detail=detail
                )
            )

    @_retrying
    def last_heartbeats(self) -> dict[str, HeartbeatRow]:
        with self.session() as session:
            latest = (
                select(HeartbeatRow.agent, func.max(HeartbeatRow.id).label("id"))
                .group_by(HeartbeatRow.agent)
                .subquery()
            )
            rows = session.scalars(
                select(HeartbeatRow).join(latest, HeartbeatRow.id == latest.c.id)
            )
            return {row.agent: row for row in rows}

    @_retrying
    def recent_outcomes(self, since: datetime) -> dict[str, tuple[int, int]]:
        """Per agent: (successful attempts, finished attempts) since a moment."""
        with self.session() as session:
            rows = session.execute(
                select(AttemptRow.agent, AttemptRow.outcome, func.count())
                .where(
                    AttemptRow.started_at >= since,
                    AttemptRow.outcome.is_not(None),
                    # A dispatch the breaker refused never reached the agent.
                    AttemptRow.outcome != OUTCOME_REJECTED,
                )
                .group_by(AttemptRow.agent, AttemptRow.outcome)
            )
            totals: dict[str, tuple[int, int]] = {}
            for agent, outcome, count in rows:
                ok, total = totals.get(agent, (0, 0))
                totals[agent] = (ok + (count if outcome == OUTCOME_SUCCESS else 0), total + count)
            return totals

    @_retrying
    def pending_task_ids(self, execution_id: str) -> list[str]:
        """Celery ids of this execution's attempts still running or waiting to retry."""
        with self.session() as session:
            ids = session.scalars(
                select(AttemptRow.task_id)
                .join(
                    StepRow,
                    and_(
                        StepRow.execution_id == AttemptRow.execution_id,
                        StepRow.step_id == AttemptRow.step_id,
                    ),
                )
                .where(
                    AttemptRow.execution_id == execution_id,
                    AttemptRow.task_id.is_not(None),
                    or_(AttemptRow.outcome.is_(None), StepRow.status == RETRYING),
                )
            )
            return sorted({task_id for task_id in ids if task_id})


def _count_down(connection: Any, execution_id: str, level: int) -> bool:
    """Inside the transaction that decided a step of ``level``: count the level down;
    True if that was its last undecided step."""
    remaining = connection.execute(
        text(hot.COUNT_DOWN_SQL), {"eid": execution_id, "level": level}
    ).scalar()
    return bool(remaining == 0)


def _finishing(
    parts: list[str], params: dict[str, Any], finish: tuple[str, Any, str | None] | None
) -> None:
    """Add the execution's end (status, output, error) to a write script, if given."""
    if finish is not None:
        parts.append(hot.FINISH_EXECUTION_SQL)
        params.update(final_status=finish[0], final_output=finish[1], final_error=finish[2])


def spec_digest(spec: dict[str, Any]) -> str:
    """sha256 of a team spec's canonical JSON."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_EXECUTION_COLUMNS = ("id", "team", "strategy", "spec", "spec_digest", "input", "status")
_STEP_COLUMNS = ("execution_id", "step_id", "agent", "position", "level", "status", "attempts")


def _insert_script(
    quote: Callable[[str, tuple[Any, ...]], bytes],
    execution: dict[str, Any],
    steps: list[dict[str, Any]],
    levels: list[dict[str, Any]],
) -> bytes:
    """PostgreSQL: the INSERTs of the execution, its steps and its levels' countdowns
    as one string (psycopg2 quotes every value; JSON goes as its text)."""
    head = quote(
        f"INSERT INTO troupe_executions ({', '.join(_EXECUTION_COLUMNS)}, created_at) "
        f"VALUES ({', '.join(['%s'] * len(_EXECUTION_COLUMNS))}, %s)",
        (
            execution["id"],
            execution["team"],
            execution["strategy"],
            json.dumps(execution["spec"]),
            execution["spec_digest"],
            json.dumps(execution["input"]),
            execution["status"],
            execution["created_at"],
        ),
    )
    placeholders = f"({', '.join(['%s'] * len(_STEP_COLUMNS))})"
    rows = b",".join(quote(placeholders, tuple(step[c] for c in _STEP_COLUMNS)) for step in steps)
    columns = ", ".join(_STEP_COLUMNS)
    script = head + f";INSERT INTO troupe_steps ({columns}) VALUES ".encode() + rows
    if levels:
        counts = b",".join(
            quote("(%s, %s, %s, %s)", (lv["execution_id"], lv["level"], lv["size"], lv["size"]))
            for lv in levels
        )
        script += b";INSERT INTO troupe_levels (execution_id, level, size, remaining) VALUES "
        script += counts
    return script


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _elapsed_ms(started: datetime | None, finished: datetime, fallback: int) -> int:
    if started is None:
        return fallback
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=UTC)
    return max(0, int((finished - started).total_seconds() * 1000))
