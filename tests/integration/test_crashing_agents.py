"""An agent that ends its worker process cannot loop forever: every attempt that dies
with its process counts against the retry policy, and the step fails saying so.

A real prefork worker (`manage.py worker -c 2`, the session's `distributed` fixture):
`os._exit` in the agent kills the pool process, Celery requeues the message as
redelivered, and the next delivery finds the dead attempt (its marker is written before
the call once a message has been redelivered) and counts it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import describe, run_manage
from tests.support.teams import write_team

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_an_agent_that_kills_its_process_fails_within_its_retry_policy(
    distributed: Any, tmp_path: Path
) -> None:
    team = write_team(
        tmp_path,
        "dag",
        [
            {"id": "crash", "agent": "kills_its_process"},
            {"id": "fine", "agent": "echo"},
        ],
    )
    result = run_manage(
        ["run-team", str(team), "--json", "--timeout", "90"], distributed.env, timeout=110
    )
    assert result.returncode == 1, describe(result)
    data = json.loads(result.stdout)
    steps = {step["id"]: step for step in data["steps"]}
    assert data["status"] == "failed"
    assert steps["fine"]["status"] == "completed"
    crash = steps["crash"]
    assert crash["status"] == "failed"
    assert crash["error"].startswith("WorkerLost: "), crash
    assert "no attempts left" in crash["error"]
    # The default policy allows 3 attempts: the refused fourth is the last record.
    assert crash["attempts"] == 4, crash
