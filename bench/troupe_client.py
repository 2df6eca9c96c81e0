"""Driving Troupe from the benchmark process: enqueue, wait for the recorded finish, read
the audit trail.

Use this only after ``BenchEnv.export()`` (or in a process whose environment already
names the broker and database): it runs on the process's default runtime, made from the
settings ``export()`` configured (else from the environment, on first use).

Wall time of an execution is measured from just before ``enqueue`` to the finish the
worker recorded (``troupe_executions.finished_at``; same machine, same clock), so the
polling interval does not add to it. Completion is detected by polling only the
status of the executions not yet seen final (``wait``); building their reports, as
``ExecutionHandle.wait`` does at the end, is left out of the measured machine's way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, text

from bench.env import BenchError

FINAL = ("completed", "failed", "cancelled")
POLL_FIRST = 0.002
POLL_MOST = 0.1


@dataclass(frozen=True)
class Timing:
    execution_ids: list[str]
    status: str
    started: float  # time.time() just before the first enqueue
    # From `started` to the last recorded finish.
    wall: float
    # From the first recorded creation to the last recorded finish (troupe_executions).
    db: float
    # From `started` until this process saw every execution finished.
    observed: float


def _stamp(value: datetime) -> float:
    from orchestration.store.repository import aware

    stamped = aware(value)
    assert stamped is not None
    return stamped.timestamp()


class TroupeClient:
    def __init__(self) -> None:
        from orchestration.client.runtime import get_runtime

        self.runtime = get_runtime()
        self.engine = self.runtime.store.engine
        self._teams: dict[str, Any] = {}

    def team(self, yaml_text: str) -> Any:
        from orchestration import Team

        team = self._teams.get(yaml_text)
        if team is None:
            team = self._teams[yaml_text] = Team.from_yaml(yaml_text, source="<bench>")
        return team

    def enqueue(self, team: Any, input_value: Any = None) -> str:
        return str(team.enqueue(input_value, check_worker=False).execution_id)

    def run(
        self,
        team: Any,
        input_value: Any = None,
        *,
        timeout: float,
        expect: str | None = "completed",
    ) -> Timing:
        """One execution, from enqueue to its recorded finish."""
        return self.run_many(team, 1, input_value, timeout=timeout, expect=expect)

    def run_many(
        self,
        team: Any,
        count: int,
        input_value: Any = None,
        *,
        timeout: float,
        expect: str | None = "completed",
    ) -> Timing:
        """``count`` executions enqueued back to back, until the last one finishes."""
        started = time.time()
        ids = [self.enqueue(team, input_value) for _ in range(count)]
        rows = self.wait(ids, timeout=timeout, started=started)
        observed = time.time() - started
        statuses = {row["status"] for row in rows}
        status = statuses.pop() if len(statuses) == 1 else "mixed"
        if expect is not None and status != expect:
            bad = next(row for row in rows if row["status"] != expect)
            raise BenchError(
                f"execution {bad['id']} of team {team.name!r} ended {bad['status']}, "
                f"expected {expect}: {bad['error']}"
            )
        finished = max(_stamp(row["finished_at"]) for row in rows)
        created = min(_stamp(row["created_at"]) for row in rows)
        return Timing(
            execution_ids=ids,
            status=status,
            started=started,
            wall=finished - started,
            db=finished - created,
            observed=observed,
        )

    def wait(self, ids: list[str], *, timeout: float, started: float) -> list[dict[str, Any]]:
        """Poll until every execution is final; their rows (id, status, times, error).

        Only the status of executions not yet seen final is read, with pauses from 2 ms
        growing to a tenth of the time waited so far (at most 0.1 s, as
        ``ExecutionHandle.wait``). Times come from the recorded finish, so the pause does
        not add to them; polling 500 ids every 10 ms had cost the client and PostgreSQL
        about a third of a core between them, taken from the workers being measured.
        """
        deadline = started + timeout
        pending = list(ids)
        finished = text(
            "SELECT id FROM troupe_executions WHERE id IN :ids AND status IN :final"
        ).bindparams(bindparam("ids", expanding=True), bindparam("final", expanding=True))
        pause = POLL_FIRST
        while True:
            with self.engine.connect() as connection:
                done = set(
                    connection.execute(finished, {"ids": pending, "final": list(FINAL)}).scalars()
                )
            pending = [execution_id for execution_id in pending if execution_id not in done]
            if not pending:
                break
            now = time.time()
            if now > deadline:
                raise BenchError(
                    f"{len(pending)} execution(s) not finished after {timeout:g}s "
                    f"(e.g. {pending[0]})"
                )
            pause = min(pause * 1.5, max(POLL_FIRST, (now - started) / 10), POLL_MOST)
            time.sleep(pause)
        return self.executions(ids)

    def executions(self, ids: list[str]) -> list[dict[str, Any]]:
        from orchestration.store.models import ExecutionRow

        query = select(
            ExecutionRow.id,
            ExecutionRow.status,
            ExecutionRow.error,
            ExecutionRow.created_at,
            ExecutionRow.finished_at,
        ).where(ExecutionRow.id.in_(ids))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def attempts(
        self, *, agent: str | None = None, execution_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of the audit trail, oldest first."""
        from orchestration.store.models import AttemptRow

        query = select(
            AttemptRow.execution_id,
            AttemptRow.step_id,
            AttemptRow.attempt,
            AttemptRow.agent,
            AttemptRow.worker,
            AttemptRow.started_at,
            AttemptRow.finished_at,
            AttemptRow.heartbeat_at,
            AttemptRow.duration_ms,
            AttemptRow.outcome,
            AttemptRow.error_type,
            AttemptRow.error_message,
        ).order_by(AttemptRow.id)
        if agent is not None:
            query = query.where(AttemptRow.agent == agent)
        if execution_id is not None:
            query = query.where(AttemptRow.execution_id == execution_id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def step_output(self, execution_id: str, step_id: str) -> Any:
        """The recorded output of one step (a map step's: the list of its items')."""
        with self.engine.connect() as connection:
            return connection.execute(
                text("SELECT output FROM troupe_steps WHERE execution_id = :e AND step_id = :s"),
                {"e": execution_id, "s": step_id},
            ).scalar()

    def step_errors(self, execution_id: str) -> list[str | None]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    text("SELECT error_type FROM troupe_steps WHERE execution_id = :id"),
                    {"id": execution_id},
                ).scalars()
            )


def stamp(value: datetime) -> float:
    """A database timestamp as seconds since the epoch (UTC)."""
    return _stamp(value)
