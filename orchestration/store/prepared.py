"""PostgreSQL: the per-delegation read and writes as server-side prepared statements.

psycopg2 sends every statement as text, so PostgreSQL parses and plans each one again:
~0.35 ms of planning for a delegation's read alone, more than running it. Every
connection of the autocommit pool prepares the hot statements once, when it connects; a
delegation then sends ``EXECUTE`` with its values: the read in one round trip, and its
write as one multi-statement string, which PostgreSQL runs as one implicit transaction.

The SQL itself lives in ``hot_statements``, written once for PostgreSQL and SQLite.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import namedtuple
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from orchestration.store import hot_statements as hot

# Values PostgreSQL stores as json: sent as their JSON text, as SQLAlchemy's JSON type
# would (None becomes JSON null).
_JSON_PARAMS: Final = frozenset({"out", "final_output", "progress", "usage", "tool_calls"})
_PLACEHOLDER = re.compile(r"(?<!:):(\w+)")


@dataclass(frozen=True)
class PreparedStatement:
    name: str
    params: tuple[str, ...]
    prepare_sql: str

    @property
    def execute_sql(self) -> str:
        values = ", ".join(f"%({param})s" for param in self.params)
        return f"EXECUTE {self.name}({values})"


def prepare(name: str, sql: str, types: dict[str, str] | None = None) -> PreparedStatement:
    """``sql`` with ``:name`` placeholders as a statement to PREPARE; parameter types are
    inferred by PostgreSQL unless given."""
    params: list[str] = []

    def number(match: re.Match[str]) -> str:
        param = match.group(1)
        if param not in params:
            params.append(param)
        return f"${params.index(param) + 1}"

    body = _PLACEHOLDER.sub(number, sql)
    signature = f" ({', '.join(types[p] for p in params)})" if types else ""
    return PreparedStatement(name, tuple(params), f"PREPARE {name}{signature} AS {body}")


READ: Final = prepare(
    "troupe_delegation_state",
    hot.DELEGATION_STATE_SQL,
    types={"eid": "varchar", "sid": "varchar", "ids": "varchar[]"},
)
DIGEST: Final = prepare("troupe_execution_digest", hot.EXECUTION_DIGEST_SQL)
CANVAS_CLAIM: Final = prepare(
    "troupe_canvas_claim", hot.CANVAS_CLAIM_SQL, types={"ts": "timestamptz", "eid": "varchar"}
)
WRITES: Final = {
    sql: prepare(f"troupe_write_{index}", sql) for index, sql in enumerate(hot.WRITE_SQL)
}


def install(engine: Engine) -> None:
    """Prepare the hot statements on every new connection of ``engine``."""
    event.listen(engine, "connect", _prepare_all)


def _prepare_all(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # Plan each prepared statement once. Left to choose, PostgreSQL kept planning the
        # delegation's read afresh on every execution (its generic plan's estimate for
        # an unnested array looked dearer than a custom plan), 0.3 ms each time. The
        # statements are written so that their generic plans look rows up by primary key.
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        for statement in (READ, DIGEST, CANVAS_CLAIM, *WRITES.values()):
            cursor.execute(statement.prepare_sql)
    finally:
        cursor.close()
    if not dbapi_connection.autocommit:
        dbapi_connection.commit()


@lru_cache(maxsize=32)
def script(parts: tuple[str, ...]) -> str:
    """One write (statements from ``hot_statements``) as one string of EXECUTEs."""
    return ";".join(WRITES[part].execute_sql for part in parts)


def values(params: dict[str, Any]) -> dict[str, Any]:
    return {
        name: json.dumps(value) if name in _JSON_PARAMS else value for name, value in params.items()
    }


class PoolExhausted(OperationalError):
    """No database connection came free in time: transient, retried like an outage."""


class HotConnections:
    """A bounded pool of connections used through the bare psycopg2 cursor.

    SQLAlchemy's per-statement machinery (pool checkout and return, execution context,
    events, result wrapping) cost ~0.2 ms of CPU per statement, as much as PostgreSQL
    spends running it; the delegation's statements are fixed and prepared, so they skip
    it. A connection is held for one statement or script and handed back at once, so an
    agent call never holds one while it waits, and a thousand threads share ``size``
    connections. A connection that fails is invalidated and the error raised as
    SQLAlchemy's own, so the store's retries treat it like any other.
    """

    def __init__(self, engine: Engine, size: int, timeout: float = 30.0) -> None:
        self._engine = engine
        self._size = size
        self._timeout = timeout
        self._idle: list[Any] = []
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        # Round trips made (each one statement or one write script), for profiling.
        self.round_trips = 0
        os.register_at_fork(after_in_child=self._forget_parents)

    @property
    def size(self) -> int:
        return self._size

    def execute(
        self, sql: str | bytes, params: dict[str, Any] | None = None
    ) -> tuple[list[Any], int]:
        """(rows as named tuples, row count of the last statement). Without ``params``,
        ``sql`` is sent as it is (e.g. already quoted by ``quote``)."""
        dbapi = self._engine.dialect.loaded_dbapi
        connection = self._checkout()
        self.round_trips += 1
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                rows = _named_rows(cursor) if cursor.description else []
                count = int(cursor.rowcount)
        except (dbapi.OperationalError, dbapi.InterfaceError) as exc:
            connection.invalidate(exc)
            self._checkin(None)
            shown = sql if isinstance(sql, str) else sql[:200].decode(errors="replace")
            raise OperationalError(shown, params, exc) from exc
        except BaseException:
            self._checkin(connection)
            raise
        self._checkin(connection)
        return rows, count

    def quote(self, sql: str, values: tuple[Any, ...]) -> bytes:
        """``sql`` with ``values`` quoted in by psycopg2, without a round trip."""
        connection = self._checkout()
        try:
            with connection.cursor() as cursor:
                return bytes(cursor.mogrify(sql, values))
        finally:
            self._checkin(connection)

    def _checkout(self) -> Any:
        if not self._slots.acquire(timeout=self._timeout):
            raise PoolExhausted(
                f"no database connection came free within {self._timeout:g}s "
                f"({self._size} in this process)",
                None,
                TimeoutError(),
            )
        with self._lock:
            held = self._idle.pop() if self._idle else None
        if held is not None:
            return held
        dbapi = self._engine.dialect.loaded_dbapi
        try:
            return self._engine.raw_connection()
        except dbapi.Error as exc:
            self._slots.release()
            # A pool without pooling hands back the driver's own error: raise it as
            # SQLAlchemy's, so the store's retries see an outage, not a bug.
            raise OperationalError("connect", None, exc) from exc
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, connection: Any) -> None:
        if connection is not None:
            with self._lock:
                self._idle.append(connection)
        self._slots.release()

    def _forget_parents(self) -> None:
        # A forked child must not touch its parent's sockets, not even to close them:
        # keep the inherited connections referenced, unused, and start afresh.
        _inherited.append(self._idle)
        self._idle = []
        self._slots = threading.BoundedSemaphore(self._size)
        self._lock = threading.Lock()


_inherited: list[Any] = []


def _named_rows(cursor: Any) -> list[Any]:
    names = tuple(column.name for column in cursor.description)
    return [row_type(names)(*values) for values in cursor.fetchall()]


@lru_cache(maxsize=32)
def row_type(names: tuple[str, ...]) -> Any:
    return namedtuple("Row", names)
