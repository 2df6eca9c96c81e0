"""The client's records: creating an execution, reading its status, steps and attempts,
cancelling it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select

from orchestration.constants import (
    CANCELLED,
    EXECUTION_FINAL,
    OUTCOME_LOST,
    PENDING,
    RETRYING,
    RUNNING,
    SKIP_STOPPED,
    WAITING_APPROVAL,
)
from orchestration.errors import ExecutionNotFound
from orchestration.spec import Budget
from orchestration.store.approvals import ApprovalRecords
from orchestration.store.models import AttemptRow, ExecutionRow, HandoffRow, StepRow
from orchestration.store.repository import (
    Store,
    _retrying,
    now,
    plain_update,
    read_steps,
    spec_digest,
)
from workflows.plan import ExecutionPlan


class ExecutionRecords:
    """What the client reads and writes: an execution's creation, status, steps, attempts and
    cancellation."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def approvals(self) -> ApprovalRecords:
        """Steps' approvals: what status shows, and a person's decision."""
        return ApprovalRecords(self._store)

    @_retrying
    def create_execution(
        self,
        execution_id: str,
        spec: dict[str, Any],
        plan: ExecutionPlan,
        input_value: Any,
        digest: str | None = None,
        budget: Budget | None = None,
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
            "max_cost_usd": budget.max_cost_usd if budget else None,
            "max_tokens": budget.max_tokens if budget else None,
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
        self._store.insert_execution(execution, steps)

    @_retrying
    def execution(self, execution_id: str) -> ExecutionRow:
        with self._store.session() as session:
            row = session.get(ExecutionRow, execution_id)
        if row is None:
            raise ExecutionNotFound(execution_id)
        return row

    @_retrying
    def execution_status(self, execution_id: str) -> str:
        with self._store.session() as session:
            status = session.scalar(
                select(ExecutionRow.status).where(ExecutionRow.id == execution_id)
            )
        if status is None:
            raise ExecutionNotFound(execution_id)
        return status

    @_retrying
    def steps(self, execution_id: str) -> list[StepRow]:
        return read_steps(self._store, execution_id)

    @_retrying
    def usage(self, execution_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(step, agent, usage) of every attempt of the execution that reported usage."""
        query = select(AttemptRow.step_id, AttemptRow.agent, AttemptRow.usage).where(
            AttemptRow.execution_id == execution_id
        )
        with self._store.session() as session:
            rows = session.execute(query.order_by(AttemptRow.id)).all()
        return [(sid, agent, usage) for sid, agent, usage in rows if usage]

    @_retrying
    def handoffs(self, execution_id: str) -> list[HandoffRow]:
        """Every handoff of the execution, taken or refused, in the order they happened."""
        query = select(HandoffRow).where(HandoffRow.execution_id == execution_id)
        with self._store.session() as session:
            return list(session.scalars(query.order_by(HandoffRow.id)))

    @_retrying
    def attempts(self, execution_id: str, step_id: str | None = None) -> list[AttemptRow]:
        query = select(AttemptRow).where(AttemptRow.execution_id == execution_id)
        if step_id is not None:
            query = query.where(AttemptRow.step_id == step_id)
        with self._store.session() as session:
            return list(session.scalars(query.order_by(AttemptRow.id)))

    @_retrying
    def cancel_execution(
        self, execution_id: str, reason: str, *, abandon_running: bool = False
    ) -> bool:
        """Durably cancel: the execution and its unstarted steps, before anything is revoked.

        ``abandon_running``: its running steps too, and their open attempts are closed as
        lost, for a caller whose worker stops with it. A result that still comes is kept
        in its attempt's row, not in the step (``hot_statements.COMPLETE_STEP_SQL``)."""
        stamp = now()
        with self._store.session() as session, session.begin():
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
                    StepRow.status.in_([PENDING, RETRYING, WAITING_APPROVAL]),
                )
                .values(status=CANCELLED, reason=reason, finished_at=stamp)
            )
            if abandon_running:
                session.execute(
                    plain_update(StepRow)
                    .where(StepRow.execution_id == execution_id, StepRow.status == RUNNING)
                    .values(
                        status=CANCELLED,
                        skip_cause=SKIP_STOPPED,
                        reason=reason,
                        finished_at=stamp,
                    )
                )
                session.execute(
                    plain_update(AttemptRow)
                    .where(AttemptRow.execution_id == execution_id, AttemptRow.outcome.is_(None))
                    .values(
                        outcome=OUTCOME_LOST,
                        finished_at=stamp,
                        error_type="WorkerStopped",
                        error_message=reason,
                    )
                )
            return True

    @_retrying
    def pending_task_ids(self, execution_id: str) -> list[str]:
        """Celery ids of this execution's attempts still running or waiting to retry."""
        with self._store.session() as session:
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
