"""Human approval for real: Redis as broker, PostgreSQL as state, a `manage.py worker`
with one prefork child (``-c 1``), and `manage.py run-team / status / approve` as a user
runs them from other terminals.

With one child, a waiting approval that held a worker slot would stop everything else:
the other branch of the same execution runs while the approval waits. The worker runs
nothing eagerly (TROUPE_EAGER_STEPS=0), so each step is its own message and that branch
cannot have run inside the task that came before the request.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.approval_agents import called, calls, team_yaml
from tests.support.services import WorkerProcess, describe, run_manage, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@dataclass
class Cluster:
    env: dict[str, str]
    db: Engine
    worker: WorkerProcess

    def log(self) -> str:
        return tail(self.worker.log_path, 60)


@pytest.fixture(scope="module")
def cluster(
    distributed_env: dict[str, str], postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    env = {
        **distributed_env,
        # A queue of this module's own: no other test's worker takes its messages.
        "TROUPE_QUEUE": f"troupe-test-{os.getpid()}-approvals",
        "TROUPE_EAGER_STEPS": "0",
    }
    upgrade = run_manage(["db", "upgrade"], env, timeout=60)
    assert upgrade.returncode == 0, describe(upgrade)
    worker = WorkerProcess(
        env=env,
        hostname=f"troupe-approvals-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path_factory.mktemp("approvals-worker") / "worker.log",
        concurrency=1,
    )
    worker.start()
    db = create_engine(postgres_url, poolclass=NullPool)
    try:
        worker.wait_ready(25)
        yield Cluster(env=env, db=db, worker=worker)
    finally:
        worker.stop()
        db.dispose()


def start(cluster: Cluster, tmp_path: Path, steps: list[dict[str, Any]]) -> tuple[str, Path]:
    """Enqueue a team of ``steps`` (dag; agent ``record`` logging to a file): its
    execution id, and the log of its agent's calls."""
    team = tmp_path / "team.yaml"
    team.write_text(team_yaml(steps), encoding="utf-8")
    log = tmp_path / "calls.log"
    result = run_manage(
        ["run-team", str(team), "--input-json", json.dumps({"log": str(log)}), "--no-wait"],
        cluster.env,
    )
    assert result.returncode == 0, describe(result)
    return result.stdout.strip(), log


def rows(cluster: Cluster, sql: str, execution_id: str) -> list[dict[str, Any]]:
    with cluster.db.connect() as connection:
        found = connection.execute(text(sql), {"id": execution_id})
        return [dict(row._mapping) for row in found]


def steps(cluster: Cluster, execution_id: str) -> dict[str, dict[str, Any]]:
    found = rows(
        cluster,
        "SELECT step_id, status, attempts, output, error_type, error_message"
        " FROM troupe_steps WHERE execution_id = :id",
        execution_id,
    )
    return {row["step_id"]: row for row in found}


def approval(cluster: Cluster, execution_id: str, step: str) -> dict[str, Any]:
    found = rows(
        cluster,
        "SELECT step_id, prompt, requested_at, timeout_at, decision, decided_by, comment,"
        " decided_at FROM troupe_approvals WHERE execution_id = :id",
        execution_id,
    )
    return {row["step_id"]: row for row in found}[step]


def execution_status(cluster: Cluster, execution_id: str) -> str:
    found = rows(cluster, "SELECT status FROM troupe_executions WHERE id = :id", execution_id)
    return str(found[0]["status"])


def until(cluster: Cluster, what: str, check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g}s: {what}\n--- worker log ---\n{cluster.log()}")
        time.sleep(0.05)


def finished(cluster: Cluster, execution_id: str) -> str:
    until(
        cluster,
        f"execution {execution_id} finished",
        lambda: execution_status(cluster, execution_id) in ("completed", "failed", "cancelled"),
    )
    return execution_status(cluster, execution_id)


def waiting(cluster: Cluster, execution_id: str, step: str) -> None:
    until(
        cluster,
        f"{step} waits for approval",
        lambda: steps(cluster, execution_id)[step]["status"] == "waiting_approval",
    )


def status_json(cluster: Cluster, execution_id: str) -> tuple[int, dict[str, Any]]:
    result = run_manage(["status", execution_id, "--json"], cluster.env)
    data = json.loads(result.stdout)
    assert isinstance(data, dict), describe(result)
    return result.returncode, data


def by_id(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in data["steps"]}


def approve(cluster: Cluster, execution_id: str, step: str, *args: str) -> Any:
    return run_manage(["approve", execution_id, step, *args], cluster.env)


def one_error_line(result: Any) -> str:
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(result)
    return str(lines[0])


# --- tests ---------------------------------------------------------------------------------


def test_approved_step_calls_its_agent_only_after_approval(
    cluster: Cluster, tmp_path: Path
) -> None:
    execution_id, log = start(
        cluster,
        tmp_path,
        [
            {
                "id": "review",
                "agent": "record",
                "approval": {"prompt": "Merge it?", "timeout": 60, "approvers": ["alice", "bob"]},
            },
            {"id": "ship", "agent": "record", "after": ["review"]},
        ],
    )
    waiting(cluster, execution_id, "review")

    code, data = status_json(cluster, execution_id)
    assert code == 0
    assert data["status"] == "running"
    shown = by_id(data)["review"]
    assert shown["status"] == "waiting_approval"
    asked = shown["approval"]
    assert asked["prompt"] == "Merge it?"
    assert asked["on_timeout"] == "reject"
    assert asked["approvers"] == ["alice", "bob"]
    assert asked["decision"] is None and asked["decided_by"] is None
    waits = datetime.fromisoformat(asked["timeout_at"]) - datetime.fromisoformat(
        asked["requested_at"]
    )
    assert abs(waits.total_seconds() - 60) < 0.01
    assert "approval" not in by_id(data)["ship"]
    assert called(log, "review") == 0

    refused = approve(cluster, execution_id, "review", "--as", "mallory")
    assert refused.returncode == 2, describe(refused)
    assert "'mallory' is not an approver of this step (approvers: alice, bob)" in one_error_line(
        refused
    )
    assert steps(cluster, execution_id)["review"]["status"] == "waiting_approval"

    approved = approve(cluster, execution_id, "review", "--as", "alice", "--comment", "LGTM")
    assert approved.returncode == 0, describe(approved)
    assert approved.stdout.strip() == f"step review of execution {execution_id} approved by alice"

    twice = approve(cluster, execution_id, "review", "--as", "bob", "--reject")
    assert twice.returncode == 2, describe(twice)
    assert "step 'review' was already approved by alice at" in one_error_line(twice)

    assert finished(cluster, execution_id) == "completed"
    record = approval(cluster, execution_id, "review")
    assert (record["decision"], record["decided_by"], record["comment"]) == (
        "approved",
        "alice",
        "LGTM",
    )
    assert record["requested_at"] <= record["decided_at"]
    logged = calls(log)
    assert [step for step, _ in logged] == ["review", "ship"]
    assert logged[0][1] >= record["decided_at"].timestamp()

    code, data = status_json(cluster, execution_id)
    assert code == 0
    assert by_id(data)["review"]["approval"]["decided_by"] == "alice"
    assert by_id(data)["review"]["approval"]["comment"] == "LGTM"


def test_rejected_gate_fails_and_its_dependents_are_skipped(
    cluster: Cluster, tmp_path: Path
) -> None:
    execution_id, log = start(
        cluster,
        tmp_path,
        [
            {"id": "gate", "approval": {"prompt": "Go on?", "timeout": 60}},
            {"id": "after_gate", "agent": "record", "after": ["gate"]},
            {"id": "elsewhere", "agent": "record"},
        ],
    )
    waiting(cluster, execution_id, "gate")
    rejected = approve(cluster, execution_id, "gate", "--reject", "--comment", "not today")
    assert rejected.returncode == 0, describe(rejected)
    user = rejected.stdout.strip().rsplit(" by ", 1)[1]

    assert finished(cluster, execution_id) == "failed"
    found = steps(cluster, execution_id)
    assert found["gate"]["status"] == "failed"
    assert (found["gate"]["error_type"], found["gate"]["error_message"]) == (
        "ApprovalRejected",
        f"rejected by {user}: not today",
    )
    assert found["after_gate"]["status"] == "skipped"
    assert found["elsewhere"]["status"] == "completed"
    assert called(log, "after_gate") == 0
    record = approval(cluster, execution_id, "gate")
    assert (record["decision"], record["decided_by"], record["comment"]) == (
        "rejected",
        user,
        "not today",
    )
    assert record["decided_at"] is not None

    code, data = status_json(cluster, execution_id)
    assert code == 1
    assert by_id(data)["gate"]["error"] == f"ApprovalRejected: rejected by {user}: not today"


@pytest.mark.parametrize("on_timeout", ["approve", "reject"])
def test_timeout_applies_on_timeout(cluster: Cluster, tmp_path: Path, on_timeout: str) -> None:
    execution_id, log = start(
        cluster,
        tmp_path,
        [
            {
                "id": "late",
                "agent": "record",
                "approval": {"prompt": "Anyone?", "timeout": 1.5, "on_timeout": on_timeout},
            }
        ],
    )
    status = finished(cluster, execution_id)
    record = approval(cluster, execution_id, "late")
    assert record["decided_by"] == "timeout"
    assert record["comment"] == f"no decision within 1.5s (on_timeout: {on_timeout})"
    assert record["decided_at"] >= record["timeout_at"]
    if on_timeout == "approve":
        assert status == "completed"
        assert record["decision"] == "approved"
        assert called(log, "late") == 1
        assert calls(log)[0][1] >= record["timeout_at"].timestamp()
    else:
        assert status == "failed"
        assert record["decision"] == "rejected"
        assert steps(cluster, execution_id)["late"]["error_type"] == "ApprovalRejected"
        assert called(log, "late") == 0
    again = approve(cluster, execution_id, "late", "--as", "zoe")
    assert again.returncode == 2, describe(again)
    assert "was already" in one_error_line(again)


def test_a_waiting_approval_holds_no_worker_slot(cluster: Cluster, tmp_path: Path) -> None:
    execution_id, log = start(
        cluster,
        tmp_path,
        [
            {"id": "gate", "approval": {"prompt": "Release?", "timeout": 60}},
            {"id": "after_gate", "agent": "record", "after": ["gate"]},
            {"id": "b1", "agent": "record"},
            {"id": "b2", "agent": "record", "after": ["b1"]},
            {"id": "b3", "agent": "record", "after": ["b2"]},
        ],
    )
    until(
        cluster,
        "the other branch completed",
        lambda: steps(cluster, execution_id)["b3"]["status"] == "completed",
    )
    # The one worker child ran b2 and b3 after the request: the approval held nothing.
    assert steps(cluster, execution_id)["gate"]["status"] == "waiting_approval"
    asked = approval(cluster, execution_id, "gate")
    ran = dict(calls(log))
    assert ran["b3"] > ran["b2"] > asked["requested_at"].timestamp()
    assert called(log, "after_gate") == 0

    approved = approve(cluster, execution_id, "gate", "--as", "rel-eng", "--comment", "go")
    assert approved.returncode == 0, describe(approved)
    assert finished(cluster, execution_id) == "completed"
    output = steps(cluster, execution_id)["gate"]["output"]
    decided = approval(cluster, execution_id, "gate")
    assert {k: output[k] for k in ("decision", "by", "comment")} == {
        "decision": "approved",
        "by": "rel-eng",
        "comment": "go",
    }
    assert datetime.fromisoformat(output["at"]) == decided["decided_at"]
    assert called(log, "after_gate") == 1
