"""What the operator commands read and prune: executions over time, an execution's attempts,
the audit trail streamed a page at a time, per-agent aggregates, the facts a failure
report is made of, and retention.

Never on a delegation's hot path. Aggregates are computed by the database where they
scale with history (counts, sums, PostgreSQL's percentiles); what is read row by row is
either one execution's or bounded by a limit, so memory does not grow with history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from orchestration.constants import (
    COMPLETED,
    EXECUTION_FINAL,
    OUTCOME_ERROR,
    OUTCOME_LOST,
    OUTCOME_REJECTED,
    OUTCOME_SUCCESS,
    OUTCOME_TIMEOUT,
)
from orchestration.errors import ExecutionNotFound
from orchestration.insights import CallStats
from orchestration.store.models import (
    AttemptRow,
    BreakerEventRow,
    ExecutionRow,
    HeartbeatRow,
    StepRow,
)
from orchestration.store.repository import Store, _retrying, aware

# Attempts that reached the agent and ended: what success rates and durations are of. A
# rejected attempt never called it; a running one has not ended.
REACHED = (OUTCOME_SUCCESS, OUTCOME_ERROR, OUTCOME_TIMEOUT, OUTCOME_LOST)
FAILED_OUTCOMES = (OUTCOME_ERROR, OUTCOME_TIMEOUT, OUTCOME_LOST)

# Rows per page of the audit export: the most it holds at once.
AUDIT_PAGE = 1000
# Executions deleted per transaction by `purge`: short transactions, bounded locks.
PURGE_BATCH = 500
# SQLite has no percentile function: durations are read back, at most this many of the
# latest calls per group.
PERCENTILE_WINDOW = 10_000


def _tokens_in() -> ColumnElement[Any]:
    value: ColumnElement[Any] = AttemptRow.usage["tokens_in"].as_integer()
    return value


def _tokens_out() -> ColumnElement[Any]:
    value: ColumnElement[Any] = AttemptRow.usage["tokens_out"].as_integer()
    return value


def _cost() -> ColumnElement[Any]:
    value: ColumnElement[Any] = AttemptRow.usage["cost_usd"].as_float()
    return value


def _endpoint() -> ColumnElement[Any]:
    value: ColumnElement[Any] = AttemptRow.usage["endpoint"].as_string()
    return value


def _unpriced() -> ColumnElement[Any]:
    """Attempts that reported usage whose cost is unknown (a model with no price)."""
    return func.count().filter(_tokens_in().is_not(None), _cost().is_(None))


@dataclass(frozen=True)
class Spent:
    """Usage summed over attempts. ``unpriced``: attempts whose cost is unknown (then
    the sum is not the whole cost)."""

    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    unpriced: int = 0


@dataclass(frozen=True)
class ExecutionLine:
    id: str
    team: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    retry_of: str | None
    steps: int
    steps_completed: int
    spent: Spent


@dataclass(frozen=True)
class GroupStats:
    """Aggregates of one (team, agent, endpoint) over a window of attempts."""

    team: str
    agent: str
    endpoint: str | None
    total: int
    succeeded: int
    failed: int
    timeouts: int
    rejected: int
    retried: int
    running: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    spent: Spent


@dataclass(frozen=True)
class PurgeCounts:
    executions: int = 0
    steps: int = 0
    attempts: int = 0
    heartbeats: int = 0
    breaker_events: int = 0


class HistoryRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def dialect(self) -> str:
        return self._store.engine.dialect.name

    # --- executions -----------------------------------------------------------------

    @_retrying
    def executions(
        self,
        *,
        status: str | None = None,
        team: str | None = None,
        since: datetime | None = None,
        limit: int = 20,
    ) -> list[ExecutionLine]:
        """The latest executions first, with their plan steps and what they spent."""
        steps = (
            select(
                StepRow.execution_id,
                func.count().label("steps"),
                func.count().filter(StepRow.status == COMPLETED).label("completed"),
            )
            .where(StepRow.parent_id.is_(None))
            .group_by(StepRow.execution_id)
            .subquery()
        )
        query = (
            select(
                ExecutionRow.id,
                ExecutionRow.team,
                ExecutionRow.status,
                ExecutionRow.created_at,
                ExecutionRow.started_at,
                ExecutionRow.finished_at,
                ExecutionRow.retry_of,
                func.coalesce(steps.c.steps, 0),
                func.coalesce(steps.c.completed, 0),
            )
            .outerjoin(steps, steps.c.execution_id == ExecutionRow.id)
            .order_by(ExecutionRow.created_at.desc(), ExecutionRow.id)
            .limit(limit)
        )
        if status is not None:
            query = query.where(ExecutionRow.status == status)
        if team is not None:
            query = query.where(ExecutionRow.team == team)
        if since is not None:
            query = query.where(ExecutionRow.created_at >= since)
        with self._store.reader.connect() as connection:
            rows = list(connection.execute(query))
            spent = self._spent_by_execution(connection, [row[0] for row in rows])
        return [
            ExecutionLine(
                id=row[0],
                team=row[1],
                status=row[2],
                created_at=aware(row[3]),
                started_at=aware(row[4]) if row[4] else None,
                finished_at=aware(row[5]) if row[5] else None,
                retry_of=row[6],
                steps=int(row[7]),
                steps_completed=int(row[8]),
                spent=spent.get(row[0], Spent()),
            )
            for row in rows
        ]

    @staticmethod
    def _spent_by_execution(connection: Any, ids: Sequence[str]) -> dict[str, Spent]:
        if not ids:
            return {}
        query = (
            select(
                AttemptRow.execution_id,
                func.sum(_tokens_in()),
                func.sum(_tokens_out()),
                func.sum(_cost()),
                _unpriced(),
            )
            .where(AttemptRow.execution_id.in_(list(ids)))
            .group_by(AttemptRow.execution_id)
        )
        return {row[0]: _spent(row[1:]) for row in connection.execute(query)}

    # --- one execution's log --------------------------------------------------------

    @_retrying
    def execution_log(
        self, execution_id: str
    ) -> tuple[ExecutionRow, list[StepRow], list[AttemptRow]]:
        """The execution, its steps and its attempts in the order they began."""
        with self._store.session() as session:
            execution = session.get(ExecutionRow, execution_id)
            if execution is None:
                raise ExecutionNotFound(execution_id)
            steps = list(
                session.scalars(select(StepRow).where(StepRow.execution_id == execution_id))
            )
            attempts = list(
                session.scalars(
                    select(AttemptRow)
                    .where(AttemptRow.execution_id == execution_id)
                    .order_by(AttemptRow.started_at, AttemptRow.id)
                )
            )
        return execution, steps, attempts

    # --- the audit trail --------------------------------------------------------------

    def audit(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        page: int = AUDIT_PAGE,
    ) -> Iterator[dict[str, Any]]:
        """Every attempt that began in [since, until), in the order they began, one page
        at a time: each page is a query of its own that starts after the last row of
        the one before (keyset pagination on the (started_at, id) index), so memory
        holds one page whatever the size of the trail, and no transaction stays open
        while the consumer writes."""
        after: tuple[datetime, int] | None = None
        while True:
            rows = self._audit_page(since, until, after, page)
            if not rows:
                return
            # Taken before the rows are handed out: the consumer may change them.
            after = (rows[-1]["started_at"], rows[-1]["id"])
            yield from rows
            if len(rows) < page:
                return

    @_retrying
    def _audit_page(
        self,
        since: datetime | None,
        until: datetime | None,
        after: tuple[datetime, int] | None,
        page: int,
    ) -> list[dict[str, Any]]:
        query = select(
            AttemptRow.id,
            AttemptRow.execution_id,
            ExecutionRow.team,
            AttemptRow.step_id,
            AttemptRow.attempt,
            AttemptRow.agent,
            AttemptRow.outcome,
            AttemptRow.error_type,
            AttemptRow.error_message,
            AttemptRow.started_at,
            AttemptRow.finished_at,
            AttemptRow.duration_ms,
            AttemptRow.worker,
            AttemptRow.task_id,
            AttemptRow.usage,
            AttemptRow.tool_calls,
        ).join(ExecutionRow, ExecutionRow.id == AttemptRow.execution_id)
        if since is not None:
            query = query.where(AttemptRow.started_at >= since)
        if until is not None:
            query = query.where(AttemptRow.started_at < until)
        if after is not None:
            moment, last_id = after
            # The range bound lets the index seek; the OR breaks ties on the same moment.
            query = query.where(
                AttemptRow.started_at >= moment,
                or_(AttemptRow.started_at > moment, AttemptRow.id > last_id),
            )
        query = query.order_by(AttemptRow.started_at, AttemptRow.id).limit(page)
        with self._store.reader.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    # --- aggregates -------------------------------------------------------------------

    @_retrying
    def agent_stats(
        self, *, since: datetime, until: datetime | None = None, agent: str | None = None
    ) -> list[GroupStats]:
        """Per (team, agent, endpoint) over attempts that began in [since, until)."""
        endpoint = _endpoint()
        reached = AttemptRow.outcome.in_(REACHED)
        duration = AttemptRow.duration_ms
        columns: list[Any] = [
            ExecutionRow.team,
            AttemptRow.agent,
            endpoint,
            func.count(),
            func.count().filter(AttemptRow.outcome == OUTCOME_SUCCESS),
            func.count().filter(AttemptRow.outcome.in_(FAILED_OUTCOMES)),
            func.count().filter(AttemptRow.outcome == OUTCOME_TIMEOUT),
            func.count().filter(AttemptRow.outcome == OUTCOME_REJECTED),
            func.count().filter(AttemptRow.attempt > 1),
            func.count().filter(AttemptRow.outcome.is_(None)),
            func.avg(duration).filter(reached),
            func.sum(_tokens_in()),
            func.sum(_tokens_out()),
            func.sum(_cost()),
            _unpriced(),
        ]
        postgres = self.dialect == "postgresql"
        if postgres:
            columns += [
                func.percentile_cont(0.5).within_group(duration).filter(reached),
                func.percentile_cont(0.95).within_group(duration).filter(reached),
            ]
        window = [AttemptRow.started_at >= since]
        if until is not None:
            window.append(AttemptRow.started_at < until)
        if agent is not None:
            window.append(AttemptRow.agent == agent)
        query = (
            select(*columns)
            .join(ExecutionRow, ExecutionRow.id == AttemptRow.execution_id)
            .where(*window)
            .group_by(ExecutionRow.team, AttemptRow.agent, endpoint)
            .order_by(AttemptRow.agent, ExecutionRow.team, endpoint)
        )
        with self._store.reader.connect() as connection:
            rows = list(connection.execute(query))
            percentiles = {} if postgres else self._percentiles(connection, window)
        found = []
        for row in rows:
            key = (row[0], row[1], row[2])
            p50, p95 = (row[15], row[16]) if postgres else percentiles.get(key, (None, None))
            found.append(
                GroupStats(
                    team=row[0],
                    agent=row[1],
                    endpoint=row[2],
                    total=row[3],
                    succeeded=row[4],
                    failed=row[5],
                    timeouts=row[6],
                    rejected=row[7],
                    retried=row[8],
                    running=row[9],
                    mean_ms=None if row[10] is None else float(row[10]),
                    p50_ms=None if p50 is None else float(p50),
                    p95_ms=None if p95 is None else float(p95),
                    spent=_spent(row[11:15]),
                )
            )
        return found

    @staticmethod
    def _percentiles(
        connection: Any, window: list[Any]
    ) -> dict[tuple[str, str, str | None], tuple[float | None, float | None]]:
        """SQLite: p50 and p95 of each group's latest ``PERCENTILE_WINDOW`` durations,
        interpolated as PostgreSQL's percentile_cont does."""
        endpoint = _endpoint()
        latest = (
            select(
                ExecutionRow.team.label("team"),
                AttemptRow.agent.label("agent"),
                endpoint.label("endpoint"),
                AttemptRow.duration_ms.label("ms"),
                func.row_number()
                .over(
                    partition_by=(ExecutionRow.team, AttemptRow.agent, endpoint),
                    order_by=AttemptRow.id.desc(),
                )
                .label("rank"),
            )
            .join(ExecutionRow, ExecutionRow.id == AttemptRow.execution_id)
            .where(
                *window,
                AttemptRow.outcome.in_(REACHED),
                AttemptRow.duration_ms.is_not(None),
            )
            .subquery()
        )
        query = select(latest.c.team, latest.c.agent, latest.c.endpoint, latest.c.ms).where(
            latest.c.rank <= PERCENTILE_WINDOW
        )
        durations: dict[tuple[str, str, str | None], list[int]] = {}
        for team, agent, where, ms in connection.execute(query):
            durations.setdefault((team, agent, where), []).append(int(ms))
        return {
            key: (percentile(values, 0.5), percentile(values, 0.95))
            for key, values in durations.items()
        }

    @_retrying
    def window_stats(self, since: datetime, until: datetime) -> dict[str, CallStats]:
        """Per agent name, over attempts that began in [since, until)."""
        reached = AttemptRow.outcome.in_(REACHED)
        query = (
            select(
                AttemptRow.agent,
                func.count().filter(reached),
                func.count().filter(AttemptRow.outcome.in_(FAILED_OUTCOMES)),
                func.avg(AttemptRow.duration_ms).filter(reached),
            )
            .where(AttemptRow.started_at >= since, AttemptRow.started_at < until)
            .group_by(AttemptRow.agent)
        )
        with self._store.reader.connect() as connection:
            return {
                agent: CallStats(
                    calls=int(calls),
                    failures=int(failures),
                    mean_ms=None if mean is None else float(mean),
                )
                for agent, calls, failures, mean in connection.execute(query)
            }

    @_retrying
    def failures(self, since: datetime, until: datetime, limit: int) -> list[Any]:
        """Attempts that began in [since, until) and did not succeed (the latest
        ``limit`` of them), with their execution's team."""
        query = (
            select(
                AttemptRow.started_at,
                AttemptRow.execution_id,
                ExecutionRow.team,
                AttemptRow.step_id,
                AttemptRow.agent,
                AttemptRow.attempt,
                AttemptRow.outcome,
                AttemptRow.error_type,
                AttemptRow.error_message,
                AttemptRow.duration_ms,
            )
            .join(ExecutionRow, ExecutionRow.id == AttemptRow.execution_id)
            .where(
                AttemptRow.started_at >= since,
                AttemptRow.started_at < until,
                AttemptRow.outcome.is_not(None),
                AttemptRow.outcome != OUTCOME_SUCCESS,
            )
            .order_by(AttemptRow.started_at.desc(), AttemptRow.id.desc())
            .limit(limit)
        )
        with self._store.reader.connect() as connection:
            return list(connection.execute(query))

    @_retrying
    def breaker_events(self, since: datetime, until: datetime) -> list[BreakerEventRow]:
        with self._store.session() as session:
            return list(
                session.scalars(
                    select(BreakerEventRow)
                    .where(BreakerEventRow.at >= since, BreakerEventRow.at < until)
                    .order_by(BreakerEventRow.at, BreakerEventRow.id)
                )
            )

    # --- retention --------------------------------------------------------------------

    def purge(self, before: datetime, *, dry_run: bool, batch: int = PURGE_BATCH) -> PurgeCounts:
        """Delete finished executions that ended before ``before`` (their steps,
        attempts, memory, messages, handoffs and approvals go with them: the foreign
        keys cascade), health probes and breaker history older than that, a batch per
        transaction. ``dry_run``: count what would go, delete nothing."""
        if dry_run:
            return self._count_purgeable(before)
        total = PurgeCounts()
        while True:
            done = self._purge_batch(before, batch)
            total = _plus(total, done)
            if done.executions < batch:
                break
        while True:
            beats = self._delete_batch(HeartbeatRow, HeartbeatRow.at < before, batch)
            total = _plus(total, PurgeCounts(heartbeats=beats))
            if beats < batch:
                break
        while True:
            events = self._delete_batch(BreakerEventRow, BreakerEventRow.at < before, batch)
            total = _plus(total, PurgeCounts(breaker_events=events))
            if events < batch:
                break
        return total

    @staticmethod
    def _purgeable(before: datetime) -> ColumnElement[bool]:
        return and_(
            ExecutionRow.status.in_(list(EXECUTION_FINAL)),
            func.coalesce(ExecutionRow.finished_at, ExecutionRow.created_at) < before,
        )

    @_retrying
    def _count_purgeable(self, before: datetime) -> PurgeCounts:
        ids = select(ExecutionRow.id).where(self._purgeable(before))
        with self._store.reader.connect() as connection:

            def count(query: Any) -> int:
                return int(connection.execute(query).scalar() or 0)

            return PurgeCounts(
                executions=count(select(func.count()).select_from(ids.subquery())),
                steps=count(select(func.count()).where(StepRow.execution_id.in_(ids))),
                attempts=count(select(func.count()).where(AttemptRow.execution_id.in_(ids))),
                heartbeats=count(select(func.count()).where(HeartbeatRow.at < before)),
                breaker_events=count(select(func.count()).where(BreakerEventRow.at < before)),
            )

    @_retrying
    def _purge_batch(self, before: datetime, batch: int) -> PurgeCounts:
        with self._store.engine.begin() as connection:
            ids = list(
                connection.execute(
                    select(ExecutionRow.id).where(self._purgeable(before)).limit(batch)
                ).scalars()
            )
            if not ids:
                return PurgeCounts()
            steps = connection.execute(
                select(func.count()).where(StepRow.execution_id.in_(ids))
            ).scalar()
            attempts = connection.execute(
                select(func.count()).where(AttemptRow.execution_id.in_(ids))
            ).scalar()
            connection.execute(delete(ExecutionRow).where(ExecutionRow.id.in_(ids)))
        return PurgeCounts(executions=len(ids), steps=int(steps or 0), attempts=int(attempts or 0))

    @_retrying
    def _delete_batch(self, model: Any, older: ColumnElement[bool], batch: int) -> int:
        with self._store.engine.begin() as connection:
            ids = list(connection.execute(select(model.id).where(older).limit(batch)).scalars())
            if ids:
                connection.execute(delete(model).where(model.id.in_(ids)))
        return len(ids)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks: PostgreSQL's percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def _spent(values: Sequence[Any]) -> Spent:
    tokens_in, tokens_out, cost, unpriced = values
    return Spent(
        tokens_in=int(tokens_in or 0),
        tokens_out=int(tokens_out or 0),
        cost_usd=float(cost or 0.0),
        unpriced=int(unpriced or 0),
    )


def _plus(a: PurgeCounts, b: PurgeCounts) -> PurgeCounts:
    return PurgeCounts(
        executions=a.executions + b.executions,
        steps=a.steps + b.steps,
        attempts=a.attempts + b.attempts,
        heartbeats=a.heartbeats + b.heartbeats,
        breaker_events=a.breaker_events + b.breaker_events,
    )
