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
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    EXECUTION_FINAL,
    FAILED,
    OUTCOME_LOST,
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
from orchestration.store.database import get_engine, get_hot_engine
from orchestration.store.models import (
    AttemptRow,
    ExecutionRow,
    StepRow,
)
from workflows.plan import ExecutionPlan
from workflows.scheduling import AddedStep

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


def is_transient(exc: BaseException) -> bool:
    """An error of the database, not of the request: unreachable, restarting, no free
    connection in time. Worth another try; never a reason to drop work."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    if _is_driver_outage(exc):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _is_driver_outage(exc: BaseException) -> bool:
    """A driver's own connection error that reached us unwrapped (psycopg2's or
    sqlite3's OperationalError or InterfaceError)."""
    kind = type(exc)
    return kind.__module__.split(".")[0] in ("psycopg2", "sqlite3") and any(
        cls.__name__ in ("OperationalError", "InterfaceError") for cls in kind.__mro__
    )


def _retrying(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn``, retried under tenacity once it has failed with a transient error.

    The first try runs outside tenacity: setting up its retry state cost about as much
    Python as the delegation's own statements, on every call that never needed it."""
    retried = retry(
        retry=retry_if_exception(is_transient),
        wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
        stop=stop_after_delay(120),
        reraise=True,
    )(fn)

    @functools.wraps(fn)
    def first_try(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
        return retried(*args, **kwargs)

    return first_try


@dataclass(frozen=True)
class Countdown:
    """What deciding a step counts down: the steps that wait for it, and for a sink,
    the execution's sinks left."""

    dependents: tuple[str, ...] = ()
    sink: bool = False


@dataclass(frozen=True)
class Decided:
    """This write decided the step (no other copy of its message had)."""

    # From the step's first start to now, when it was known (else the attempt's).
    step_ms: int = 0
    # Each dependent counted down, with its count now; those at zero are ready.
    counts: tuple[tuple[str, int], ...] = ()
    # The last sink was decided: the writer ends the execution.
    ended: bool = False

    @property
    def ready(self) -> tuple[str, ...]:
        return tuple(step_id for step_id, waiting in self.counts if waiting == 0)


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
    def __init__(self, url: str, engine: Engine | None = None, *, connections: int = 20) -> None:
        """``connections``: the most this process opens to the database, whatever the
        number of threads using it (a quarter for SQLAlchemy's pool, the rest for the
        delegation's prepared statements on PostgreSQL)."""
        self.url = url
        general = max(2, connections // 4)
        self.engine = engine or get_engine(url, general)
        # Single-statement reads need no BEGIN/COMMIT (psycopg2 switches to autocommit
        # on the client, without a round trip).
        self.reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # On PostgreSQL the delegation's read and writes are prepared statements.
        self.prepared = self.engine.dialect.name == "postgresql" and engine is None
        self._hot = (
            prepared.HotConnections(get_hot_engine(url), max(1, connections - general))
            if self.prepared
            else None
        )
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
            "sinks_left": len(plan.sinks),
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
                "waiting": len(step.deps),
            }
            for step in plan.steps
        ]
        if self._hot is not None:
            # One round trip: the INSERTs as one string, one implicit transaction.
            self._hot.execute(_insert_script(self._hot.quote, execution, steps))
            return
        with self.engine.begin() as connection:
            connection.execute(insert(ExecutionRow), execution)
            connection.execute(insert(StepRow), steps)

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
                    .order_by(StepRow.position, StepRow.item_index.nulls_first())
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
        ).where(StepRow.execution_id == execution_id, StepRow.parent_id.is_(None))
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
        params = {
            "eid": execution_id,
            "sid": step_id,
            "att": attempt,
            "agent": agent,
            "task_id": task_id,
            "worker": worker,
            "started": started_at or now(),
        }
        if self._hot is not None:
            parts = [hot.MARK_EXECUTION_RUNNING_SQL] if execution_pending else []
            parts.append(hot.BEGIN_ATTEMPT_SQL_GUARDED)
            rows, _ = self._hot.execute(prepared.script(tuple(parts)), prepared.values(params))
            claimed, inserted = rows[0]
            if not claimed:
                return "cancelled"
            return "started" if inserted else "duplicate"
        try:
            with self.engine.begin() as connection:
                clauses = hot.write_script(hot.BEGIN_ATTEMPT_SQL, hot.CLAIM_STEP_SQL)
                connection.execute(clauses[0], params)
                if not connection.execute(clauses[1], params).rowcount:
                    connection.rollback()
                    return "cancelled"
                if execution_pending:
                    connection.execute(hot.write_script(hot.MARK_EXECUTION_RUNNING_SQL)[0], params)
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

    def _write(self, parts: tuple[str, ...], params: dict[str, Any]) -> int:
        """Run one write script (statements of ``hot_statements``) that decides nothing;
        the row count of its last statement."""
        if self._hot is not None:
            _, count = self._hot.execute(prepared.script(parts), prepared.values(params))
            return count
        with self.engine.begin() as connection:
            count = 0
            for clause in hot.write_script(*parts):
                count = int(connection.execute(clause, params).rowcount)
            return count

    def _decide(
        self, parts: tuple[str, ...], params: dict[str, Any], countdown: Countdown, step_ms: int
    ) -> Decided | None:
        """Run one write script whose last statement decides a step and, if it did,
        count down what waits for it. None: the step was decided already."""
        dependents = sorted(countdown.dependents)
        if self._hot is not None:
            parts = (*parts[:-1], hot.COUNTED[parts[-1]])
            params = {**params, "deps": dependents, "sink": countdown.sink}
            rows, _ = self._hot.execute(prepared.script(parts), prepared.values(params))
            return _decided(rows, step_ms)
        with self.engine.begin() as connection:
            count = 0
            for clause in hot.write_script(*parts):
                count = int(connection.execute(clause, params).rowcount)
            if not count:
                return None
            rows = [("", -1)]
            down = hot.write_script(hot.COUNT_DOWN_SQL, hot.SINK_DOWN_SQL)
            for dep in dependents:
                found = connection.execute(down[0], {"eid": params["eid"], "dep": dep}).first()
                if found is not None:
                    rows.append((found[0], found[1]))
            if countdown.sink:
                left = connection.execute(down[1], {"eid": params["eid"]}).scalar()
                rows.append((None, int(left or 0)))
            return _decided(rows, step_ms)

    @_retrying
    def record_success(
        self,
        end: AttemptEnd,
        output: Any,
        countdown: Countdown,
        *,
        step_started_at: datetime | None = None,
        execution_pending: bool = False,
        finish: tuple[str, Any, str | None] | None = None,
    ) -> Decided | None:
        """The attempt's row, the step's result, its countdowns and (``finish``: status,
        output, error) the execution's end, in one round trip. None if the step had
        already reached a final status (cancelled meanwhile, or decided by another copy
        of the message)."""
        stamp = now()
        step_ms = _elapsed_ms(step_started_at or end.started_at, stamp, end.duration_ms)
        parts = [hot.END_ATTEMPT_SQL]
        params = end.params(stamp)
        params.update(out=output, step_ms=step_ms)
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        _finishing(parts, params, finish)
        parts.append(hot.COMPLETE_STEP_SQL)
        return self._decide(tuple(parts), params, countdown, step_ms)

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
        countdown: Countdown,
        *,
        step_started_at: datetime | None = None,
        execution_pending: bool = False,
        finish: tuple[str, Any, str | None] | None = None,
    ) -> Decided | None:
        """A failed attempt that fails the step (``end.outcome`` rejected: refused before
        any call), its countdowns and (``finish``) the execution's end, in one round trip."""
        stamp = now()
        params = end.params(stamp)
        step_ms = _elapsed_ms(step_started_at or end.started_at, stamp, end.duration_ms)
        params["step_ms"] = step_ms
        parts = [hot.END_ATTEMPT_SQL]
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        _finishing(parts, params, finish)
        return self._decide((*parts, hot.FAIL_STEP_SQL), params, countdown, step_ms)

    @_retrying
    def decide_without_call(
        self,
        execution_id: str,
        step_id: str,
        status: str,
        countdown: Countdown,
        *,
        cause: str | None = None,
        reason: str | None = None,
        output: Any = None,
        attempts: int = 0,
    ) -> Decided | None:
        """A step decided without calling an agent: skipped, cancelled, or a map step
        joining its items (completed with their outputs, or failed)."""
        stamp = now()
        params: dict[str, Any] = {
            "eid": execution_id,
            "sid": step_id,
            "ts": stamp,
            "started": stamp,
            "att": attempts,
            "step_ms": 0,
        }
        if status == COMPLETED:
            params["out"] = output
            return self._decide((hot.COMPLETE_STEP_SQL,), params, countdown, 0)
        if status == FAILED:
            params.update(error_type="MapItemFailed", error_message=reason)
            return self._decide((hot.FAIL_STEP_SQL,), params, countdown, 0)
        assert status in (SKIPPED, CANCELLED)
        params.update(status=status, cause=cause, reason=reason)
        return self._decide((hot.SKIP_STEP_SQL,), params, countdown, 0)

    @_retrying
    def expand(
        self, execution_id: str, step_id: str, items: Iterable[AddedStep], position: int
    ) -> bool:
        """Add a map step's items to the running execution and make the map step wait
        for them, atomically. False if the step was expanded (or decided) already: a
        redelivered or resumed map never adds an item twice."""
        added = [
            {
                "execution_id": execution_id,
                "step_id": item.step_id,
                "agent": item.agent,
                "position": position,
                "level": 0,
                "status": PENDING,
                "attempts": 0,
                "waiting": 0,
                "parent_id": item.parent_id,
                "item_index": item.item_index,
                "item": item.item,
                "origin": {**item.origin, "at": now().isoformat()},
                "dependents": list(item.dependents),
            }
            for item in items
        ]
        stamp = now()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                _unfinished_step(execution_id, step_id)
                .where(StepRow.fan_out.is_(None))
                .values(
                    status=RUNNING,
                    fan_out=len(added),
                    waiting=StepRow.waiting + len(added),
                    started_at=func.coalesce(StepRow.started_at, stamp),
                )
            )
            if not claimed.rowcount:
                return False
            if added:
                connection.execute(insert(StepRow), added)
            return True

    @_retrying
    def items(self, execution_id: str, step_id: str) -> list[Any]:
        """A map step's items, in order: what joining them needs."""
        query = (
            select(
                StepRow.step_id,
                StepRow.item_index,
                StepRow.status,
                StepRow.output,
                StepRow.error_type,
                StepRow.error_message,
                StepRow.reason,
                StepRow.attempts,
            )
            .where(StepRow.execution_id == execution_id, StepRow.parent_id == step_id)
            .order_by(StepRow.item_index)
        )
        with self.reader.connect() as connection:
            return list(connection.execute(query))

    @_retrying
    def renew_lease(self, execution_id: str, step_id: str, attempt: int, progress: Any) -> None:
        params = {"eid": execution_id, "sid": step_id, "att": attempt, "ts": now()}
        params["progress"] = progress
        self._write((hot.RENEW_LEASE_SQL,), params)

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
    def claim_resume(self, execution_id: str, not_since: datetime) -> bool:
        """Record that this reaper resumes the execution, unless one did after
        ``not_since`` (several workers reap at once: one of them resumes it)."""
        with self.engine.begin() as connection:
            claimed = connection.execute(
                plain_update(ExecutionRow)
                .where(
                    ExecutionRow.id == execution_id,
                    ExecutionRow.status.not_in(EXECUTION_FINAL),
                    or_(ExecutionRow.resumed_at.is_(None), ExecutionRow.resumed_at < not_since),
                )
                .values(resumed_at=now())
            )
            return bool(claimed.rowcount)

    @_retrying
    def unfinished_executions(self) -> list[ExecutionRow]:
        with self.session() as session:
            return list(
                session.scalars(
                    select(ExecutionRow).where(ExecutionRow.status.in_([PENDING, RUNNING]))
                )
            )

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


def _decided(rows: list[Any], step_ms: int) -> Decided | None:
    """What a deciding write returned (see ``hot_statements._counted``)."""
    if not rows:
        return None
    counts = tuple((row[0], int(row[1])) for row in rows if row[0])
    ended = any(row[0] is None and int(row[1]) == 0 for row in rows)
    return Decided(step_ms=step_ms, counts=counts, ended=ended)


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


_EXECUTION_COLUMNS = (
    "id",
    "team",
    "strategy",
    "spec",
    "spec_digest",
    "input",
    "status",
    "sinks_left",
)
_STEP_COLUMNS = (
    "execution_id",
    "step_id",
    "agent",
    "position",
    "level",
    "status",
    "attempts",
    "waiting",
)


def _insert_script(
    quote: Callable[[str, tuple[Any, ...]], bytes],
    execution: dict[str, Any],
    steps: list[dict[str, Any]],
) -> bytes:
    """PostgreSQL: the INSERTs of the execution and its steps as one string (psycopg2
    quotes every value; JSON goes as its text)."""
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
            execution["sinks_left"],
            execution["created_at"],
        ),
    )
    placeholders = f"({', '.join(['%s'] * len(_STEP_COLUMNS))})"
    rows = b",".join(quote(placeholders, tuple(step[c] for c in _STEP_COLUMNS)) for step in steps)
    columns = ", ".join(_STEP_COLUMNS)
    return head + f";INSERT INTO troupe_steps ({columns}) VALUES ".encode() + rows


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _elapsed_ms(started: datetime | None, finished: datetime, fallback: int) -> int:
    if started is None:
        return fallback
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=UTC)
    return max(0, int((finished - started).total_seconds() * 1000))
