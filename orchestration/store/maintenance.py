"""The reaper's records: attempts whose lease expired, unfinished executions and their
last activity, and the claims that let one reaper resume or promote an execution."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from orchestration.constants import (
    EXECUTION_FINAL,
    OUTCOME_LOST,
    PENDING,
    RETRYING,
    RUNNING,
    WAITING_APPROVAL,
)
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow
from orchestration.store.repository import (
    Store,
    _retrying,
    aware,
    mark_lost,
    now,
    plain_update,
)


@dataclass(frozen=True)
class AttemptActivity:
    # An attempt without an end.
    running: bool
    # The latest start, end or lease renewal of an attempt.
    latest: datetime | None
    # The latest start or end: lease renewals left out (a step that runs long does not
    # make the steps waiting beside it any less stuck).
    latest_event: datetime | None


@dataclass(frozen=True)
class StepActivity:
    # A step waits for a retry, or for an approval whose timeout comes, after the moment
    # asked about.
    retry_due: bool
    # The latest start, end or scheduled retry of any step.
    latest: datetime | None


class MaintenanceRecords:
    """What the reaper reads and writes: open attempts whose lease expired, unfinished
    executions and their activity, the claim to resume one."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def url(self) -> str:
        return self._store.url

    @_retrying
    def open_attempts(self, older_than: datetime) -> list[AttemptRow]:
        """Attempts with no end whose lease (last heartbeat, else start) is older than this."""
        with self._store.session() as session:
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
    def mark_attempt_lost(self, execution_id: str, step_id: str, attempt: int) -> bool:
        """Close an attempt whose worker died. False if someone else closed it first."""
        return mark_lost(self._store, execution_id, step_id, attempt)

    @_retrying
    def attempt_activity(self, execution_id: str) -> AttemptActivity:
        with self._store.session() as session:
            row = session.execute(
                select(
                    func.count().filter(AttemptRow.outcome.is_(None)),
                    func.max(AttemptRow.started_at),
                    # Marking an attempt lost is the reaper's doing, not the execution's.
                    func.max(AttemptRow.finished_at).filter(AttemptRow.outcome != OUTCOME_LOST),
                    func.max(AttemptRow.heartbeat_at),
                ).where(AttemptRow.execution_id == execution_id)
            ).one()
        events = [aware(value) for value in row[1:3] if value is not None]
        moments = [*events, *([aware(row[3])] if row[3] is not None else [])]
        return AttemptActivity(
            running=bool(row[0]),
            latest=max(moments) if moments else None,
            latest_event=max(events) if events else None,
        )

    @_retrying
    def unfinished_executions(self) -> list[ExecutionRow]:
        with self._store.session() as session:
            return list(
                session.scalars(
                    select(ExecutionRow).where(ExecutionRow.status.in_([PENDING, RUNNING]))
                )
            )

    @_retrying
    def step_activity(self, execution_id: str, *, due_after: datetime) -> StepActivity:
        """What the stall check needs of an execution's steps, in one aggregate row:
        a 10,000-step execution's rows, loaded every round in every worker, had grown
        the worker's memory by tens of MiB."""
        query = select(
            func.count().filter(
                StepRow.status.in_([RETRYING, WAITING_APPROVAL]),
                StepRow.next_attempt_at > due_after,
            ),
            func.max(StepRow.started_at),
            func.max(StepRow.finished_at),
            func.max(StepRow.next_attempt_at),
        ).where(StepRow.execution_id == execution_id)
        with self._store.reader.connect() as connection:
            row = connection.execute(query).one()
        moments = [aware(value) for value in row[1:] if value is not None]
        return StepActivity(retry_due=bool(row[0]), latest=max(moments) if moments else None)

    @_retrying
    def overdue_joins(self, due_before: datetime) -> set[str]:
        """Unfinished executions with a join still pending past its deadline (due
        before ``due_before``): its timer was lost, or came early."""
        query = (
            select(StepRow.execution_id)
            .distinct()
            .join(ExecutionRow, ExecutionRow.id == StepRow.execution_id)
            .where(
                ExecutionRow.status.in_([PENDING, RUNNING]),
                StepRow.status == PENDING,
                # Only a join's armed deadline leaves a pending step with this set.
                StepRow.next_attempt_at < due_before,
            )
        )
        with self._store.reader.connect() as connection:
            return set(connection.execute(query).scalars())

    @_retrying
    def claim_resume(self, execution_id: str, not_since: datetime) -> bool:
        """Record that this reaper resumes the execution, unless one did after
        ``not_since`` (several workers reap at once: one of them resumes it)."""
        with self._store.engine.begin() as connection:
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
    def claim_promotion(self, execution_id: str, not_since: datetime) -> bool:
        """Record that this reaper promotes the execution's waiting steps, unless one
        did after ``not_since``. Its own column, not ``resumed_at``: a stall's
        resumption, sent at the execution's own priority, must not put off the
        promotion that bounds its wait."""
        with self._store.engine.begin() as connection:
            claimed = connection.execute(
                plain_update(ExecutionRow)
                .where(
                    ExecutionRow.id == execution_id,
                    ExecutionRow.status.not_in(EXECUTION_FINAL),
                    or_(ExecutionRow.promoted_at.is_(None), ExecutionRow.promoted_at < not_since),
                )
                .values(promoted_at=now())
            )
            return bool(claimed.rowcount)
