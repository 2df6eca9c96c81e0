"""Troupe's Celery configuration is its own: run from a project folder that has its own
``celeryconfig.py``, and validated against the broker it is given (Redis or RabbitMQ).
Its settings come from TROUPE_* variables when whoever starts Troupe reads them, never at
import; an invalid one is one line naming it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.foreign_project import MARKER, expected_output, write_project
from tests.support.services import PYTHON, ROOT, describe, run_manage, subprocess_env
from tests.support.teams import agent, write_text

pytestmark = pytest.mark.timeout(60)

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def test_run_team_from_a_project_with_its_own_celeryconfig_never_imports_it(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write_project(project)

    result = run_manage(
        ["run-team", "team.yaml", "--input", "world", "--json"], cli_env, cwd=project
    )

    assert result.returncode == 0, describe(result)
    data = json.loads(result.stdout)
    assert data["status"] == "completed", data
    assert data["output"] == expected_output()
    assert not (project / MARKER).exists(), "Troupe imported the project's celeryconfig.py"
    # Nor does the embedded beat leave a schedule file in the user's folder.
    assert sorted(p.name for p in project.iterdir() if p.name.startswith("celerybeat")) == []


def _slow_team(tmp_path: Path) -> Path:
    """One agent that holds its message at most 10 s for a call plus 5 s of retry delay."""
    retry = {"max_attempts": 3, "initial_delay": 5, "backoff": 2, "max_delay": 5}
    slow = agent("noop", timeout=10, **retry, jitter="none")
    data = {
        "name": "slow",
        "agents": {"slow": slow},
        "workflow": {"strategy": "sequential", "steps": [{"id": "only", "agent": "slow"}]},
    }
    return write_text(tmp_path, "slow.yaml", yaml.safe_dump(data, sort_keys=False))


def _validate(team: Path, **settings: str) -> tuple[int, str]:
    env = subprocess_env({"TROUPE_STATE_DIR": str(team.parent / "state"), **settings})
    result = run_manage(["validate", str(team)], env)
    return result.returncode, result.stderr.strip()


def test_on_rabbitmq_the_consumer_timeout_bounds_a_team_not_the_visibility_timeout(
    tmp_path: Path,
) -> None:
    team = _slow_team(tmp_path)

    # 15 s fits RabbitMQ's consumer timeout of 16 s; Redis's visibility timeout of 8 s
    # does not apply to RabbitMQ.
    code, stderr = _validate(
        team,
        TROUPE_BROKER_URL=RABBITMQ,
        TROUPE_VISIBILITY_TIMEOUT="8",
        TROUPE_CONSUMER_TIMEOUT="16",
    )
    assert code == 0, stderr

    code, stderr = _validate(team, TROUPE_BROKER_URL=RABBITMQ, TROUPE_CONSUMER_TIMEOUT="12")
    assert code == 2, stderr
    [line] = stderr.splitlines()
    assert "agents.slow.timeout" in line, line
    assert "exceeds RabbitMQ's consumer timeout (12s)" in line, line
    assert "TROUPE_CONSUMER_TIMEOUT" in line, line


def test_on_redis_the_visibility_timeout_bounds_a_team_not_the_consumer_timeout(
    tmp_path: Path,
) -> None:
    team = _slow_team(tmp_path)
    redis = {"TROUPE_BROKER_URL": "redis://127.0.0.1:6379/0", "TROUPE_CONSUMER_TIMEOUT": "1"}

    code, stderr = _validate(team, **redis, TROUPE_VISIBILITY_TIMEOUT="16")
    assert code == 0, stderr

    code, stderr = _validate(team, **redis, TROUPE_VISIBILITY_TIMEOUT="8")
    assert code == 2, stderr
    assert "exceeds the broker's visibility timeout (8s)" in stderr, stderr


def test_an_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    team = _slow_team(tmp_path)

    code, stderr = _validate(team, TROUPE_LEASE_INTERVAL="-1", TROUPE_QUEUE="q")

    assert code == 2, stderr
    [line] = stderr.splitlines()
    assert line.startswith("error: invalid settings: TROUPE_LEASE_INTERVAL: "), line


def _python(code: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = subprocess_env({"TROUPE_STATE_DIR": str(tmp_path / "state"), **settings})
    return subprocess.run(
        [PYTHON, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_importing_troupe_reads_no_setting(tmp_path: Path) -> None:
    # An invalid value would raise wherever it was read.
    code = "import orchestration, orchestration.cli, workers.tasks; print('ok')"
    result = _python(code, tmp_path, TROUPE_LEASE_INTERVAL="-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_an_app_nobody_configured_reads_the_environment_when_first_needed(
    tmp_path: Path,
) -> None:
    # As under `celery -A workers.app`, which configures nothing itself.
    code = (
        "from workers.app import app, app_settings\n"
        "print(app.conf.task_default_queue, app_settings().queue)\n"
    )
    result = _python(code, tmp_path, TROUPE_QUEUE="from-env")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["from-env", "from-env"]
