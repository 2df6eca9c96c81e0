"""`run-team` in embedded mode, stopped before its team ends (--timeout, Ctrl-C), from a
user's own folder: the execution and every unfinished step are recorded cancelled (none
stays `running`), and nothing is left in that folder but what the user put there and
the state directory.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.services import MANAGE, PYTHON, describe, run_manage, subprocess_env
from tests.support.teams import write_team

pytestmark = pytest.mark.timeout(60)


def statuses(database: Path) -> tuple[str | None, dict[str, str]]:
    """The only execution's status and its steps' statuses, read from the SQLite file."""
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as connection:
        executions = connection.execute("SELECT status FROM troupe_executions").fetchall()
        steps = connection.execute("SELECT step_id, status FROM troupe_steps").fetchall()
    return (executions[0][0] if executions else None), dict(steps)


def step_running(database: Path, step: str) -> bool:
    if not database.exists():  # connecting would create it
        return False
    try:
        return statuses(database)[1].get(step) == "running"
    except sqlite3.OperationalError:  # not there yet, or not migrated yet
        return False


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder with a team file of a slow step and one after it."""
    folder = tmp_path / "project"
    folder.mkdir()
    write_team(folder, "sequential", [{"id": "slow", "agent": "sleepy"}, {"id": "after"}])
    return folder


def _left_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_timeout_leaves_no_step_running_and_no_file_in_the_folder(project: Path) -> None:
    env = subprocess_env()
    (team,) = project.glob("*.yaml")
    result = run_manage(
        ["run-team", team.name, "--input-json", "30", "--timeout", "0.5"], env, cwd=project
    )
    assert result.returncode == 3, describe(result)
    execution, steps = statuses(project / ".troupe" / "troupe.db")
    assert execution == "cancelled"
    assert steps == {"slow": "cancelled", "after": "cancelled"}
    # No celerybeat-schedule.* (nor anything else) beside the team file: beat's schedule
    # is kept in memory in embedded mode.
    assert _left_in(project) == [".troupe", team.name]


def test_ctrl_c_leaves_no_step_running(project: Path) -> None:
    env = subprocess_env()
    (team,) = project.glob("*.yaml")
    database = project / ".troupe" / "troupe.db"
    process = subprocess.Popen(
        [PYTHON, str(MANAGE), "run-team", team.name, "--input-json", "30"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not step_running(database, "slow"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the slow step never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == "error: aborted", stderr
    execution, steps = statuses(database)
    assert execution == "cancelled"
    assert steps == {"slow": "cancelled", "after": "cancelled"}
    assert _left_in(project) == [".troupe", team.name]
