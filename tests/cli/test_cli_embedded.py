"""`manage.py` as a user runs it, in embedded mode: one process, its own worker thread,
SQLite state in a temporary directory, no broker in the environment."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.report_shape import assert_report_shape
from tests.support.services import describe, run_manage
from tests.support.teams import agent, team_data, write_team, write_text

pytestmark = pytest.mark.timeout(60)

EXAMPLE_TEAM = "examples/code_audit/team.yaml"
SAMPLE = "examples/code_audit/sample_project"
CLEAN = "examples/code_audit/clean_project"


def run_json(args: list[str], env: dict[str, str], **kwargs: Any) -> tuple[Any, Any]:
    """Run with --json; the whole stdout must be exactly one JSON object."""
    result = run_manage([*args, "--json"], env, **kwargs)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON value ({exc}):\n{describe(result)}")
    assert isinstance(data, dict), describe(result)
    return result, data


def assert_finished_report(data: dict[str, Any]) -> None:
    assert_report_shape(data)
    assert data["status"] in ("completed", "failed", "cancelled")
    assert data["steps"]


def steps_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in data["steps"]}


def assert_one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """stderr is exactly one line starting with "error: " containing every needle."""
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    line = lines[0]
    assert line.startswith("error: "), describe(result)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# --- the example team ----------------------------------------------------------------


def test_example_run_exits_0_and_shows_the_output(cli_env: dict[str, str]) -> None:
    result = run_manage(["run-team", EXAMPLE_TEAM, "--input", SAMPLE], cli_env)
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert "execution completed" in out
    for step in ("syntax", "todos", "secrets", "fix", "report"):
        assert step in out
    assert '"verdict": "needs-attention"' in out
    assert '"files_scanned": 5' in out
    assert "Traceback" not in result.stderr


def test_example_json_on_sample_project(cli_env: dict[str, str]) -> None:
    result, data = run_json(["run-team", EXAMPLE_TEAM, "--input", SAMPLE], cli_env)
    assert result.returncode == 0, describe(result)
    assert_finished_report(data)
    assert data["status"] == "completed"
    steps = steps_of(data)
    assert list(steps) == ["syntax", "todos", "secrets", "fix", "report"]
    for step in steps.values():
        assert step["status"] == "completed", step
        assert step["attempts"] == 1
        assert step["error"] is None
        assert isinstance(step["duration_ms"], int)
    output = data["output"]
    assert output["verdict"] == "needs-attention"
    assert output["files_scanned"] == 5
    assert output["missing_scanners"] == []
    assert output["total_issues"] == sum(output["by_scanner"].values()) > 0
    assert all(count > 0 for count in output["by_scanner"].values()), output
    assert output["fixes_planned"] == output["total_issues"]


def test_example_json_on_clean_project_skips_the_fixer(cli_env: dict[str, str]) -> None:
    result, data = run_json(["run-team", EXAMPLE_TEAM, "--input", CLEAN], cli_env)
    assert result.returncode == 0, describe(result)
    assert_finished_report(data)
    assert data["status"] == "completed"
    steps = steps_of(data)
    assert steps["fix"] == {
        "id": "fix",
        "agent": "fixer",
        "status": "skipped",
        "attempts": 0,
        "duration_ms": None,
        "error": None,
        "parent": None,
        "item_index": None,
        "usage": None,
    }
    for sid in ("syntax", "todos", "secrets", "report"):
        assert steps[sid]["status"] == "completed"
    assert data["output"] == {
        "files_scanned": 2,
        "total_issues": 0,
        "by_scanner": {"syntax": 0, "todos": 0, "secrets": 0},
        "fixes_planned": 0,
        "missing_scanners": [],
        "verdict": "clean",
    }


def test_example_input_json_mapping(cli_env: dict[str, str]) -> None:
    result, data = run_json(
        ["run-team", EXAMPLE_TEAM, "--input-json", json.dumps({"path": CLEAN})], cli_env
    )
    assert result.returncode == 0, describe(result)
    assert data["output"]["verdict"] == "clean"


# --- failures and time limits ----------------------------------------------------------


def test_failing_team_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    team = write_team(
        tmp_path,
        "sequential",
        [{"id": "ok"}, {"id": "boom", "agent": "fail_always"}, {"id": "after"}],
    )
    result, data = run_json(["run-team", str(team), "--input", "x"], cli_env)
    assert result.returncode == 1, describe(result)
    assert_finished_report(data)
    assert data["status"] == "failed"
    steps = steps_of(data)
    assert steps["ok"]["status"] == "completed"
    assert steps["boom"]["status"] == "failed"
    assert steps["boom"]["attempts"] == 3
    assert steps["boom"]["error"] == "RuntimeError: boom always fails (attempt 3)"
    assert steps["after"]["status"] == "skipped"
    assert "'boom'" in steps["after"]["error"]


def test_failing_team_exits_1_without_json(cli_env: dict[str, str], tmp_path: Path) -> None:
    team = write_team(tmp_path, "parallel", [{"id": "boom", "agent": "fail_permanent"}])
    result = run_manage(["run-team", str(team)], cli_env)
    assert result.returncode == 1, describe(result)
    assert "execution failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_timeout_exits_3_and_the_execution_is_cancelled(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    team = write_team(tmp_path, "sequential", [{"id": "slow", "agent": "sleepy"}, {"id": "after"}])
    result = run_manage(
        ["run-team", str(team), "--input-json", "3", "--timeout", "0.5", "--json"], cli_env
    )
    assert result.returncode == 3, describe(result)
    assert result.stdout == ""
    line = assert_one_error_line(result, "0.5s")
    execution_id = line.split()[2]
    status, data = run_json(["status", execution_id], cli_env)
    assert status.returncode == 1, describe(status)
    assert data["execution_id"] == execution_id
    assert data["status"] == "cancelled"
    assert steps_of(data)["after"]["status"] == "cancelled"
    assert steps_of(data)["after"]["attempts"] == 0


def test_timeout_returns_promptly_while_a_step_still_runs(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    # --timeout means "stop waiting": the command must not sit until the agent ends.
    team = write_team(
        tmp_path,
        "sequential",
        [{"id": "slow", "agent": "sleepy"}],
        agents={"sleepy": agent("sleepy", timeout=120)},
    )
    args = ["run-team", str(team), "--input-json", "60", "--timeout", "0.5"]
    started = time.monotonic()
    result = None
    # The child is killed when this expires.
    with contextlib.suppress(subprocess.TimeoutExpired):
        result = run_manage(args, cli_env, timeout=10)
    assert result is not None, (
        "run-team --timeout 0.5 was still running 10 s later: after reporting the timeout "
        "it waits for the running agent (60 s) before the process exits"
    )
    assert result.returncode == 3, describe(result)
    assert time.monotonic() - started < 10


# --- invalid team files ----------------------------------------------------------------

GOOD_AGENT = "tests.support.agents:echo"


def _team(steps: list[dict[str, Any]], strategy: str = "dag", **agents: Any) -> str:
    import yaml

    data = team_data(strategy, steps)
    data["agents"] = {"echo": {"kind": "python", "target": GOOD_AGENT}, **agents}
    return yaml.safe_dump(data, sort_keys=False)


INVALID_TEAMS = {
    "unknown_agent": (
        _team([{"id": "a", "agent": "ghost"}]),
        ["workflow.steps[0].agent", "ghost"],
    ),
    "cycle": (
        _team(
            [
                {"id": "a", "agent": "echo", "after": ["c"]},
                {"id": "b", "agent": "echo", "after": ["a"]},
                {"id": "c", "agent": "echo", "after": ["b"]},
            ]
        ),
        ["workflow.steps", "cycle"],
    ),
    "malformed_when": (
        _team(
            [
                {"id": "a", "agent": "echo"},
                {"id": "b", "agent": "echo", "when": "steps.a.output.issues > "},
            ]
        ),
        ["workflow.steps[1].when", "malformed"],
    ),
    "when_unknown_step": (
        _team([{"id": "a", "agent": "echo", "when": "steps.nope.status == 'completed'"}]),
        ["workflow.steps[0].when", "nope"],
    ),
    "unimportable_target": (
        _team(
            [{"id": "a", "agent": "missing"}],
            missing={"kind": "python", "target": "no_such_module_xyz.agents:run"},
        ),
        ["agents.missing.target", "no_such_module_xyz"],
    ),
    "missing_attribute": (
        _team(
            [{"id": "a", "agent": "missing"}],
            missing={"kind": "python", "target": "tests.support.agents:no_such_agent"},
        ),
        ["agents.missing.target", "no_such_agent"],
    ),
    "bad_yaml": (
        "name: broken\nagents:\n  echo: {kind: python, target: [unclosed\n",
        ["invalid YAML", "line "],
    ),
    "unknown_field": (
        "name: t\nagents:\n  echo: {kind: python, target: tests.support.agents:echo,"
        " retries: 3}\nworkflow: {strategy: dag, steps: [{id: a, agent: echo}]}\n",
        ["agents.echo.retries", "unknown field"],
    ),
    "bad_strategy": (
        "name: t\nagents:\n  echo: {kind: python, target: tests.support.agents:echo}\n"
        "workflow: {strategy: sideways, steps: [{id: a, agent: echo}]}\n",
        ["workflow.strategy", "sideways"],
    ),
    "not_a_mapping": ("- just\n- a list\n", ["expected a mapping"]),
}


@pytest.mark.parametrize("case", sorted(INVALID_TEAMS))
def test_invalid_team_file_exits_2_with_one_line(
    case: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    text, needles = INVALID_TEAMS[case]
    path = write_text(tmp_path, f"{case}-team.yaml", text)
    result = run_manage(["run-team", str(path), "--input", "x", "--json"], cli_env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_one_error_line(result, f"{case}-team.yaml", *needles)


def test_missing_team_file_exits_2(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "absent-team.yaml"
    result = run_manage(["run-team", str(missing), "--json"], cli_env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_one_error_line(result, "absent-team.yaml", "not found")


def test_invalid_input_json_exits_2(cli_env: dict[str, str]) -> None:
    result = run_manage(["run-team", EXAMPLE_TEAM, "--input-json", "{bad", "--json"], cli_env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_one_error_line(result, "--input-json")


def test_input_and_input_json_together_exit_2(cli_env: dict[str, str]) -> None:
    result = run_manage(
        ["run-team", EXAMPLE_TEAM, "--input", "a", "--input-json", '"b"', "--json"], cli_env
    )
    assert result.returncode == 2, describe(result)
    assert_one_error_line(result, "--input")


def test_no_wait_in_embedded_mode_exits_2(cli_env: dict[str, str]) -> None:
    result = run_manage(["run-team", EXAMPLE_TEAM, "--input", SAMPLE, "--no-wait"], cli_env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_one_error_line(result, "--no-wait")


# --- validate ----------------------------------------------------------------------------


def test_validate_prints_the_plan(cli_env: dict[str, str]) -> None:
    result = run_manage(["validate", EXAMPLE_TEAM], cli_env)
    assert result.returncode == 0, describe(result)
    out = result.stdout
    assert "team 'code-audit' is valid" in out
    assert "strategy: conditional; 5 steps, critical path 3 steps long" in out
    assert "output from: report" in out
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows[cells[1]] = int(cells[0])
    assert rows == {"syntax": 0, "todos": 0, "secrets": 0, "fix": 1, "report": 2}, out


@pytest.mark.parametrize("case", ["cycle", "unknown_agent", "bad_yaml"])
def test_validate_rejects_a_bad_file(case: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    text, needles = INVALID_TEAMS[case]
    path = write_text(tmp_path, f"{case}-team.yaml", text)
    result = run_manage(["validate", str(path)], cli_env)
    assert result.returncode == 2, describe(result)
    assert_one_error_line(result, f"{case}-team.yaml", *needles)


# --- status and stop ---------------------------------------------------------------------


def test_status_json_from_another_process_matches_the_run(cli_env: dict[str, str]) -> None:
    run, data = run_json(["run-team", EXAMPLE_TEAM, "--input", CLEAN], cli_env)
    assert run.returncode == 0, describe(run)
    status, again = run_json(["status", data["execution_id"]], cli_env)
    assert status.returncode == 0, describe(status)
    assert again == data

    human = run_manage(["status", data["execution_id"]], cli_env)
    assert human.returncode == 0, describe(human)
    assert "execution completed" in human.stdout
    assert '"verdict": "clean"' in human.stdout


def test_status_of_a_failed_run_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    team = write_team(tmp_path, "parallel", [{"id": "boom", "agent": "fail_permanent"}])
    run, data = run_json(["run-team", str(team)], cli_env)
    assert run.returncode == 1, describe(run)
    status, again = run_json(["status", data["execution_id"]], cli_env)
    assert status.returncode == 1, describe(status)
    assert again == data


def test_status_of_an_unknown_id_exits_2(cli_env: dict[str, str]) -> None:
    result = run_manage(["status", "00000000-0000-0000-0000-000000000000", "--json"], cli_env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    assert_one_error_line(result, "00000000-0000-0000-0000-000000000000")


def test_stop_a_finished_execution_and_an_unknown_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    team = write_team(tmp_path, "pipeline", [{"id": "one", "agent": "add_one"}])
    run, data = run_json(["run-team", str(team), "--input-json", "1"], cli_env)
    assert run.returncode == 0, describe(run)
    assert data["output"] == 2
    stop = run_manage(["stop", data["execution_id"]], cli_env)
    assert stop.returncode == 0, describe(stop)
    assert "already finished" in stop.stderr
    unknown = run_manage(["stop", "no-such-execution"], cli_env)
    assert unknown.returncode == 2, describe(unknown)
    assert_one_error_line(unknown, "no-such-execution")
