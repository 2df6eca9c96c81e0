"""Human approvals' records: a request with the step's pause, a decision by
compare-and-set with the step's release, and what ``status`` shows of them.

A step waits for approval exactly while its row says ``waiting_approval`` and its
approval row has no decision: the request sets both in one transaction, a decision
clears both in one transaction, so a decision is recorded once, whoever races for it
(two people, a person and the timeout, a stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestration.constants import PENDING, RUNNING, WAITING_APPROVAL
from orchestration.store.models import ApprovalRow, ExecutionRow, StepRow
from orchestration.store.repository import Store, _retrying, aware, now, plain_update


@dataclass(frozen=True)
class ApprovalRecord:
    """A ``troupe_approvals`` row, its datetimes timezone-aware."""

    execution_id: str
    step_id: str
    prompt: str
    requested_at: datetime
    timeout_at: datetime
    decision: str | None
    decided_by: str | None
    comment: str | None
    decided_at: datetime | None


@dataclass(frozen=True)
class ApprovalDecided:
    """What a decision recorded, and what sending the step on needs."""

    approval: ApprovalRecord
    # The step's agent (its message goes out under that name) and attempts so far.
    agent: str
    attempts: int


_COLUMNS = (
    ApprovalRow.execution_id,
    ApprovalRow.step_id,
    ApprovalRow.prompt,
    ApprovalRow.requested_at,
    ApprovalRow.timeout_at,
    ApprovalRow.decision,
    ApprovalRow.decided_by,
    ApprovalRow.comment,
    ApprovalRow.decided_at,
)


def _record(row: Any) -> ApprovalRecord:
    return ApprovalRecord(
        execution_id=row.execution_id,
        step_id=row.step_id,
        prompt=row.prompt,
        requested_at=aware(row.requested_at),
        timeout_at=aware(row.timeout_at),
        decision=row.decision,
        decided_by=row.decided_by,
        comment=row.comment,
        decided_at=aware(row.decided_at) if row.decided_at is not None else None,
    )


class ApprovalRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    @_retrying
    def get(self, execution_id: str, step_id: str) -> ApprovalRecord | None:
        with self._store.reader.connect() as connection:
            return self._read(connection, execution_id, step_id)

    @_retrying
    def of_execution(self, execution_id: str) -> list[ApprovalRecord]:
        query = (
            select(*_COLUMNS)
            .where(ApprovalRow.execution_id == execution_id)
            .order_by(ApprovalRow.requested_at)
        )
        with self._store.reader.connect() as connection:
            return [_record(row) for row in connection.execute(query)]

    @_retrying
    def step_status(self, execution_id: str, step_id: str) -> str | None:
        query = select(StepRow.status).where(
            StepRow.execution_id == execution_id, StepRow.step_id == step_id
        )
        with self._store.reader.connect() as connection:
            status: str | None = connection.execute(query).scalar()
            return status

    @_retrying
    def request(
        self, execution_id: str, step_id: str, prompt: str, timeout_at: datetime
    ) -> ApprovalRecord:
        """Ask for a decision and pause the step, in one transaction; the request as
        recorded (another copy of the message may have asked first: its timeout holds,
        and if it was decided meanwhile, the step is not paused again)."""
        stamp = now()
        values = {
            "execution_id": execution_id,
            "step_id": step_id,
            "prompt": prompt,
            "requested_at": stamp,
            "timeout_at": timeout_at,
        }
        insert = (
            postgresql_insert if self._store.engine.dialect.name == "postgresql" else sqlite_insert
        )
        with self._store.engine.begin() as connection:
            connection.execute(
                insert(ApprovalRow)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["execution_id", "step_id"])
            )
            asked = self._read(connection, execution_id, step_id)
            assert asked is not None
            if asked.decision is None:
                connection.execute(
                    plain_update(StepRow)
                    .where(
                        StepRow.execution_id == execution_id,
                        StepRow.step_id == step_id,
                        StepRow.status == PENDING,
                    )
                    # next_attempt_at: when the step is due again (the stall check
                    # leaves it alone until then).
                    .values(
                        status=WAITING_APPROVAL,
                        next_attempt_at=asked.timeout_at,
                        started_at=func.coalesce(StepRow.started_at, stamp),
                    )
                )
                # Asking is the execution's first activity if the gate comes first.
                connection.execute(
                    plain_update(ExecutionRow)
                    .where(ExecutionRow.id == execution_id, ExecutionRow.status == PENDING)
                    .values(status=RUNNING, started_at=stamp)
                )
            return asked

    @_retrying
    def decide(
        self, execution_id: str, step_id: str, decision: str, by: str, comment: str | None
    ) -> ApprovalDecided | None:
        """Record a decision and release the step, if it is waiting for one
        (compare-and-set); None if it is not (decided already, not asked yet, stopped)."""
        stamp = now()
        with self._store.engine.begin() as connection:
            # The step's row first: concurrent deciders queue on its lock, and the
            # second finds it released. next_attempt_at: due now (if the message that
            # sends it on is lost, the stall check resumes it).
            released = connection.execute(
                plain_update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.step_id == step_id,
                    StepRow.status == WAITING_APPROVAL,
                )
                .values(status=PENDING, next_attempt_at=stamp)
            ).rowcount
            decided = (
                released
                and connection.execute(
                    plain_update(ApprovalRow)
                    .where(
                        ApprovalRow.execution_id == execution_id,
                        ApprovalRow.step_id == step_id,
                        ApprovalRow.decision.is_(None),
                    )
                    .values(decision=decision, decided_by=by, comment=comment, decided_at=stamp)
                ).rowcount
            )
            if not decided:
                connection.rollback()
                return None
            approval = self._read(connection, execution_id, step_id)
            step = connection.execute(
                select(StepRow.agent, StepRow.attempts).where(
                    StepRow.execution_id == execution_id, StepRow.step_id == step_id
                )
            ).one()
        assert approval is not None
        return ApprovalDecided(approval=approval, agent=step.agent, attempts=step.attempts)

    @staticmethod
    def _read(connection: Connection, execution_id: str, step_id: str) -> ApprovalRecord | None:
        row = connection.execute(
            select(*_COLUMNS).where(
                ApprovalRow.execution_id == execution_id, ApprovalRow.step_id == step_id
            )
        ).first()
        return None if row is None else _record(row)
