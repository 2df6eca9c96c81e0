"""A level of several steps is counted down in the database, and exactly one delegation,
the one whose write decides the level's last step, learns that it closed the level.

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
    Store(url).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), input_value=None
    )
    return execution_id


def remaining(url: str, execution_id: str) -> list[tuple[int, int, int]]:
    with get_engine(url).connect() as connection:
        rows = connection.execute(
            text(
                "SELECT level, size, remaining FROM troupe_levels "
                "WHERE execution_id = :id ORDER BY level"
            ),
            {"id": execution_id},
        )
        return [tuple(row) for row in rows]


def race(pool: Any, url: str, execution_id: str, steps: list[str]) -> list[Any]:
    pids = pool.starmap_async(countdown.pool_warm, [(url,)] * PROCESSES, chunksize=1).get(60)
    assert len(set(pids)) == PROCESSES
    jobs = [(url, execution_id, sid, how) for sid, how in zip(steps, HOW, strict=True)]
    return list(pool.starmap_async(countdown.pool_decide, jobs, chunksize=1).get(60))


def test_only_levels_of_several_steps_are_counted(url: str) -> None:
    execution_id = enqueue(url, PROCESSES)
    # Level 0 holds the 8 parallel steps; level 1 ("after") is one step, moved on by
    # its chain, so it has no countdown.
    assert remaining(url, execution_id) == [(0, PROCESSES, PROCESSES)]


def test_the_write_that_decides_a_levels_last_step_and_only_it_closes_the_level(
    url: str, pool: Any
) -> None:
    execution_id = enqueue(url, PROCESSES)
    results = race(pool, url, execution_id, [f"s{i}" for i in range(PROCESSES)])

    closers = [sid for sid, closes in results if closes]
    assert len(closers) == 1, results
    assert all(closes is not None for _, closes in results), results
    assert remaining(url, execution_id) == [(0, PROCESSES, 0)]


def test_a_step_decided_twice_is_counted_once(url: str, pool: Any) -> None:
    """Every process decides the same step (copies of one message, or a late retry):
    one write decides it, the others find it decided and count nothing."""
    execution_id = enqueue(url, PROCESSES)
    results = race(pool, url, execution_id, ["s0"] * PROCESSES)

    assert sum(closes is not None for _, closes in results) == 1, results
    assert not any(closes for _, closes in results), results
    assert remaining(url, execution_id) == [(0, PROCESSES, PROCESSES - 1)]


def test_an_execution_under_way_at_the_upgrade_gets_its_countdowns(tmp_path: Path) -> None:
    """Migration 0006 counts the undecided steps of every unfinished execution's wide
    levels, so those executions carry on after the upgrade."""
    from alembic import command

    from orchestration.store.database import _alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = _alembic_config(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    steps = [("a", 0, "completed"), ("b", 0, "running"), ("c", 0, "pending"), ("d", 1, "pending")]
    with engine.begin() as connection:
        for execution_id, status in (("live", "running"), ("over", "completed")):
            connection.execute(
                text(
                    "INSERT INTO troupe_executions (id, team, strategy, spec, status, created_at)"
                    " VALUES (:id, 't', 'dag', '{}', :status, '2026-11-22 10:00:00')"
                ),
                {"id": execution_id, "status": status},
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
        rows = connection.execute(
            text("SELECT execution_id, level, size, remaining FROM troupe_levels")
        ).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("live", 0, 3, 2)]


def test_a_level_whose_closer_died_before_moving_on_resumes_from_the_next_level(
    runtime: Any,
) -> None:
    """The delegation that decided a level's last step died between its commit and the
    publish of the next level: the execution stalls until the reaper resumes it, which
    publishes only what is left (the next level), and nothing decided runs again."""
    from orchestration import Team
    from orchestration.constants import START_TASK
    from orchestration.store.repository import AttemptEnd, now
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
    runtime.store.create_execution(
        execution_id, team.spec.model_dump(mode="json"), team.plan, {"n": 1}
    )
    closed = []
    for sid in ("a", "b"):
        end = AttemptEnd(execution_id, sid, 1, "echo", f"task-{sid}", "died", now(), 1)
        decided = runtime.store.record_success(end, {"from": sid}, level=0)
        assert decided is not None
        closed.append(decided.closes_level)
    assert closed == [False, True]

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
    workers = {row.step_id: row.worker for row in runtime.store.attempts(execution_id)}
    assert workers["a"] == workers["b"] == "died"
    assert workers["c"] != "died"
