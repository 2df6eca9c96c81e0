"""A join's dependencies are counted down in the database, and exactly one delegation,
the one whose write decides the join's last undecided parent, learns that the join is
ready: a join with many parents runs exactly once, under redelivery and races.

The race runs in 8 spawned OS processes released together by a barrier, on SQLite and
on PostgreSQL (where the write is one prepared multi-statement round trip), so the
database, not a Python lock, is what has to keep the count exact.
"""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from orchestration.store.database import get_engine
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.repository import Store
from orchestration.team_file import parse_team
from tests.support import barrier_pool, countdown
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(90)

PROCESSES = 8
# Every way a step gets decided counts: a result, a failure, a refused dispatch, a skip.
HOW = ["success", "failure", "rejection", "skip"] * (PROCESSES // 4)


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    workers = context.Pool(PROCESSES, initializer=barrier_pool.pool_init, initargs=(barrier,))
    try:
        yield workers
    finally:
        workers.terminate()
        workers.join()


def team(width: int) -> Any:
    data = {
        "name": "countdown",
        "agents": {"a": {"target": "json:dumps"}},
        "workflow": {
            "strategy": "dag",
            "steps": [
                *({"id": f"s{i}", "agent": "a"} for i in range(width)),
                {"id": "after", "agent": "a", "after": [f"s{i}" for i in range(width)]},
            ],
        },
    }
    return parse_team(yaml.safe_dump(data), source="countdown.yaml")


def enqueue(url: str, width: int) -> str:
    spec = team(width)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(Store(url)).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), input_value=None
    )
    return execution_id


def waiting(url: str, execution_id: str) -> dict[str, int]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(
            text("SELECT step_id, waiting FROM troupe_steps WHERE execution_id = :id"),
            {"id": execution_id},
        )
        return {row[0]: row[1] for row in rows}


def race(pool: Any, url: str, execution_id: str, steps: list[str]) -> list[Any]:
    pids = pool.starmap_async(countdown.pool_warm, [(url,)] * PROCESSES, chunksize=1).get(60)
    assert len(set(pids)) == PROCESSES
    jobs = [(url, execution_id, sid, how) for sid, how in zip(steps, HOW, strict=True)]
    return list(pool.starmap_async(countdown.pool_decide, jobs, chunksize=1).get(60))


def test_each_step_waits_for_its_own_dependencies(url: str) -> None:
    execution_id = enqueue(url, PROCESSES)
    counts = waiting(url, execution_id)
    assert counts.pop("after") == PROCESSES
    assert set(counts.values()) == {0}


def test_the_write_that_decides_a_joins_last_parent_and_only_it_makes_the_join_ready(
    url: str, pool: Any
) -> None:
    execution_id = enqueue(url, PROCESSES)
    results = race(pool, url, execution_id, [f"s{i}" for i in range(PROCESSES)])

    readiers = [sid for sid, ready in results if ready]
    assert len(readiers) == 1, results
    assert [ready for _, ready in results if ready] == [("after",)], results
    assert all(ready is not None for _, ready in results), results
    assert waiting(url, execution_id)["after"] == 0


def test_a_step_decided_twice_is_counted_once(url: str, pool: Any) -> None:
    """Every process decides the same step (copies of one message, or a late retry):
    one write decides it, the others find it decided and count nothing."""
    execution_id = enqueue(url, PROCESSES)
    results = race(pool, url, execution_id, ["s0"] * PROCESSES)

    assert sum(ready is not None for _, ready in results) == 1, results
    assert not any(ready for _, ready in results), results
    assert waiting(url, execution_id)["after"] == PROCESSES - 1


def test_an_execution_under_way_at_the_upgrade_gets_its_counts(tmp_path: Path) -> None:
    """Migration 0007 counts, from its spec, the undecided dependencies of every step of
    an unfinished execution, and its undecided sinks, so it carries on after the
    upgrade."""
    import json

    from alembic import command

    from orchestration.store.database import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = _alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    spec = {
        "workflow": {
            "strategy": "dag",
            "steps": [
                {"id": "a"},
                {"id": "b"},
                {"id": "c"},
                {"id": "d", "after": ["a", "b", "c"]},
                {"id": "e", "after": ["a"]},
            ],
        }
    }
    steps = [
        ("a", 0, "completed"),
        ("b", 0, "running"),
        ("c", 0, "pending"),
        ("d", 1, "pending"),
        ("e", 1, "pending"),
    ]
    with engine.begin() as connection:
        for execution_id, status in (("live", "running"), ("over", "completed")):
            connection.execute(
                text(
                    "INSERT INTO troupe_executions (id, team, strategy, spec, status, created_at)"
                    " VALUES (:id, 't', 'dag', :spec, :status, '2026-11-22 10:00:00')"
                ),
                {"id": execution_id, "status": status, "spec": json.dumps(spec)},
            )
            for position, (sid, level, step_status) in enumerate(steps):
                connection.execute(
                    text(
                        "INSERT INTO troupe_steps (execution_id, step_id, agent, position, level,"
                        " status, attempts) VALUES (:e, :s, 'x', :p, :l, :st, 0)"
                    ),
                    {"e": execution_id, "s": sid, "p": position, "l": level, "st": step_status},
                )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with engine.connect() as connection:
        counts = dict(
            connection.execute(
                text("SELECT step_id, waiting FROM troupe_steps WHERE execution_id = 'live'")
            ).all()
        )
        sinks = dict(connection.execute(text("SELECT id, sinks_left FROM troupe_executions")).all())
    engine.dispose()
    assert counts == {"a": 0, "b": 0, "c": 0, "d": 2, "e": 0}
    assert sinks == {"live": 2, "over": 0}


def test_a_join_whose_readier_died_before_sending_it_resumes_with_only_the_join(
    runtime: Any,
) -> None:
    """The delegation that decided a join's last parent died between its commit and the
    publish of the join: the execution stalls until the reaper resumes it, which sends
    only what is left (the join), and nothing decided runs again."""
    from orchestration import Team
    from orchestration.constants import START_TASK
    from orchestration.store.repository import AttemptEnd, Countdown, now
    from tests.support.teams import team_yaml

    team = Team.from_yaml(
        team_yaml(
            "dag",
            [{"id": "a"}, {"id": "b"}, {"id": "c", "after": ["a", "b"]}],
            name="closer-died",
        )
    )
    execution_id = str(uuid.uuid4())
    runtime.ensure_worker()
    runtime.executions.create_execution(
        execution_id, team.spec.model_dump(mode="json"), team.plan, {"n": 1}
    )
    ready = []
    for sid in ("a", "b"):
        end = AttemptEnd(execution_id, sid, 1, "echo", f"task-{sid}", "died", now(), 1)
        decided = DelegationRecords(runtime.store).record_success(
            end, {"from": sid}, Countdown(("c",))
        )
        assert decided is not None
        ready.append(decided.ready)
    assert ready == [(), ("c",)]

    # What the reaper sends once the execution has been still for the stall timeout.
    runtime.app.send_task(
        START_TASK, args=(execution_id,), kwargs={"resume": True}, queue=runtime.settings.queue
    )
    report = runtime.handle(execution_id).wait(20)

    assert report.status == "completed", report
    assert [(s.id, s.status, s.attempts) for s in report.steps] == [
        ("a", "completed", 1),
        ("b", "completed", 1),
        ("c", "completed", 1),
    ]
    # c saw what a and b had recorded; neither ran again.
    assert report.output == {
        "step_id": "c",
        "input": {"n": 1},
        "outputs": ["a", "b"],
        "task": None,
        "attempt": 1,
    }
    workers = {row.step_id: row.worker for row in runtime.executions.attempts(execution_id)}
    assert workers["a"] == workers["b"] == "died"
    assert workers["c"] != "died"
