"""The state database: its engines, the bounded pool of the hot path, the one place
where PostgreSQL and SQLite differ, and the records every writer shares. Each write is
one short transaction.

Who reads and writes what lives by audience: ``executions`` (the client),
``delegations`` (the delegation's hot path), ``maintenance`` (the reaper),
``breakers`` and ``agent_registry``.

Writes retry transient database errors (a restarted PostgreSQL, a busy SQLite file) so that
an outage delays a run instead of failing it or losing its records.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar, overload

from sqlalchemy import Engine, insert, select, text, update
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
    OUTCOME_LOST,
    OUTCOME_SUCCESS,
    STEP_FINAL,
)
from orchestration.store import hot_statements as hot
from orchestration.store import prepared
from orchestration.store.database import get_engine, get_hot_engine
from orchestration.store.models import (
    AttemptRow,
    ExecutionRow,
    StepRow,
)

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
    # As JSON: what the attempt consumed, and the tools it called (None: nothing).
    usage: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    # The execution's memory version the attempt read (None: it read no memory or inbox).
    context_version: int | None = None

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
            "usage": self.usage,
            "tool_calls": self.tool_calls,
            "context_version": self.context_version,
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

    def session(self) -> Session:
        return self._session()

    @property
    def hot_round_trips(self) -> int:
        """Round trips of the prepared hot path so far (profiling)."""
        return self._hot.round_trips if self._hot is not None else 0

    # --- where PostgreSQL and SQLite differ -----------------------------------------
    #
    # On PostgreSQL the delegation's statements are prepared and sent through the bounded
    # pool of ``prepared.HotConnections``, a write as one multi-statement string that the
    # server runs as one implicit transaction; on SQLite they run one by one inside a
    # transaction. These methods are the only places that tell the two apart.

    def read_delegation_state(self, execution_id: str, step_id: str, ids: list[str]) -> list[Any]:
        if self._hot is not None:
            params = {"eid": execution_id, "sid": step_id, "ids": ids}
            found, _ = self._hot.execute(prepared.READ.execute_sql, params)
            return found
        with self.reader.connect() as connection:
            params = {"eid": execution_id, "ids": [step_id, *ids]}
            return list(connection.execute(hot.DELEGATION_STATE, params))

    def run_prepared(
        self, statement: prepared.PreparedStatement, params: dict[str, Any]
    ) -> list[Any] | None:
        """The rows of one of the hot path's prepared statements (PostgreSQL); None
        where there are none (SQLite: the caller runs its own statement)."""
        if self._hot is None:
            return None
        rows, _ = self._hot.execute(statement.execute_sql, params)
        return rows

    def read_digest(self, execution_id: str) -> list[Any]:
        if self._hot is not None:
            found, _ = self._hot.execute(prepared.DIGEST.execute_sql, {"eid": execution_id})
            return found
        with self.reader.connect() as connection:
            return list(connection.execute(text(hot.EXECUTION_DIGEST_SQL), {"eid": execution_id}))

    def insert_execution(self, execution: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        if self._hot is not None:
            # One round trip: the INSERTs as one string, one implicit transaction.
            self._hot.execute(_insert_script(self._hot.quote, execution, steps))
            return
        with self.engine.begin() as connection:
            connection.execute(insert(ExecutionRow), execution)
            connection.execute(insert(StepRow), steps)

    def mark_attempt_begun(self, params: dict[str, Any], *, execution_pending: bool) -> str:
        """The start marker: "started", "duplicate" or "cancelled" (see
        ``DelegationRecords.begin_attempt``)."""
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

    def write(self, parts: tuple[str, ...], params: dict[str, Any]) -> int:
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

    def decide(
        self, parts: tuple[str, ...], params: dict[str, Any], countdown: Countdown, step_ms: int
    ) -> Decided | None:
        """Run one write script whose last statement decides a step and, if it did,
        count down what waits for it. None: the step was decided already."""
        dependents = sorted(countdown.dependents)
        if self._hot is not None:
            key = hot.counted(parts[-1], len(dependents))
            parts = (*parts[:-1], hot.COUNTED[key])
            params = {**params, "sink": countdown.sink}
            if key[1] is None:
                params["deps"] = dependents
            else:
                params.update((f"dep{i}", dep) for i, dep in enumerate(dependents))
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


def read_steps(store: Store, execution_id: str) -> list[StepRow]:
    """An execution's step rows, plan steps in order, each map item after its step."""
    with store.session() as session:
        return list(
            session.scalars(
                select(StepRow)
                .where(StepRow.execution_id == execution_id)
                .order_by(StepRow.position, StepRow.item_index.nulls_first())
            )
        )


def mark_lost(store: Store, execution_id: str, step_id: str, attempt: int) -> bool:
    """Close an attempt whose worker died. False if someone else closed it first."""
    with store.session() as session, session.begin():
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
    "max_cost_usd",
    "max_tokens",
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
            execution["max_cost_usd"],
            execution["max_tokens"],
            execution["created_at"],
        ),
    )
    placeholders = f"({', '.join(['%s'] * len(_STEP_COLUMNS))})"
    rows = b",".join(quote(placeholders, tuple(step[c] for c in _STEP_COLUMNS)) for step in steps)
    columns = ", ".join(_STEP_COLUMNS)
    return head + f";INSERT INTO troupe_steps ({columns}) VALUES ".encode() + rows


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """``value`` with its time zone: SQLite hands back naive datetimes, and everything
    Troupe writes is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _elapsed_ms(started: datetime | None, finished: datetime, fallback: int) -> int:
    if started is None:
        return fallback
    if started.tzinfo is None:  # SQLite hands back naive UTC
        started = started.replace(tzinfo=UTC)
    return max(0, int((finished - started).total_seconds() * 1000))
