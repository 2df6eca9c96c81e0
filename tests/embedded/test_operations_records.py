"""The operator commands' records on SQLite and PostgreSQL alike: aggregates (percentiles
by PostgreSQL, or in Python over SQLite's rows, to the same figures), the audit trail's
pages, retention, and the breaker history written with each change of state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from orchestration.spec import BreakerPolicy
from orchestration.store.breakers import BreakerStore
from orchestration.store.history import HistoryRecords, percentile
from orchestration.store.models import (
    AttemptRow,
    BreakerEventRow,
    ExecutionRow,
    HeartbeatRow,
    StepRow,
)
from orchestration.store.repository import Store, now


def add_execution(
    store: Store,
    *,
    team: str,
    status: str = "completed",
    at: datetime | None = None,
    attempts: list[dict[str, Any]] = (),  # type: ignore[assignment]
    steps: int = 0,
) -> str:
    execution_id = str(uuid.uuid4())
    stamp = at or now()
    with store.engine.begin() as connection:
        connection.execute(
            insert(ExecutionRow),
            {
                "id": execution_id,
                "team": team,
                "strategy": "parallel",
                "spec": {},
                "status": status,
                "created_at": stamp,
                "finished_at": stamp if status != "running" else None,
            },
        )
        if steps:
            connection.execute(
                insert(StepRow),
                [
                    {
                        "execution_id": execution_id,
                        "step_id": f"s{n}",
                        "agent": "a",
                        "position": n,
                        "level": 0,
                        "status": "completed",
                        "attempts": 1,
                    }
                    for n in range(steps)
                ],
            )
        if attempts:
            rows = [
                {
                    "execution_id": execution_id,
                    "step_id": "s0",
                    "attempt": n + 1,
                    "agent": "a",
                    "started_at": stamp,
                    "outcome": "success",
                    "usage": None,
                    **fields,
                }
                for n, fields in enumerate(attempts)
            ]
            connection.execute(insert(AttemptRow), rows)
    return execution_id


def test_agent_stats_count_sum_and_take_percentiles_alike_on_both_databases(url: str) -> None:
    store = Store(url)
    agent = f"stats-{uuid.uuid4().hex[:8]}"
    durations = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560]
    usage = {"tokens_in": 100, "tokens_out": 10, "cost_usd": 0.5, "endpoint": "http://svc/v1"}
    attempts: list[dict[str, Any]] = [
        {"agent": agent, "duration_ms": ms, "usage": usage} for ms in durations
    ]
    attempts += [
        {"agent": agent, "outcome": "error", "duration_ms": 7, "usage": usage},
        {"agent": agent, "outcome": "timeout", "duration_ms": 30_000, "usage": usage},
        # Refused: never reached the agent, so no duration of its counts.
        {"agent": agent, "outcome": "rejected", "duration_ms": 0, "usage": usage},
        # Priced by no table: its cost is unknown.
        {"agent": agent, "usage": {**usage, "cost_usd": None}, "duration_ms": 1},
        # Another endpoint is another group.
        {"agent": agent, "usage": {**usage, "endpoint": "http://other"}, "duration_ms": 3},
        {"agent": agent, "outcome": None, "duration_ms": None},
    ]
    add_execution(store, team="metrics", attempts=attempts)

    groups = HistoryRecords(store).agent_stats(since=now() - timedelta(hours=1), agent=agent)
    by_endpoint = {group.endpoint: group for group in groups}
    assert set(by_endpoint) == {"http://svc/v1", "http://other", None}
    main = by_endpoint["http://svc/v1"]
    assert (main.total, main.succeeded, main.failed, main.timeouts, main.rejected) == (
        14,
        11,
        2,
        1,
        1,
    )
    # Attempts 2.. of the one step are retries.
    assert main.retried == 13
    reached = [*durations, 7, 30_000, 1]
    assert main.mean_ms is not None and abs(main.mean_ms - sum(reached) / len(reached)) < 0.01
    assert main.p50_ms == percentile(reached, 0.5) == 80.0
    assert main.p95_ms == percentile(reached, 0.95)
    assert main.p95_ms is not None and abs(main.p95_ms - 13_536.0) < 0.01
    assert (main.spent.tokens_in, main.spent.tokens_out) == (1400, 140)
    assert abs(main.spent.cost_usd - 6.5) < 1e-9  # 13 priced attempts
    assert main.spent.unpriced == 1
    assert by_endpoint[None].running == 1


def test_the_audit_trail_pages_through_ties_once_each_in_order(url: str) -> None:
    store = Store(url)
    base = datetime(2001, 6, 1, tzinfo=UTC)
    # 23 attempts on 5 distinct moments: pages of 4 cut through runs of equal moments.
    attempts = [
        {"step_id": f"t{n}", "attempt": 1, "started_at": base + timedelta(seconds=n % 5)}
        for n in range(23)
    ]
    add_execution(store, team="audit", at=base, attempts=attempts)
    records = HistoryRecords(store)
    window = {"since": base, "until": base + timedelta(minutes=1)}
    rows = list(records.audit(**window, page=4))
    assert len(rows) == 23
    assert len({row["id"] for row in rows}) == 23
    keys = [(row["started_at"], row["id"]) for row in rows]
    assert keys == sorted(keys)
    assert {row["team"] for row in rows} == {"audit"}
    later = list(records.audit(since=base + timedelta(seconds=3), until=window["until"], page=4))
    assert len(later) == sum(1 for n in range(23) if n % 5 >= 3)


def test_purge_deletes_old_finished_executions_with_what_they_own(url: str) -> None:
    store = Store(url)
    old = datetime(2000, 1, 1, tzinfo=UTC)
    cutoff = datetime(2000, 6, 1, tzinfo=UTC)
    gone = [add_execution(store, team="old", at=old, steps=3, attempts=[{}, {}]) for _ in range(3)]
    running = add_execution(store, team="old", at=old, status="running", steps=1)
    recent = add_execution(store, team="old", at=cutoff + timedelta(days=1), steps=1)
    with store.engine.begin() as connection:
        connection.execute(
            insert(HeartbeatRow),
            [
                {"identity": "x", "at": old, "healthy": True, "latency_ms": 1},
                {
                    "identity": "x",
                    "at": cutoff + timedelta(days=1),
                    "healthy": True,
                    "latency_ms": 1,
                },
            ],
        )
    records = HistoryRecords(store)

    counted = records.purge(cutoff, dry_run=True)
    assert (counted.executions, counted.steps, counted.attempts, counted.heartbeats) == (3, 9, 6, 1)
    deleted = records.purge(cutoff, dry_run=False, batch=2)
    assert deleted == counted

    with store.session() as session:
        left = set(session.scalars(select(ExecutionRow.id).where(ExecutionRow.team == "old")))
        orphans = session.scalars(
            select(StepRow.execution_id).where(StepRow.execution_id.in_(gone))
        )
        attempts = session.scalars(select(AttemptRow.id).where(AttemptRow.execution_id.in_(gone)))
        assert left == {running, recent}
        assert list(orphans) == [] and list(attempts) == []
    assert records.purge(cutoff, dry_run=True).executions == 0


def test_every_change_of_a_breaker_s_state_is_recorded(url: str) -> None:
    store = Store(url)
    breakers = BreakerStore(store)
    key = f"python:flappy:{uuid.uuid4().hex[:8]}"
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=1)
    start = now()
    for cycle in range(3):
        at = start + timedelta(seconds=10 * cycle)
        for n in range(2):
            breakers.record_call(key, policy, failed=True, trial=False, error=f"down {n}", at=at)
        # After the cool-down a trial is let in, and it succeeds.
        admission = breakers.admit(key, policy, at=at + timedelta(seconds=2))
        assert admission.trial
        breakers.record_call(key, policy, failed=False, trial=True, at=at + timedelta(seconds=3))
    with store.session() as session:
        events = list(
            session.scalars(
                select(BreakerEventRow)
                .where(BreakerEventRow.key == key)
                .order_by(BreakerEventRow.id)
            )
        )
    assert [(e.from_state, e.to_state) for e in events] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ] * 3
    assert [e.reason for e in events if e.to_state == "open"] == ["down 1"] * 3
    found = HistoryRecords(store).breaker_events(
        start - timedelta(seconds=1), now() + timedelta(minutes=1)
    )
    assert len([e for e in found if e.key == key and e.to_state == "open"]) == 3
