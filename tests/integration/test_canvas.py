"""Teams inside Celery's canvas, on a real worker: a chain passes a team's output on, a
group and a chord run teams side by side, and a failed team fails its signature so the
chain's error callback runs. The worker has one process: a team that held it while it
ran could never run its own steps."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import ROOT, WorkerProcess, describe

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHOUT_TEAM = """
name: shout
agents:
  shouter: {kind: python, target: "tests.support.metrics_agents:shout"}
workflow:
  strategy: sequential
  steps: [{id: shout, agent: shouter}]
"""

FAILING_TEAM = """
name: refusing
agents:
  refuser: {kind: python, target: "tests.support.metrics_agents:refuse"}
workflow:
  strategy: sequential
  steps: [{id: refuse, agent: refuser}]
"""

# It waits for a person (holding no worker slot) until it is cancelled.
GATE_TEAM = """
name: gated
agents:
  shouter: {kind: python, target: "tests.support.metrics_agents:shout"}
workflow:
  strategy: sequential
  steps:
    - {id: wait, approval: {prompt: "go?", timeout: 600}}
    - {id: shout, agent: shouter}
"""


@pytest.fixture
def one_slot_worker(distributed: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    # Reaping every second: a cancelled team's signature is failed by the sweep.
    env = {
        **distributed.env,
        "TROUPE_QUEUE": f"canvas-{os.getpid()}",
        "TROUPE_REAP_INTERVAL": "1",
    }
    worker = WorkerProcess(
        env=env,
        hostname=f"canvas-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path / "worker.log",
        concurrency=1,
        extra_args=("--include", "tests.support.canvas_tasks"),
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env
    finally:
        worker.stop()


def test_teams_in_chains_groups_and_chords(one_slot_worker: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    shout = tmp_path / "shout.yaml"
    shout.write_text(SHOUT_TEAM)
    failing = tmp_path / "failing.yaml"
    failing.write_text(FAILING_TEAM)
    gate = tmp_path / "gate.yaml"
    gate.write_text(GATE_TEAM)
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.canvas_tasks", str(shout), str(failing), str(gate)],
        cwd=ROOT,
        env=one_slot_worker,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    log = (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    assert result.returncode == 0, describe(result) + "\n--- worker ---\n" + log
    found = json.loads(result.stdout)

    assert found["chain"] == {"stored": "TEXT OF U"}
    assert found["chain_team"] == {"state": "SUCCESS", "execution": "completed"}
    assert found["group"] == ["A", "B", "C"]
    assert found["chord"] == ["A", "B"]
    assert found["immutable"] == {"stored": "GIVEN"}

    failure = found["failure"]
    assert failure["state"] == "FAILURE"
    assert failure["error"].startswith("ExecutionFailed: execution "), failure
    assert "PermanentAgentError: refused 'x'" in failure["error"], failure
    assert failure["errback_got"] == failure["team_id"]
    assert failure["execution"] == "failed"
    # Celery marks the rest of the chain failed with the same error, as for any task.
    assert failure["next_state"] == "FAILURE"

    cancelled = found["cancelled"]
    assert cancelled["state"] == "FAILURE", cancelled
    assert "cancelled" in cancelled["error"], cancelled
