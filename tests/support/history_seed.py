"""A history written straight into a state database, as workers would have left it: the
executions, steps, attempts and breaker changes the operator commands read, with every
pattern `report` looks for, at known moments."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from sqlalchemy import insert

from orchestration.store.database import ensure_schema
from orchestration.store.models import (
    AttemptRow,
    BreakerEventRow,
    ExecutionRow,
    HeartbeatRow,
    StepRow,
)
from orchestration.store.repository import Store
from orchestration.team_file import parse_team

FLAPPING_BREAKER = "python:shop.agents:pay"
LONG_OUTPUT = "x" * 500


def logged_spec() -> dict[str, Any]:
    """plan → write → review (review only when write's output is long)."""
    data = {
        "name": "writers",
        "agents": {name: {"target": "json:dumps"} for name in ("planner", "writer", "critic")},
        "workflow": {
            "strategy": "conditional",
            "steps": [
                {"id": "plan", "agent": "planner"},
                {"id": "write", "agent": "writer", "after": ["plan"]},
                {"id": "review", "agent": "critic", "when": "size(steps.write.output) > 9999"},
            ],
        },
    }
    return parse_team(yaml.safe_dump(data), source="team.yaml").model_dump(mode="json")


@dataclass
class History:
    url: str
    now: datetime
    # The execution `logs` reads, created at ``logged_at``.
    logged: str = ""
    logged_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    executions: list[tuple[str, str, str]] = field(default_factory=list)  # id, team, status
    _rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    # --- building ---------------------------------------------------------------------

    def execution(
        self,
        team: str,
        status: str,
        at: datetime,
        *,
        spec: dict[str, Any] | None = None,
        retry_of: str | None = None,
        finished: datetime | None = None,
    ) -> str:
        execution_id = str(uuid.uuid4())
        self._rows.setdefault("executions", []).append(
            {
                "id": execution_id,
                "team": team,
                "strategy": "dag",
                "spec": spec or {},
                "input": None,
                "status": status,
                "created_at": at,
                "started_at": at,
                # A running execution has no end yet.
                "finished_at": None
                if status == "running"
                else finished or (at + timedelta(seconds=2)),
                "retry_of": retry_of,
            }
        )
        self.executions.append((execution_id, team, status))
        return execution_id

    def step(self, execution_id: str, step_id: str, agent: str, **fields: Any) -> None:
        row: dict[str, Any] = {
            "execution_id": execution_id,
            "step_id": step_id,
            "agent": agent,
            "position": len(self._rows.get("steps", [])),
            "level": 0,
            "status": "completed",
            "attempts": 1,
            "output": None,
            "reason": None,
            "skip_cause": None,
            "started_at": None,
            "finished_at": None,
            "duration_ms": None,
        }
        row.update(fields)
        self._rows.setdefault("steps", []).append(row)

    def attempt(
        self,
        execution_id: str,
        step_id: str,
        agent: str,
        at: datetime,
        *,
        attempt: int = 1,
        outcome: str = "success",
        duration_ms: int = 50,
        error: tuple[str, str] | None = None,
        usage: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        self._rows.setdefault("attempts", []).append(
            {
                "execution_id": execution_id,
                "step_id": step_id,
                "attempt": attempt,
                "agent": agent,
                "task_id": None,
                "worker": "worker-1@host",
                "started_at": at,
                "finished_at": at + timedelta(milliseconds=duration_ms),
                "duration_ms": duration_ms,
                "outcome": outcome,
                "error_type": error[0] if error else None,
                "error_message": error[1] if error else None,
                "usage": usage,
                "tool_calls": tool_calls,
            }
        )

    def breaker_change(self, key: str, at: datetime, before: str, after: str) -> None:
        self._rows.setdefault("breaker_events", []).append(
            {"key": key, "at": at, "from_state": before, "to_state": after, "reason": "down"}
        )

    @property
    def attempts(self) -> int:
        return len(self._rows.get("attempts", []))

    def heartbeat(self, identity: str, at: datetime) -> None:
        self._rows.setdefault("heartbeats", []).append(
            {"identity": identity, "at": at, "healthy": True, "latency_ms": 3}
        )

    def write(self) -> None:
        ensure_schema(self.url, auto_upgrade=True)
        store = Store(self.url)
        tables = {
            "executions": ExecutionRow,
            "steps": StepRow,
            "attempts": AttemptRow,
            "breaker_events": BreakerEventRow,
            "heartbeats": HeartbeatRow,
        }
        with store.engine.begin() as connection:
            for name, model in tables.items():
                if self._rows.get(name):
                    connection.execute(insert(model), self._rows[name])
        store.engine.dispose()


def seed_history(url: str) -> History:
    """Every pattern of `report --since 1h`, an execution with a full log, and a spread
    of executions over teams and statuses."""
    now = datetime.now(UTC)
    history = History(url=url, now=now)
    recent = now - timedelta(minutes=20)
    before = now - timedelta(minutes=90)

    # An execution with a log to read: plan fails once then succeeds with a tool call and
    # usage; write succeeds with a long output; review is skipped by its condition.
    base = now - timedelta(minutes=5)
    history.logged_at = base
    logged = history.logged = history.execution(
        "writers", "completed", base, spec=logged_spec(), finished=base + timedelta(seconds=1)
    )
    ms = timedelta(milliseconds=1)
    history.step(
        logged,
        "plan",
        "planner",
        attempts=2,
        output={"outline": [1, 2]},
        finished_at=base + 100 * ms,
        duration_ms=90,
    )
    history.step(
        logged, "write", "writer", output=LONG_OUTPUT, finished_at=base + 200 * ms, duration_ms=60
    )
    history.step(
        logged,
        "review",
        "critic",
        status="skipped",
        skip_cause="condition",
        attempts=0,
        reason="condition false: size(steps.write.output) > 9999",
    )
    history.attempt(
        logged,
        "plan",
        "planner",
        base + 10 * ms,
        duration_ms=20,
        outcome="error",
        error=("TransientAgentError", "busy, try later"),
    )
    history.attempt(
        logged,
        "plan",
        "planner",
        base + 80 * ms,
        attempt=2,
        duration_ms=20,
        usage={
            "tokens_in": 1200,
            "tokens_out": 300,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "cost_usd": 0.0042,
            "model": "gpt-test",
            "endpoint": "http://llm.internal/v1",
        },
        tool_calls=[
            {
                "tool": "lookup",
                "arguments": {"query": "q" * 300},
                "duration_ms": 4,
                "outcome": "success",
                "error": None,
            }
        ],
    )
    history.attempt(logged, "write", "writer", base + 130 * ms, duration_ms=60)

    # Error cluster: fetcher's items fail with one message that differs by number.
    shop = [history.execution("shop", "failed", recent + timedelta(seconds=n)) for n in range(4)]
    for n, execution_id in enumerate(shop):
        history.attempt(
            execution_id,
            f"fetch[{n}]",
            "fetcher",
            recent,
            outcome="error",
            error=("RuntimeError", f"item {n} not found"),
        )
    # A retry of one of them, which completed.
    history.execution("shop", "completed", recent + timedelta(minutes=1), retry_of=shop[0])

    # payer: no failure in the hour before, half of its calls fail in this one.
    payments = history.execution("payments", "completed", before)
    for n in range(10):
        history.attempt(payments, f"pay{n}", "payer", before)
    payments_now = history.execution("payments", "failed", recent)
    for n in range(10):
        failed = n % 2 == 0
        history.attempt(
            payments_now,
            f"pay{n}",
            "payer",
            recent,
            outcome="error" if failed else "success",
            error=("ValueError", f"card {n} declined") if failed else None,
        )

    # summariser: nine times slower than in the hour before, and timing out.
    digest_before = history.execution("digest", "completed", before)
    digest_now = history.execution("digest", "failed", recent)
    for n in range(10):
        history.attempt(digest_before, f"summarise[{n}]", "summariser", before, duration_ms=100)
        history.attempt(digest_now, f"summarise[{n}]", "summariser", recent, duration_ms=900)
    for n in range(3):
        history.attempt(
            digest_now,
            f"summarise[{n}]",
            "summariser",
            recent,
            attempt=2,
            outcome="timeout",
            duration_ms=30_000,
            error=("AttemptTimeout", "no answer within 30s"),
        )

    # research: two executions refused by their budget.
    for n in range(2):
        research = history.execution("research", "failed", recent + timedelta(seconds=n))
        history.attempt(
            research,
            "draft",
            "writer",
            recent,
            outcome="error",
            error=("BudgetExceeded", f"{n}000 tokens would pass max_tokens"),
        )

    # The payment service's breaker opened three times.
    for n in range(3):
        at = recent + timedelta(minutes=n)
        history.breaker_change(FLAPPING_BREAKER, at, "closed", "open")
        history.breaker_change(FLAPPING_BREAKER, at + timedelta(seconds=30), "open", "half_open")
        history.breaker_change(FLAPPING_BREAKER, at + timedelta(seconds=31), "half_open", "closed")

    history.write()
    return history


def seed_old_and_new(url: str) -> dict[str, str]:
    """For `purge --older-than 30d`: finished and running executions from 40 days ago,
    one finished yesterday, a health probe of each age."""
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    history = History(url=url, now=now)
    ids = {
        "old_done": history.execution("archive", "completed", old),
        "old_failed": history.execution("archive", "failed", old),
        "old_running": history.execution("archive", "running", old),
        "recent": history.execution("archive", "completed", now - timedelta(days=1)),
    }
    for name in ("old_done", "old_failed", "recent"):
        history.step(ids[name], "only", "a")
        history.attempt(ids[name], "only", "a", old)
    for at in (old, now):
        history.heartbeat("python:a:b", at)
    history.write()
    return ids
