"""A distributed worker started from a user's project folder that has its own
``celeryconfig.py``: it runs with Troupe's settings, on Troupe's broker and queue."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.support.foreign_project import MARKER, expected_output, write_project
from tests.support.services import WorkerProcess, describe, run_manage, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_worker_started_from_a_project_with_its_own_celeryconfig_runs_troupes_settings(
    distributed_env: dict[str, str], tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_project(project)
    # A queue of its own: the session's shared worker must not run this team instead.
    env = {**distributed_env, "TROUPE_QUEUE": f"{distributed_env['TROUPE_QUEUE']}-foreign"}
    upgrade = run_manage(["db", "upgrade"], env)
    assert upgrade.returncode == 0, describe(upgrade)
    worker = WorkerProcess(
        env=env,
        hostname=f"troupe-foreign-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path / "worker.log",
        cwd=project,
    )
    worker.start()
    try:
        worker.wait_ready(25)
        conf = worker.conf()
        assert conf["task_acks_late"] is True
        assert conf["task_reject_on_worker_lost"] is True
        assert conf["task_default_queue"] == env["TROUPE_QUEUE"]
        assert conf["broker_transport_options"]["visibility_timeout"] == 3600

        result = run_manage(
            ["run-team", "team.yaml", "--input", "world", "--json", "--timeout", "45"],
            env,
            cwd=project,
            timeout=60,
        )
        assert result.returncode == 0, describe(result) + tail(worker.log_path)
        data = json.loads(result.stdout)
        assert data["status"] == "completed", data
        assert data["output"] == expected_output()
    finally:
        worker.stop()
    assert not (project / MARKER).exists(), "Troupe imported the project's celeryconfig.py"
