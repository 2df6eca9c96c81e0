"""A retry's records: the execution retried, as it ended, and the new execution that starts
with the results it keeps."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from orchestration.errors import ExecutionNotFound
from orchestration.store.models import ExecutionRow, StepRow
from orchestration.store.repository import Store, _retrying


class RetryRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    @_retrying
    def recorded(self, execution_id: str) -> tuple[ExecutionRow, list[StepRow]]:
        """The execution and its plan steps' rows (not the steps added while it ran: a
        retry keeps a plan step's result, or runs it again from scratch)."""
        with self._store.session() as session:
            execution = session.get(ExecutionRow, execution_id)
            if execution is None:
                raise ExecutionNotFound(execution_id)
            steps = list(
                session.scalars(
                    select(StepRow).where(
                        StepRow.execution_id == execution_id, StepRow.parent_id.is_(None)
                    )
                )
            )
        return execution, steps

    @_retrying
    def create(self, execution: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """The retry's execution row and every step row, kept results and steps to run
        alike, in one transaction: nothing runs until it is all there."""
        with self._store.engine.begin() as connection:
            connection.execute(insert(ExecutionRow), execution)
            connection.execute(insert(StepRow), steps)
