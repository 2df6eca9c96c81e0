"""Asks and handoffs on real workers over Redis and PostgreSQL: a chain of asks on a
worker of concurrency 1 does not deadlock, and a worker killed -9 while a handoff's
delegation runs loses nothing: another worker finishes it, and the handoff is taken once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    FAST_SETTINGS,
    Cluster,
    agent_entry,
    events,
    query,
    wait_for,
    wait_ready,
    worker_service,
    write_team_file,
)
from tests.support.services import describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PID = os.getpid()


@pytest.fixture(scope="module")
def collab_env(
    redis_url: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    database = f"troupe_test_{PID}_collab"
    url = postgres.create(database)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": url,
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("collab-state")),
            **FAST_SETTINGS,
        }
    )
    upgrade = run_manage(["db", "upgrade"], env, timeout=60)
    assert upgrade.returncode == 0, describe(upgrade)
    try:
        yield env
    finally:
        postgres.drop(database)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    started = Cluster(request.node)
    try:
        yield started
    finally:
        started.stop_all()


def test_a_chain_of_asks_completes_on_a_worker_of_concurrency_one(
    collab_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    env = {**collab_env, "TROUPE_QUEUE": f"collab-asks-{PID}"}
    worker = cluster.add(worker_service(env, f"collab-asks-{PID}", tmp_path, concurrency=1))
    cluster.start(worker)
    wait_ready([worker])
    team = write_team_file(
        tmp_path,
        "askers",
        "sequential",
        [("s", "a")],
        {
            "a": agent_entry("tests.support.team_agents:asks_b", timeout=7),
            "b": agent_entry("tests.support.team_agents:asks_c", timeout=5),
            "c": agent_entry("tests.support.team_agents:answers", timeout=3),
        },
    )
    with cluster.dump_on_failure():
        result = run_manage(["run-team", str(team), "--json", "--timeout", "60"], env, timeout=90)
        assert result.returncode == 0, describe(result)
        data = json.loads(result.stdout)
        assert data["output"] == {"a": {"b": {"c": "what does c say?", "task": "what does c say?"}}}
        # Each question has its own audited attempt, by its own agent.
        attempts = json.loads(
            run_manage(["status", data["execution_id"], "--attempts", "--json"], env).stdout
        )["attempts"]
        assert sorted(a["agent"] for a in attempts) == ["a", "b", "c"]
        assert all(a["outcome"] == "success" for a in attempts)


def test_a_worker_killed_while_a_handoff_runs_loses_nothing(
    collab_env: dict[str, str], cluster: Cluster, tmp_path: Path
) -> None:
    env = {**collab_env, "TROUPE_QUEUE": f"collab-handoff-{PID}"}
    victim = cluster.add(worker_service(env, f"collab-victim-{PID}", tmp_path, concurrency=2))
    cluster.start(victim)
    wait_ready([victim])
    log = tmp_path / "events.jsonl"
    team = write_team_file(
        tmp_path,
        "handing",
        "dag",
        [
            {"id": "draft", "agent": "lead"},
            {"id": "review", "agent": "reviewer", "after": ["draft"]},
        ],
        {
            "lead": agent_entry("tests.support.team_agents:passes_to_recorder"),
            "recorder": agent_entry(
                "tests.support.faults:record",
                timeout=7,
                retry={"max_attempts": 3, "initial_delay": 0, "max_delay": 0, "jitter": "none"},
            ),
            "reviewer": agent_entry("tests.support.team_agents:specialist"),
        },
    )
    payload = {"log": str(log), "sleep": {"draft~to~recorder": 3}}
    enqueue = run_manage(
        ["run-team", str(team), "--no-wait", "--input-json", json.dumps(payload)], env
    )
    assert enqueue.returncode == 0, describe(enqueue)
    execution_id = enqueue.stdout.strip()
    with cluster.dump_on_failure():
        # The handoff was decided and its delegation started: kill the worker.
        wait_for(lambda: events(log, "start", "draft~to~recorder"), 30, "the handoff to start")
        victim.kill9()
        rescuer = cluster.add(worker_service(env, f"collab-rescuer-{PID}", tmp_path))
        cluster.start(rescuer)
        wait_ready([rescuer])

        def finished() -> dict[str, Any] | None:
            rows = query(
                env["TROUPE_DATABASE_URL"],
                "SELECT status FROM troupe_executions WHERE id = :id",
                id=execution_id,
            )
            return rows[0] if rows and rows[0]["status"] in ("completed", "failed") else None

        wait_for(finished, 90, "the execution to finish on the other worker")
        status = run_manage(["status", execution_id, "--json"], env)
        data = json.loads(status.stdout)
    assert data["status"] == "completed", data
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["draft"]["status"] == steps["draft~to~recorder"]["status"] == "completed"
    # The handoff ran again after the kill, and was decided once.
    assert len(events(log, "start", "draft~to~recorder")) == 2
    assert len(events(log, "end", "draft~to~recorder")) == 1
    assert [h["outcome"] for h in data["handoffs"]] == ["taken"]
    # The reviewer got the handoff target's output as the draft's.
    assert data["output"]["by"] == "reviewer"
