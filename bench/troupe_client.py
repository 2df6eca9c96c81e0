"""Driving Troupe from the benchmark process: enqueue, wait for the recorded finish, read
the audit trail.

Import this only after ``BenchEnv.export()`` (or in a process whose environment already
names the broker and database): Troupe reads its settings once per process.

Wall time of an execution is measured from just before ``enqueue`` to the finish the
worker recorded (``troupe_executions.finished_at``; same machine, same clock), so the
polling interval does not add to it. Completion is detected by polling only the
execution's status row every 10 ms: ``ExecutionHandle.wait`` rebuilds the whole report
(every step row) at each poll, which for thousands of steps would load the machine that
is being measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, text

from bench.env import BenchError

FINAL = ("completed", "failed", "cancelled")
POLL = 0.01


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
    from orchestration.store.breakers import aware

    stamped = aware(value)
    assert stamped is not None
    return stamped.timestamp()


class TroupeClient:
    def __init__(self) -> None:
        from orchestration.runtime import get_runtime

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
        """Poll until every execution is final; their rows (id, status, times, error)."""
        deadline = started + timeout
        pending = set(ids)
        count = text(
            "SELECT count(*) FROM troupe_executions WHERE id IN :ids AND status IN :final"
        ).bindparams(bindparam("ids", expanding=True), bindparam("final", expanding=True))
        while True:
            with self.engine.connect() as connection:
                if len(pending) == 1:
                    (only,) = pending
                    status = connection.execute(
                        text("SELECT status FROM troupe_executions WHERE id = :id"), {"id": only}
                    ).scalar()
                    done = status in FINAL
                else:
                    finished = connection.execute(
                        count, {"ids": list(pending), "final": list(FINAL)}
                    ).scalar()
                    done = finished == len(pending)
            if done:
                break
            if time.time() > deadline:
                raise BenchError(
                    f"{len(pending)} execution(s) not finished after {timeout:g}s "
                    f"(e.g. {next(iter(pending))})"
                )
            time.sleep(POLL)
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
