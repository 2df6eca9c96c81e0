"""A broker or a database that cannot be reached: `run-team` says so in one line naming
it, exits 4 ("nothing to run on"), and within 5 s of its start, whether the server
refuses the connection or accepts it and never answers.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from orchestration.store.database import ensure_schema
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.repository import Store
from orchestration.team_file import parse_team
from tests.support.services import describe, run_manage, subprocess_env
from tests.support.teams import write_team
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(60)

BOUND_SECONDS = 5.0
# Nothing listens there: connections are refused.
REFUSED_PORT = 1


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts: the kernel completes each connection, and
    nothing is ever said on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A user's existing state, for the broker cases: the database is fine."""
    url = f"sqlite:///{tmp_path_factory.mktemp('unreachable') / 'troupe.db'}"
    ensure_schema(url, auto_upgrade=True)
    return url


def run_timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    result = run_manage(args, env, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 4, describe(result)
    assert result.stdout == "", describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert elapsed < BOUND_SECONDS, f"{elapsed:.2f} s\n{describe(result)}"
    return elapsed, lines[0]


@pytest.mark.parametrize(
    ("scheme", "answer"),
    [("redis", "refuses"), ("redis", "is silent"), ("amqp", "is silent")],
)
def test_an_unreachable_broker(
    scheme: str, answer: str, silent_port: int, migrated_sqlite: str, tmp_path: Path
) -> None:
    port = REFUSED_PORT if answer == "refuses" else silent_port
    broker = (
        f"redis://127.0.0.1:{port}/0"
        if scheme == "redis"
        else f"amqp://guest:secret@127.0.0.1:{port}//"
    )
    team = write_team(tmp_path, "sequential", [{"id": "one"}])
    env = subprocess_env({"TROUPE_BROKER_URL": broker, "TROUPE_DATABASE_URL": migrated_sqlite})
    elapsed, line = run_timed(["run-team", str(team)], env)
    assert line.startswith(f"error: cannot reach the broker at {scheme}://"), line
    assert f"127.0.0.1:{port}/" in line
    assert "secret" not in line
    print(f"broker {scheme} {answer}: exit 4 after {elapsed:.2f} s")


@pytest.mark.parametrize(
    ("command", "answer"),
    [("run-team", "refuses"), ("run-team", "is silent"), ("db upgrade", "is silent")],
)
def test_an_unreachable_database(
    command: str, answer: str, silent_port: int, tmp_path: Path
) -> None:
    port = REFUSED_PORT if answer == "refuses" else silent_port
    database = f"postgresql+psycopg2://troupe:secret@127.0.0.1:{port}/troupe"
    args = ["run-team", str(write_team(tmp_path, "sequential", [{"id": "one"}]))]
    if command == "db upgrade":
        args = ["db", "upgrade"]
    env = subprocess_env({"TROUPE_DATABASE_URL": database, "TROUPE_STATE_DIR": str(tmp_path)})
    elapsed, line = run_timed(args, env)
    assert line.startswith("error: cannot reach the database at postgresql+psycopg2://"), line
    assert f"127.0.0.1:{port}/troupe" in line
    assert "secret" not in line
    print(f"database {answer} ({command}): exit 4 after {elapsed:.2f} s")


def test_stop_records_the_cancel_when_the_broker_is_unreachable(migrated_sqlite: str) -> None:
    """Revoking queued messages only spares work; the recorded cancel is what holds, so
    `stop` does not fail (or wait) for a broker it cannot reach."""
    spec = parse_team(
        yaml.safe_dump(
            {
                "name": "stopped",
                "agents": {"a": {"target": "json:dumps"}},
                "workflow": {"strategy": "sequential", "steps": [{"id": "one", "agent": "a"}]},
            }
        ),
        source="stopped.yaml",
    )
    store = Store(migrated_sqlite)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), input_value=None
    )
    # A queued attempt: its task id is what stop would revoke.
    DelegationRecords(store).begin_attempt(execution_id, "one", "a", 1, "task-1", "w")
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": f"redis://127.0.0.1:{REFUSED_PORT}/0",
            "TROUPE_DATABASE_URL": migrated_sqlite,
        }
    )
    started = time.monotonic()
    result = run_manage(["stop", execution_id], env, timeout=30)
    assert result.returncode == 0, describe(result)
    assert result.stdout.strip() == f"execution {execution_id} cancelled"
    assert time.monotonic() - started < BOUND_SECONDS
    assert ExecutionRecords(store).execution_status(execution_id) == "cancelled"
