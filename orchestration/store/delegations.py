"""The delegation's hot path: one read before the call, a start marker and lease renewals
for a call that runs a while, one write at the end that decides the step and counts down
what waits for it; a map step's expansion and items; the execution's end."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    EXECUTION_FINAL,
    FAILED,
    OUTCOME_LOST,
    PENDING,
    RETRYING,
    RUNNING,
    SKIPPED,
)
from orchestration.errors import ExecutionNotFound
from orchestration.store import hot_statements as hot
from orchestration.store.models import AttemptRow, ExecutionRow, HandoffRow, StepRow
from orchestration.store.repository import (
    AttemptEnd,
    Countdown,
    Decided,
    Store,
    _elapsed_ms,
    _finishing,
    _retrying,
    _unfinished_step,
    mark_lost,
    now,
    plain_update,
    read_steps,
)
from workflows.scheduling import AddedStep


class DelegationRecords:
    """What a delegation reads and writes on its hot path: the team's spec, the step's state,
    the attempt's marker, lease and end, the step's decision and countdowns, a map step's
    items, the execution's end."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def url(self) -> str:
        return self._store.url

    @_retrying
    def execution_digest(self, execution_id: str) -> str | None:
        """The digest of the spec an execution was enqueued with (None for executions
        recorded before digests were)."""
        found = self._store.read_digest(execution_id)
        if not found:
            raise ExecutionNotFound(execution_id)
        digest: str | None = found[0].spec_digest
        return digest

    @_retrying
    def execution_spec(self, execution_id: str) -> dict[str, Any]:
        """The team spec an execution was enqueued with (as stored: JSON)."""
        with self._store.reader.connect() as connection:
            spec = connection.execute(
                select(ExecutionRow.spec).where(ExecutionRow.id == execution_id)
            ).scalar()
        if spec is None:
            raise ExecutionNotFound(execution_id)
        return dict(spec)

    @_retrying
    def delegation_state(
        self, execution_id: str, step_id: str, ancestors: Iterable[str] = ()
    ) -> tuple[str | None, Any, dict[str, Any]]:
        """Everything a delegation reads, in one statement: the execution's status and
        input, this step's row and the rows of the steps whose results it reads."""
        found = self._store.read_delegation_state(execution_id, step_id, list(ancestors))
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
        with self._store.session() as session:
            rows = session.scalars(
                select(StepRow).where(
                    StepRow.execution_id == execution_id, StepRow.step_id.in_(ids)
                )
            )
            return {row.step_id: row for row in rows}

    @_retrying
    def steps(self, execution_id: str) -> list[StepRow]:
        return read_steps(self._store, execution_id)

    @_retrying
    def step_results(self, execution_id: str) -> list[Any]:
        """What deciding an execution's outcome needs of each step (id, status, output,
        error type and message, reason, skip cause), as plain rows: an ORM object per
        step of a 10,000-step execution held 8.5 MiB more in the worker that finished it."""
        query = select(
            StepRow.step_id,
            StepRow.status,
            StepRow.output,
            StepRow.error_type,
            StepRow.error_message,
            StepRow.reason,
            StepRow.skip_cause,
        ).where(StepRow.execution_id == execution_id, StepRow.parent_id.is_(None))
        with self._store.reader.connect() as connection:
            return list(connection.execute(query))

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
        return self._store.mark_attempt_begun(params, execution_pending=execution_pending)

    @_retrying
    def attempt_row(self, execution_id: str, step_id: str, attempt: int) -> AttemptRow | None:
        with self._store.session() as session:
            return session.scalar(
                select(AttemptRow).where(
                    AttemptRow.execution_id == execution_id,
                    AttemptRow.step_id == step_id,
                    AttemptRow.attempt == attempt,
                )
            )

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
        return self._store.decide(tuple(parts), params, countdown, step_ms)

    @_retrying
    def record_retry(
        self, end: AttemptEnd, next_attempt_at: datetime, *, execution_pending: bool = False
    ) -> None:
        params = end.params(now())
        params["next_at"] = next_attempt_at
        parts = [hot.END_ATTEMPT_SQL]
        if execution_pending:
            parts.append(hot.MARK_EXECUTION_RUNNING_SQL)
        self._store.write((*parts, hot.RETRY_STEP_SQL), params)

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
        return self._store.decide((*parts, hot.FAIL_STEP_SQL), params, countdown, step_ms)

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
        error_type: str = "MapItemFailed",
    ) -> Decided | None:
        """A step decided without calling an agent: skipped, cancelled, a map step
        joining its items, a join aggregating its parents, or a step taking its
        handoff's result (completed with their outputs, or failed with ``error_type`` and
        ``reason``)."""
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
            return self._store.decide((hot.COMPLETE_STEP_SQL,), params, countdown, 0)
        if status == FAILED:
            params.update(error_type=error_type, error_message=reason)
            return self._store.decide((hot.FAIL_STEP_SQL,), params, countdown, 0)
        assert status in (SKIPPED, CANCELLED)
        params.update(status=status, cause=cause, reason=reason)
        return self._store.decide((hot.SKIP_STEP_SQL,), params, countdown, 0)

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
        with self._store.engine.begin() as connection:
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
    def hand_off(
        self,
        execution_id: str,
        step_id: str,
        child: AddedStep,
        record: dict[str, Any],
        attempt: AttemptEnd | None = None,
    ) -> bool:
        """The caller's decision to hand off, its handoff step, and the handoff's audit
        row, in one transaction: the caller then waits for the handoff step as a map
        step waits for its items. False if it was decided already (a redelivery)."""
        stamp = now()
        added = _agent_added_row(execution_id, child, stamp)
        values: dict[str, Any] = {
            "status": RUNNING,
            "fan_out": 1,
            "waiting": StepRow.waiting + 1,
            "started_at": func.coalesce(StepRow.started_at, stamp),
        }
        if attempt is not None:
            values["attempts"] = attempt.attempt
        with self._store.engine.begin() as connection:
            claimed = connection.execute(
                _unfinished_step(execution_id, step_id)
                .where(StepRow.fan_out.is_(None))
                .values(**values)
            )
            if not claimed.rowcount:
                return False
            connection.execute(insert(StepRow), [added])
            connection.execute(
                insert(HandoffRow), [{**record, "execution_id": execution_id, "at": stamp}]
            )
            if attempt is not None:
                # The attempt whose agent asked for the handoff ended well.
                (end,) = hot.write_script(hot.END_ATTEMPT_SQL)
                connection.execute(end, attempt.params(stamp))
            return True

    @_retrying
    def record_handoff(self, execution_id: str, record: dict[str, Any]) -> None:
        """A handoff refused (a loop, too deep): audited, nothing added."""
        with self._store.engine.begin() as connection:
            connection.execute(
                insert(HandoffRow), [{**record, "execution_id": execution_id, "at": now()}]
            )

    @_retrying
    def add_ask(self, execution_id: str, child: AddedStep) -> bool:
        """A question step, unless it exists (a retried asker asking again). True if
        this call added it."""
        row = _agent_added_row(execution_id, child, now())
        try:
            with self._store.engine.begin() as connection:
                connection.execute(insert(StepRow), [row])
        except IntegrityError:
            return False
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
            .where(
                StepRow.execution_id == execution_id,
                StepRow.parent_id == step_id,
                # A map's items have an index; a step's handoff and questions have none.
                StepRow.item_index.is_not(None),
            )
            .order_by(StepRow.item_index)
        )
        with self._store.reader.connect() as connection:
            return list(connection.execute(query))

    @_retrying
    def handoff_step(self, execution_id: str, step_id: str) -> Any:
        """The step ``step_id`` handed off to (its one handoff child)."""
        query = select(
            StepRow.step_id,
            StepRow.status,
            StepRow.output,
            StepRow.error_type,
            StepRow.error_message,
            StepRow.reason,
            StepRow.attempts,
        ).where(
            StepRow.execution_id == execution_id,
            StepRow.parent_id == step_id,
            StepRow.step_id.like(f"{_like_escaped(step_id)}~to~%", escape="\\"),
        )
        with self._store.reader.connect() as connection:
            return connection.execute(query).first()

    @_retrying
    def renew_lease(self, execution_id: str, step_id: str, attempt: int, progress: Any) -> None:
        params = {"eid": execution_id, "sid": step_id, "att": attempt, "ts": now()}
        params["progress"] = progress
        self._store.write((hot.RENEW_LEASE_SQL,), params)

    @_retrying
    def mark_attempt_lost(self, execution_id: str, step_id: str, attempt: int) -> bool:
        """Close an attempt whose worker died. False if someone else closed it first."""
        return mark_lost(self._store, execution_id, step_id, attempt)

    @_retrying
    def lost_attempts(self, execution_id: str, step_id: str) -> int:
        with self._store.session() as session:
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
    def arm_join_deadline(self, execution_id: str, step_id: str, at: datetime) -> bool:
        """Record when a pending join's deadline passes, once: True for the caller that
        armed it (and sends its timer), False if it was armed already or is decided."""
        with self._store.engine.begin() as connection:
            armed = connection.execute(
                plain_update(StepRow)
                .where(
                    StepRow.execution_id == execution_id,
                    StepRow.step_id == step_id,
                    StepRow.status == PENDING,
                    StepRow.next_attempt_at.is_(None),
                )
                .values(next_attempt_at=at)
            )
            return bool(armed.rowcount)

    @_retrying
    def record_waiting(self, execution_id: str, step_id: str, until: datetime, reason: str) -> None:
        """The step waits (e.g. for a breaker's cool-down) without using an attempt."""
        with self._store.session() as session, session.begin():
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
    def finish_execution(
        self, execution_id: str, status: str, output: Any, error: str | None
    ) -> bool:
        """Record the final status once; a later call (a redelivered finalize) changes nothing."""
        with self._store.session() as session, session.begin():
            result = session.execute(
                plain_update(ExecutionRow)
                .where(
                    ExecutionRow.id == execution_id,
                    ExecutionRow.status.not_in(EXECUTION_FINAL),
                )
                .values(status=status, output=output, error=error, finished_at=now())
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]


def _agent_added_row(execution_id: str, child: AddedStep, stamp: datetime) -> dict[str, Any]:
    """The row of a step an agent added (a handoff, a question): no index, its task and
    input in ``item``, its origin stamped."""
    return {
        "execution_id": execution_id,
        "step_id": child.step_id,
        "agent": child.agent,
        "position": 0,
        "level": 0,
        "status": PENDING,
        "attempts": 0,
        "waiting": 0,
        "parent_id": child.parent_id,
        "item_index": None,
        "item": child.item,
        "origin": {**child.origin, "at": stamp.isoformat()},
        "dependents": list(child.dependents),
    }


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
