"""`manage.py` and human approval in embedded mode: run-team says how a waiting step can
be decided (here: only by its own process, so it takes its timeout), and `approve`,
which needs a broker to reach the running execution, says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.approval_agents import called, team_yaml
from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(60)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def test_run_team_shows_the_waiting_step_and_how_it_can_be_decided(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    team = tmp_path / "team.yaml"
    team.write_text(
        team_yaml(
            [
                {
                    "id": "deploy",
                    "agent": "record",
                    "approval": {
                        "prompt": "Deploy the fix?",
                        "timeout": 1,
                        "on_timeout": "approve",
                    },
                }
            ]
        ),
        encoding="utf-8",
    )
    log = tmp_path / "calls.log"
    result = run_manage(
        ["run-team", str(team), "--input-json", json.dumps({"log": str(log)})], cli_env
    )
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert "waiting_approval deploy (record): Deploy the fix? (waiting until" in out, out
    assert "then approve)" in out, out
    assert "embedded run: only this process can decide it" in out, out
    assert "approved deploy (record) approved by timeout" in out, out
    assert called(log, "deploy") == 1


def test_approve_in_embedded_mode_says_it_needs_a_broker(cli_env: dict[str, str]) -> None:
    result = run_manage(["approve", "some-execution", "deploy"], cli_env)
    assert result.returncode == 2, describe(result)
    line = one_error_line(result.stderr)
    assert "approve needs a broker (set TROUPE_BROKER_URL)" in line, line


def test_validate_accepts_a_gate_without_an_agent(cli_env: dict[str, str], tmp_path: Path) -> None:
    team = tmp_path / "team.yaml"
    team.write_text(
        team_yaml(
            [
                {"id": "sign_off", "approval": {"prompt": "Sign off?", "timeout": 60}},
                {"id": "after", "agent": "record", "after": ["sign_off"]},
            ]
        ),
        encoding="utf-8",
    )
    result = run_manage(["validate", str(team)], cli_env)
    assert result.returncode == 0, describe(result)
    assert "(approval)" in result.stdout
    assert "approval: 60s, then reject" in result.stdout
