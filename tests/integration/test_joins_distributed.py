"""Joins on a real distributed worker: `manage.py worker` (prefork, four children) on
Redis and PostgreSQL, teams run with `manage.py run-team` as a user would.

A quorum runs without its hanging parent and cancels it; a deadline runs a join with
one result of three; a quorum that can no longer be met fails at once; majority and
priority report their conflicts; first_success and a reducer give their results. After
each hanging parent is released, its late result is recorded in its attempt and
changes neither the join's recorded output nor the execution's.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.services import WorkerProcess, describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

VOTERS = {"va": "alpha", "vb": "beta", "vc": "gamma", "vd": "delta"}


@pytest.fixture(scope="module")
def joins_env(
    redis_url: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A migrated database and a queue of this module's own, and a prefork worker with
    four children (a hanging parent holds one)."""
    database = f"troupe_test_{os.getpid()}_joins"
    url = postgres.create(database)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": url,
            "TROUPE_QUEUE": f"troupe-joins-{os.getpid()}",
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("joins-state")),
        }
    )
    upgrade = run_manage(["db", "upgrade"], env, timeout=60)
    assert upgrade.returncode == 0, describe(upgrade)
    worker = WorkerProcess(
        env=env,
        hostname=f"troupe-joins-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path_factory.mktemp("joins-worker") / "worker.log",
        concurrency=4,
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env
    finally:
        worker.stop()
        postgres.drop(database)


def write_team(
    directory: Path,
    join: dict[str, Any],
    voters: tuple[str, ...] = ("va", "vb", "vc"),
) -> Path:
    agents: dict[str, Any] = {
        name: {
            "target": "tests.support.join_agents:voter",
            "timeout": 90,
            "retry": {"max_attempts": 1},
        }
        for name in VOTERS.values()
    }
    agents["judge"] = {"target": "tests.support.join_agents:judge", "retry": {"max_attempts": 1}}
    steps: list[dict[str, Any]] = [{"id": sid, "agent": VOTERS[sid]} for sid in voters]
    steps.append({"id": "vote", "after": list(voters), "join": join})
    path = directory / "team.yaml"
    data = {"name": "joins", "agents": agents, "workflow": {"strategy": "dag", "steps": steps}}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_team(env: dict[str, str], team: Path, scripts: dict[str, Any]) -> tuple[int, Any]:
    result = run_manage(
        ["run-team", str(team), "--input-json", json.dumps(scripts), "--json", "--timeout", "60"],
        env,
        timeout=90,
    )
    assert result.returncode in (0, 1), describe(result)
    try:
        return result.returncode, json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON value:\n{describe(result)}")


def query(env: dict[str, str], sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(env["TROUPE_DATABASE_URL"], poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def step_row(env: dict[str, str], execution_id: str, step_id: str) -> dict[str, Any]:
    rows = query(
        env,
        "SELECT status, output, reason, skip_cause FROM troupe_steps"
        " WHERE execution_id = :e AND step_id = :s",
        e=execution_id,
        s=step_id,
    )
    return rows[0]


def execution_row(env: dict[str, str], execution_id: str) -> dict[str, Any]:
    return query(
        env, "SELECT status, output, error FROM troupe_executions WHERE id = :e", e=execution_id
    )[0]


def wait_for(condition: Callable[[], Any], seconds: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def late_results(env: dict[str, str], execution_id: str, step_id: str) -> list[dict[str, Any]]:
    """The step's attempts, once every one of them has ended."""
    rows = query(
        env,
        "SELECT attempt, outcome FROM troupe_attempts WHERE execution_id = :e AND step_id = :s",
        e=execution_id,
        s=step_id,
    )
    return rows if rows and all(row["outcome"] for row in rows) else []


def by_id(data: dict[str, Any]) -> dict[str, Any]:
    return {step["id"]: step for step in data["steps"]}


def vote(verdict: str, **more: Any) -> dict[str, Any]:
    return {"output": {"verdict": verdict, **more}}


def test_a_quorum_of_two_runs_without_the_hanging_parent_and_cancels_it(
    joins_env: dict[str, str], tmp_path: Path
) -> None:
    gate = tmp_path / "release-vc"
    team = write_team(
        tmp_path, {"aggregate": "majority", "field": "verdict", "quorum": 2, "deadline": 30}
    )
    # va and vb take a moment, so vc is surely under way when they meet the quorum.
    started = time.monotonic()
    code, data = run_team(
        joins_env,
        team,
        {
            "va": {"sleep": 0.5, **vote("approve")},
            "vb": {"sleep": 0.5, **vote("approve")},
            "vc": {"wait_for": str(gate)},
        },
    )
    elapsed = time.monotonic() - started
    try:
        assert code == 0, data
        assert data["status"] == "completed"
        assert elapsed < 25, elapsed  # well before the deadline, and vc's release
        steps = by_id(data)
        assert (steps["va"]["status"], steps["vb"]["status"]) == ("completed", "completed")
        assert steps["vc"]["status"] == "cancelled"
        assert steps["vc"]["error"] == "cancelled while running: join 'vote' met its quorum of 2"
        recorded = data["output"]
        assert recorded["result"] == {"verdict": "approve"}
        assert recorded["trigger"] == "quorum"
        assert recorded["consensus"] == {
            "type": "success",
            "confidence": 1.0,
            "agreeing": 2,
            "of": 2,
        }
        assert recorded["parents"][2]["was"] == "running"
        execution_id = data["execution_id"]
        status = run_manage(["status", execution_id], joins_env)
        assert status.returncode == 0, describe(status)
        assert "met its quorum of 2" in status.stdout, status.stdout
    finally:
        gate.touch()
    # vc's call ends now: its attempt records it; nothing else changes.
    attempts = wait_for(lambda: late_results(joins_env, execution_id, "vc"), what="vc's end")
    assert [a["outcome"] for a in attempts] == ["success"]
    vc = step_row(joins_env, execution_id, "vc")
    assert (vc["status"], vc["output"], vc["skip_cause"]) == ("cancelled", None, "join")
    assert step_row(joins_env, execution_id, "vote")["output"] == recorded
    assert execution_row(joins_env, execution_id) == {
        "status": "completed",
        "output": recorded,
        "error": None,
    }


def test_a_deadline_runs_the_join_with_one_result_of_three(
    joins_env: dict[str, str], tmp_path: Path
) -> None:
    gates = {sid: tmp_path / f"release-{sid}" for sid in ("vb", "vc")}
    team = write_team(tmp_path, {"deadline": 2, "tolerate_failures": True})
    started = time.monotonic()
    code, data = run_team(
        joins_env,
        team,
        {
            "va": vote("approve"),
            "vb": {"wait_for": str(gates["vb"])},
            "vc": {"wait_for": str(gates["vc"])},
        },
    )
    elapsed = time.monotonic() - started
    try:
        assert code == 0, data
        assert 2 <= elapsed < 25, elapsed
        output = data["output"]
        assert output["trigger"] == "deadline"
        assert output["result"] == {"va": {"verdict": "approve"}, "vb": None, "vc": None}
        assert [(p["step"], p["status"], p.get("was")) for p in output["parents"]] == [
            ("va", "completed", None),
            ("vb", "cancelled", "running"),
            ("vc", "cancelled", "running"),
        ]
        steps = by_id(data)
        for sid in ("vb", "vc"):
            assert steps[sid]["error"] == (
                "cancelled while running: join 'vote' reached its deadline of 2s"
            )
    finally:
        for gate in gates.values():
            gate.touch()
    execution_id = data["execution_id"]
    for sid in ("vb", "vc"):
        wait_for(lambda sid=sid: late_results(joins_env, execution_id, sid), what=f"{sid}'s end")
        assert step_row(joins_env, execution_id, sid)["status"] == "cancelled"
    assert step_row(joins_env, execution_id, "vote")["output"] == output
    assert execution_row(joins_env, execution_id)["output"] == output


def test_an_unreachable_quorum_fails_at_once(joins_env: dict[str, str], tmp_path: Path) -> None:
    gate = tmp_path / "release-vc"
    team = write_team(tmp_path, {"quorum": 2, "deadline": 30})
    started = time.monotonic()
    code, data = run_team(
        joins_env,
        team,
        {
            "va": {"fail": "alpha broke"},
            "vb": {"fail": "beta broke"},
            "vc": {"wait_for": str(gate)},
        },
    )
    elapsed = time.monotonic() - started
    try:
        assert code == 1, data
        assert data["status"] == "failed"
        assert elapsed < 25, elapsed
        steps = by_id(data)
        assert steps["vote"]["error"] == (
            "QuorumUnreachable: quorum of 2 of 3 parents can no longer be met: 2 gave no "
            "result ('va' failed (PermanentAgentError: alpha broke); 'vb' failed "
            "(PermanentAgentError: beta broke))"
        )
        assert steps["vc"]["status"] == "cancelled"
        assert steps["vc"]["error"].endswith("join 'vote' can no longer meet its quorum of 2")
        error = execution_row(joins_env, data["execution_id"])["error"]
        assert error.startswith("step 'vote' failed: QuorumUnreachable")
    finally:
        gate.touch()


@pytest.mark.parametrize(
    ("join", "result", "chosen"),
    [
        (
            {"aggregate": "majority", "field": "verdict", "tolerate_failures": True},
            {"verdict": "approve", "by": "alpha"},
            ["va", "vc"],
        ),
        (
            {
                "aggregate": "priority",
                "priority": ["delta", "beta"],
                "field": "verdict",
                "tolerate_failures": True,
            },
            {"verdict": "reject"},
            ["vb"],
        ),
    ],
)
def test_majority_and_priority_report_failure_and_field_conflicts(
    joins_env: dict[str, str],
    tmp_path: Path,
    join: dict[str, Any],
    result: Any,
    chosen: list[str],
) -> None:
    team = write_team(tmp_path, join, voters=("va", "vb", "vc", "vd"))
    code, data = run_team(
        joins_env,
        team,
        {
            "va": vote("approve", by="alpha"),
            "vb": vote("reject"),
            "vc": vote("approve", by="gamma"),
            "vd": {"fail": "delta is down"},
        },
    )
    assert code == 0, data
    assert data["status"] == "completed"
    assert by_id(data)["vd"]["status"] == "failed"
    output = data["output"]
    assert output["result"] == result
    assert output["resolution"]["chosen"] == chosen
    assert output["resolution"]["recommendation"] == (
        "review the results manually, or add a validation agent"
    )
    issues = {(c["agent1"], c["agent2"]): c["issue"] for c in output["conflicts"]}
    assert issues[("alpha", "delta")] == (
        "contradictory results (success vs failure): 'vd' failed "
        "(PermanentAgentError: delta is down)"
    )
    assert issues[("alpha", "beta")] == 'different values of \'verdict\': "approve" vs "reject"'
    assert len(issues) == 5
    assert output["consensus"]["type"] == "partial"


def test_first_success_and_a_reducer(joins_env: dict[str, str], tmp_path: Path) -> None:
    team = write_team(tmp_path, {"aggregate": "first_success", "tolerate_failures": True})
    code, data = run_team(
        joins_env,
        team,
        {
            "va": {"sleep": 1.0, "output": "slow"},
            "vb": {"fail": "beta broke"},
            "vc": {"output": "fast"},
        },
    )
    assert code == 0, data
    assert data["output"]["result"] == "fast"
    assert data["output"]["resolution"]["chosen"] == ["vc"]

    team = write_team(
        tmp_path,
        {"aggregate": "reducer", "reducer": "judge", "field": "score", "tolerate_failures": True},
    )
    code, data = run_team(
        joins_env,
        team,
        {
            "va": {"output": {"score": 3}},
            "vb": {"fail": "beta broke"},
            "vc": {"output": {"score": 5}},
        },
    )
    assert code == 0, data
    assert by_id(data)["vote"]["agent"] == "judge"
    assert data["output"]["result"] == {
        "shown": [["va", "completed"], ["vb", "failed"], ["vc", "completed"]],
        "conflicts": 3,
        "outputs": ["va", "vc"],
        "score": 5,
    }
    assert data["output"]["resolution"]["strategy"] == "reducer"
