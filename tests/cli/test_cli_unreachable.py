"""A broker or a database that cannot be reached: `run-team` says so in one line naming
it, exits 4 ("nothing to run on"), and within 5 s of its start, whether the server
refuses the connection or accepts it and never answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestration.store.database import ensure_schema
from tests.support.services import describe, run_manage, subprocess_env
from tests.support.teams import write_team

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
