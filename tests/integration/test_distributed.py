"""Distributed mode for real: Redis as broker, PostgreSQL as state, a `manage.py worker`
subprocess (prefork, two children), and clients in other processes.

This session has its own Redis database number, PostgreSQL database and queue name (see
tests/conftest.py), so it never meets a developer's workers.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.report_shape import assert_report_shape
from tests.support.services import describe, run_manage
from tests.support.teams import write_team

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

EXAMPLE_TEAM = "examples/code_audit/team.yaml"
SAMPLE = "examples/code_audit/sample_project"
CLEAN = "examples/code_audit/clean_project"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def run_json(args: list[str], env: dict[str, str], **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    result = run_manage([*args, "--json"], env, **kwargs)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON value ({exc}):\n{describe(result)}")
    assert isinstance(data, dict), describe(result)
    return result, data


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A report without what legitimately differs between two runs."""
    return {
        "status": data["status"],
        "output": data["output"],
        "steps": [{k: v for k, v in step.items() if k != "duration_ms"} for step in data["steps"]],
    }


def one_error_line(result: Any) -> str:
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    return lines[0]


def attempt_rows(database_url: str, execution_id: str) -> list[dict[str, Any]]:
    """The audit trail, read straight from PostgreSQL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT step_id, attempt, agent, task_id, worker, started_at, finished_at,"
                    " duration_ms, outcome, error_type, error_message"
                    " FROM troupe_attempts WHERE execution_id = :id ORDER BY id"
                ),
                {"id": execution_id},
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


# --- runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", [SAMPLE, CLEAN])
def test_example_team_gives_the_same_result_as_embedded_mode(
    folder: str, distributed: Any, cli_env: dict[str, str]
) -> None:
    result, data = run_json(["run-team", EXAMPLE_TEAM, "--input", folder], distributed.env)
    assert result.returncode == 0, describe(result)
    assert_report_shape(data)
    assert data["status"] == "completed"

    embedded, expected = run_json(["run-team", EXAMPLE_TEAM, "--input", folder], cli_env)
    assert embedded.returncode == 0, describe(embedded)
    assert comparable(data) == comparable(expected)
    assert data["execution_id"] != expected["execution_id"]


def test_parallel_fan_out_of_200_steps(distributed: Any, tmp_path: Path) -> None:
    ids = [f"s{i:03d}" for i in range(200)]
    team = write_team(
        tmp_path, "parallel", [{"id": sid, "agent": "add_one"} for sid in ids], name="fan-out"
    )
    started = time.monotonic()
    result, data = run_json(
        ["run-team", str(team), "--input-json", "41", "--timeout", "75"],
        distributed.env,
        timeout=85,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, describe(result)
    assert_report_shape(data)
    assert data["status"] == "completed"
    assert len(data["steps"]) == 200
    assert [step["id"] for step in data["steps"]] == ids
    assert all(step["status"] == "completed" for step in data["steps"])
    assert all(step["attempts"] == 1 for step in data["steps"])
    assert data["output"] == dict.fromkeys(ids, 42)
    print(f"200-step fan-out took {elapsed:.1f}s")


def test_every_message_of_a_run_is_acknowledged_in_redis(distributed: Any, tmp_path: Path) -> None:
    """The worker writes acknowledgements without waiting for Redis's replies: each of the
    50 delegations must still leave kombu's unacked index, or the broker would deliver it
    again after the visibility timeout. Other tests share this Redis database, and their
    messages (a retry held until its countdown, say) may still be reserved."""
    import redis

    team = write_team(tmp_path, "dag", [{"id": f"s{i:02d}", "agent": "noop"} for i in range(50)])
    result, data = run_json(["run-team", str(team), "--timeout", "60"], distributed.env)
    assert result.returncode == 0, describe(result)
    assert data["status"] == "completed"
    client = redis.Redis.from_url(distributed.redis_url)
    try:
        deadline = time.monotonic() + 5
        while True:
            left = _unacked_of(client, data["execution_id"])
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert left == []
        # The index and the hash kombu keeps them in still agree.
        assert client.hlen("unacked") == client.zcard("unacked_index")
    finally:
        client.close()


def _unacked_of(client: Any, execution_id: str) -> list[str]:
    """The messages of one execution still in kombu's unacked hash, as task[id] args."""
    left = []
    for raw in client.hvals("unacked"):
        message = json.loads(raw)[0]
        body = base64.b64decode(message["body"]).decode()
        if execution_id in body:
            headers = message.get("headers", {})
            left.append(f"{headers.get('task')}[{headers.get('id')}] {body}")
    return left


def test_no_wait_prints_an_id_and_status_reports_completion(
    distributed: Any, tmp_path: Path
) -> None:
    team = write_team(
        tmp_path,
        "pipeline",
        [{"id": "first", "agent": "add_one"}, {"id": "second", "agent": "add_one"}],
    )
    enqueue = run_manage(["run-team", str(team), "--input-json", "1", "--no-wait"], distributed.env)
    assert enqueue.returncode == 0, describe(enqueue)
    execution_id = enqueue.stdout.strip()
    assert UUID.match(execution_id), describe(enqueue)

    deadline = time.monotonic() + 30
    while True:
        status, data = run_json(["status", execution_id], distributed.env)
        assert_report_shape(data)
        assert data["execution_id"] == execution_id
        if data["status"] != "pending" and data["status"] != "running":
            break
        assert status.returncode == 0, describe(status)
        assert time.monotonic() < deadline, data
        time.sleep(0.2)
    assert status.returncode == 0, describe(status)
    assert data["status"] == "completed"
    assert data["output"] == 3
    assert [(s["id"], s["status"], s["attempts"]) for s in data["steps"]] == [
        ("first", "completed", 1),
        ("second", "completed", 1),
    ]


def test_no_wait_json_prints_the_id_as_json(distributed: Any, tmp_path: Path) -> None:
    team = write_team(tmp_path, "parallel", [{"id": "only", "agent": "noop"}])
    result, data = run_json(["run-team", str(team), "--no-wait"], distributed.env)
    assert result.returncode == 0, describe(result)
    assert set(data) == {"execution_id"}
    assert UUID.match(data["execution_id"])


def test_failing_team_exits_1_and_retries_happen_across_processes(
    distributed: Any, tmp_path: Path
) -> None:
    team = write_team(
        tmp_path,
        "dag",
        [
            {"id": "flaky", "agent": "flaky_until_third"},
            {"id": "doomed", "agent": "fail_always"},
            {"id": "after_doomed", "after": ["doomed"]},
        ],
    )
    result, data = run_json(["run-team", str(team), "--timeout", "60"], distributed.env)
    assert result.returncode == 1, describe(result)
    assert data["status"] == "failed"
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["flaky"]["status"] == "completed"
    assert steps["flaky"]["attempts"] == 3
    assert steps["doomed"]["status"] == "failed"
    assert steps["doomed"]["attempts"] == 3
    assert steps["doomed"]["error"] == "RuntimeError: doomed always fails (attempt 3)"
    assert steps["after_doomed"]["status"] == "skipped"
    assert "'doomed'" in steps["after_doomed"]["error"]


def test_audit_rows_are_in_postgresql_with_the_worker_hostname(
    distributed: Any, tmp_path: Path
) -> None:
    team = write_team(
        tmp_path,
        "sequential",
        [{"id": "flaky", "agent": "flaky_until_third"}, {"id": "done", "agent": "noop"}],
    )
    result, data = run_json(["run-team", str(team)], distributed.env)
    assert result.returncode == 0, describe(result)
    rows = attempt_rows(distributed.database_url, data["execution_id"])
    assert [(r["step_id"], r["attempt"], r["outcome"]) for r in rows] == [
        ("flaky", 1, "error"),
        ("flaky", 2, "error"),
        ("flaky", 3, "success"),
        ("done", 1, "success"),
    ]
    assert [r["error_type"] for r in rows] == [
        "TransientAgentError",
        "TransientAgentError",
        None,
        None,
    ]
    for row in rows:
        assert row["worker"] == distributed.worker.hostname
        assert row["task_id"]
        assert row["started_at"] is not None and row["finished_at"] is not None
        assert row["started_at"] <= row["finished_at"]
        assert isinstance(row["duration_ms"], int) and row["duration_ms"] >= 0
    assert rows[0]["agent"] == "flaky_until_third"
    assert rows[3]["agent"] == "noop"


def test_a_call_past_its_time_limit_is_stopped_in_the_worker(
    distributed: Any, tmp_path: Path
) -> None:
    """A prefork pool process cuts the agent's own code off at the limit: the timed-out
    attempts are recorded and retried, and neither call goes on to its end afterwards."""
    from tests.support.teams import agent

    team = write_team(
        tmp_path,
        "sequential",
        [{"id": "slow", "agent": "sleep_then_mark"}],
        agents={"sleep_then_mark": agent("sleep_then_mark", timeout=0.3, max_attempts=2)},
    )
    mark = tmp_path / "ran-to-the-end"
    started = time.monotonic()
    result, data = run_json(
        [
            "run-team",
            str(team),
            "--input-json",
            json.dumps({"seconds": 1.5, "mark": str(mark)}),
            "--timeout",
            "30",
        ],
        distributed.env,
    )
    assert result.returncode == 1, describe(result)
    step = data["steps"][0]
    assert (step["status"], step["attempts"]) == ("failed", 2)
    assert step["error"] == "AttemptTimeout: attempt exceeded its time limit of 0.3s"
    rows = attempt_rows(distributed.database_url, data["execution_id"])
    assert [r["outcome"] for r in rows] == ["timeout", "timeout"]
    assert all(300 <= r["duration_ms"] < 1000 for r in rows), rows
    # Each call would have created the file 1.5 s after it started.
    time.sleep(max(0.0, started + 2 * 1.5 + 0.5 - time.monotonic()))
    assert not mark.exists()


def test_stop_cancels_a_running_execution(distributed: Any, tmp_path: Path) -> None:
    team = write_team(tmp_path, "sequential", [{"id": "slow", "agent": "sleepy"}, {"id": "never"}])
    enqueue = run_manage(["run-team", str(team), "--input-json", "3", "--no-wait"], distributed.env)
    assert enqueue.returncode == 0, describe(enqueue)
    execution_id = enqueue.stdout.strip()
    stop = run_manage(["stop", execution_id], distributed.env)
    assert stop.returncode == 0, describe(stop)
    assert "cancelled" in stop.stdout
    status, data = run_json(["status", execution_id], distributed.env)
    assert status.returncode == 1, describe(status)
    assert data["status"] == "cancelled"
    assert {s["id"]: s["status"] for s in data["steps"]}["never"] == "cancelled"
    # The worker never calls the agent of a step that had not started.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = attempt_rows(distributed.database_url, execution_id)
        if all(r["finished_at"] is not None for r in rows):
            break
        time.sleep(0.2)
    assert "never" not in {r["step_id"] for r in rows}


# --- unavailable services --------------------------------------------------------------


def test_no_worker_on_the_broker_exits_4(
    distributed: Any, spare_redis_url: str, tmp_path: Path
) -> None:
    env = {**distributed.env, "TROUPE_BROKER_URL": spare_redis_url}
    team = write_team(tmp_path, "parallel", [{"id": "only", "agent": "noop"}])
    started = time.monotonic()
    result = run_manage(["run-team", str(team), "--json", "--timeout", "20"], env, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, describe(result)
    assert result.stdout == ""
    assert "python manage.py worker" in one_error_line(result)
    assert elapsed < 15


def test_no_worker_on_the_queue_exits_4(distributed: Any, tmp_path: Path) -> None:
    # Same broker and database as the session's worker, but a queue nobody consumes.
    env = {**distributed.env, "TROUPE_QUEUE": f"{distributed.queue}-nobody"}
    team = write_team(tmp_path, "parallel", [{"id": "only", "agent": "noop"}])
    started = time.monotonic()
    result = run_manage(["run-team", str(team), "--json", "--timeout", "10"], env, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, describe(result)
    assert result.stdout == ""
    line = one_error_line(result)
    assert "python manage.py worker" in line
    assert f"{distributed.queue}-nobody" in line
    assert elapsed < 15


def test_database_not_migrated_exits_4(distributed: Any, postgres: Any, tmp_path: Path) -> None:
    name = f"{distributed.database_url.rsplit('/', 1)[1]}_empty"
    url = postgres.create(name)
    try:
        env = {**distributed.env, "TROUPE_DATABASE_URL": url}
        team = write_team(tmp_path, "parallel", [{"id": "only", "agent": "noop"}])
        result = run_manage(["run-team", str(team), "--json"], env, timeout=30)
        assert result.returncode == 4, describe(result)
        assert result.stdout == ""
        assert "python manage.py db upgrade" in one_error_line(result)

        check = run_manage(["db", "check"], env, timeout=30)
        assert check.returncode == 4, describe(check)

        # A worker refuses to start on it too (on a queue of its own, just in case).
        worker_env = {**env, "TROUPE_QUEUE": f"{distributed.queue}-unmigrated"}
        worker = run_manage(["worker", "-c", "1"], worker_env, timeout=30)
        assert worker.returncode == 4, describe(worker)
        assert "python manage.py db upgrade" in one_error_line(worker)
    finally:
        postgres.drop(name)
