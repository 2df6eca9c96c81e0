"""Executions started by a Celery signature (``Team.s()``): the Celery task that
completes each one (kept as JSON, sent once when the execution ends), and the
execution's outcome that task reports.

Nothing here knows Celery: a completion is an opaque JSON mapping that ``workers``
makes and sends.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orchestration.constants import EXECUTION_FINAL
from orchestration.store import prepared
from orchestration.store.models import CanvasRow, ExecutionRow
from orchestration.store.repository import Store, _retrying, now, plain_update


class CanvasRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    @_retrying
    def hold(self, execution_id: str, completion: dict[str, Any]) -> None:
        """Keep the execution's completion until it ends. A second hold (a redelivered
        start) changes nothing: the first one stands, sent or not."""
        insert = (
            postgresql_insert if self._store.engine.dialect.name == "postgresql" else sqlite_insert
        )
        with self._store.engine.begin() as connection:
            connection.execute(
                insert(CanvasRow)
                .values(execution_id=execution_id, completion=completion, created_at=now())
                .on_conflict_do_nothing(index_elements=["execution_id"])
            )

    @_retrying
    def claim(self, execution_id: str) -> dict[str, Any] | None:
        """The completion to send now that the execution has ended, marked sent in the
        same statement: None if it has none (not started by a signature), or another
        process claimed it. One round trip, prepared on PostgreSQL: every execution's
        end asks."""
        rows = self._store.run_prepared(prepared.CANVAS_CLAIM, {"ts": now(), "eid": execution_id})
        if rows is not None:
            return rows[0][0] if rows else None
        with self._store.reader.connect() as connection:
            completion: dict[str, Any] | None = connection.execute(
                plain_update(CanvasRow)
                .where(CanvasRow.execution_id == execution_id, CanvasRow.sent_at.is_(None))
                .values(sent_at=now())
                .returning(CanvasRow.completion)
            ).scalar()
        return completion

    @_retrying
    def release(self, execution_id: str) -> None:
        """A claimed completion that could not be sent: the sweep sends it later."""
        with self._store.reader.connect() as connection:
            connection.execute(
                plain_update(CanvasRow)
                .where(CanvasRow.execution_id == execution_id)
                .values(sent_at=None)
            )

    @_retrying
    def unsent(self, older_than: float, limit: int = 100) -> list[str]:
        """Ended executions whose completion is still unsent ``older_than`` seconds
        after they ended: their ender died before sending it, or ended them without
        knowing (a cancellation from another process)."""
        cutoff: datetime = now() - timedelta(seconds=older_than)
        query = (
            select(CanvasRow.execution_id)
            .join(ExecutionRow, ExecutionRow.id == CanvasRow.execution_id)
            .where(
                CanvasRow.sent_at.is_(None),
                ExecutionRow.status.in_(EXECUTION_FINAL),
                ExecutionRow.finished_at < cutoff,
            )
            .limit(limit)
        )
        with self._store.reader.connect() as connection:
            return list(connection.execute(query).scalars())

    @_retrying
    def outcome(self, execution_id: str) -> tuple[str, Any, str | None] | None:
        """(status, output, error) of the execution; None if there is none."""
        query = select(ExecutionRow.status, ExecutionRow.output, ExecutionRow.error).where(
            ExecutionRow.id == execution_id
        )
        with self._store.reader.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else (row[0], row[1], row[2])

    @_retrying
    def exists(self, execution_id: str) -> str | None:
        """The execution's status, if it was recorded."""
        query = select(ExecutionRow.status).where(ExecutionRow.id == execution_id)
        with self._store.reader.connect() as connection:
            status: str | None = connection.execute(query).scalar()
        return status
