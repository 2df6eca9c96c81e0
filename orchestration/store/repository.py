"""Reads and writes of execution state. Each write is one short transaction.

Writes retry transient database errors (a restarted PostgreSQL, a busy SQLite file) so that
an outage delays a run instead of failing it or losing its records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, insert, select, update
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
    COMPLETED,
    EXECUTION_FINAL,
    FAILED,
    OUTCOME_SUCCESS,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
    STEP_FINAL,
)
from orchestration.errors import ExecutionNotFound
from orchestration.store.database import get_engine
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow
from workflows.plan import ExecutionPlan

P = ParamSpec("P")
R = TypeVar("R")


def now() -> datetime:
    return datetime.now(UTC)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _retrying(fn: Callable[P, R]) -> Callable[P, R]:
    return retry(
        retry=retry_if_exception(_is_transient),
        wait=wait_exponential_jitter(initial=0.05, max=2.0),
        stop=stop_after_delay(120),
        reraise=True,
    )(fn)


@dataclass(frozen=True)
class AttemptError:
    type: str
    message: str
    outcome: str


class Store:
    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or get_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    # --- executions -------------------------------------------------------------------

    @_retrying
    def create_execution(
        self, execution_id: str, spec: dict[str, Any], plan: ExecutionPlan, input_value: Any
    ) -> None:
        created = now()
        with self.session() as session, session.begin():
            session.add(
                ExecutionRow(
                    id=execution_id,
                    team=plan.team,
                    strategy=plan.strategy.value,
                    spec=spec,
                    input=input_value,
                    status=PENDING,
                    created_at=created,
                )
            )
            session.flush()
            session.execute(
                insert(StepRow),
                [
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
                ],
            )

    @_retrying
    def execution(self, execution_id: str) -> ExecutionRow:
        with self.session() as session:
            row = session.get(ExecutionRow, execution_id)
        if row is None:
            raise ExecutionNotFound(execution_id)
        return row

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
                update(ExecutionRow)
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
                update(StepRow)
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
    ) -> bool:
        """Record that an attempt starts. False if this attempt was already recorded."""
        stamp = now()
        try:
            with self.session() as session, session.begin():
                session.add(
                    AttemptRow(
                        execution_id=execution_id,
                        step_id=step_id,
                        attempt=attempt,
                        agent=agent,
                        task_id=task_id,
                        worker=worker,
                        started_at=stamp,
                    )
                )
                session.flush()
                session.execute(
                    update(StepRow)
                    .where(StepRow.execution_id == execution_id, StepRow.step_id == step_id)
                    .values(status=RUNNING, attempts=attempt, next_attempt_at=None)
                )
                session.execute(
                    update(StepRow)
                    .where(
                        StepRow.execution_id == execution_id,
                        StepRow.step_id == step_id,
                        StepRow.started_at.is_(None),
                    )
                    .values(started_at=stamp)
                )
                session.execute(
                    update(ExecutionRow)
                    .where(ExecutionRow.id == execution_id, ExecutionRow.status == PENDING)
                    .values(status=RUNNING, started_at=stamp)
                )
        except IntegrityError:
            return False
        return True

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

    @_retrying
    def record_success(
        self, execution_id: str, step_id: str, attempt: int, output: Any, duration_ms: int
    ) -> None:
        stamp = now()
        with self.session() as session, session.begin():
            self._close_attempt(
                session, execution_id, step_id, attempt, stamp, duration_ms, OUTCOME_SUCCESS, None
            )
            step = session.get(StepRow, (execution_id, step_id))
            assert step is not None
            step.status = COMPLETED
            step.output = output
            step.error_type = step.error_message = None
            step.finished_at = stamp
            step.duration_ms = _elapsed_ms(step.started_at, stamp, duration_ms)

    @_retrying
    def record_retry(
        self,
        execution_id: str,
        step_id: str,
        attempt: int,
        duration_ms: int,
        error: AttemptError,
        next_attempt_at: datetime,
    ) -> None:
        with self.session() as session, session.begin():
            self._close_attempt(
                session, execution_id, step_id, attempt, now(), duration_ms, error.outcome, error
            )
            session.execute(
                update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.step_id == step_id,
                    StepRow.status.not_in(STEP_FINAL),
                )
                .values(
                    status=RETRYING,
                    error_type=error.type,
                    error_message=error.message,
                    next_attempt_at=next_attempt_at,
                )
            )

    @_retrying
    def record_failure(
        self,
        execution_id: str,
        step_id: str,
        attempt: int,
        duration_ms: int,
        error: AttemptError,
    ) -> None:
        stamp = now()
        with self.session() as session, session.begin():
            self._close_attempt(
                session, execution_id, step_id, attempt, stamp, duration_ms, error.outcome, error
            )
            step = session.get(StepRow, (execution_id, step_id))
            assert step is not None
            step.status = FAILED
            step.error_type = error.type
            step.error_message = error.message
            step.finished_at = stamp
            step.duration_ms = _elapsed_ms(step.started_at, stamp, duration_ms)

    @_retrying
    def finish_step_without_call(
        self, execution_id: str, step_id: str, status: str, cause: str | None, reason: str
    ) -> None:
        """Skipped or cancelled: the agent is never called, so no attempt row."""
        assert status in (SKIPPED, CANCELLED)
        with self.session() as session, session.begin():
            session.execute(
                update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.step_id == step_id,
                    StepRow.status.not_in(STEP_FINAL),
                )
                .values(status=status, skip_cause=cause, reason=reason, finished_at=now())
            )

    @staticmethod
    def _close_attempt(
        session: Session,
        execution_id: str,
        step_id: str,
        attempt: int,
        stamp: datetime,
        duration_ms: int,
        outcome: str,
        error: AttemptError | None,
    ) -> None:
        session.execute(
            update(AttemptRow)
            .where(
                AttemptRow.execution_id == execution_id,
                AttemptRow.step_id == step_id,
                AttemptRow.attempt == attempt,
            )
            .values(
                finished_at=stamp,
                duration_ms=duration_ms,
                outcome=outcome,
                error_type=error.type if error else None,
                error_message=error.message if error else None,
            )
        )


def _elapsed_ms(started: datetime | None, finished: datetime, fallback: int) -> int:
    if started is None:
        return fallback
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=UTC)
    return max(0, int((finished - started).total_seconds() * 1000))
