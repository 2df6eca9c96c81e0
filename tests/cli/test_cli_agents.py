"""`manage.py breakers`, `breakers reset`, `agents`, and the resilience parts of `stop`,
`validate` and `run-team`, run as a user runs them (embedded, own state directory)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.resilience_agents import call_count
from tests.support.services import describe, run_manage

pytestmark = pytest.mark.timeout(60)

TARGETS = "tests.support.resilience_agents"
# The identities of the agents calling TARGETS' `fail` and `ok`.
FAIL_TARGET, OK_TARGET = f"python:{TARGETS}:fail", f"python:{TARGETS}:ok"
ONE_TRY = {"max_attempts": 1, "initial_delay": 0.01, "max_delay": 0.01, "jitter": "none"}


def agent(target: str, **fields: Any) -> dict[str, Any]:
    return {"target": f"{TARGETS}:{target}", "timeout": 10, "retry": ONE_TRY, **fields}


def write_team(directory: Path, data: dict[str, Any], filename: str = "team.yaml") -> Path:
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: "), describe(result)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON value ({exc}):\n{describe(result)}")


def line_with(text: str, needle: str) -> str:
    matches = [line for line in text.splitlines() if needle in line]
    assert len(matches) == 1, text
    return matches[0]


# --- before anything ran ------------------------------------------------------------------------


def test_breakers_and_agents_before_any_run(cli_env: dict[str, str]) -> None:
    plain = run_manage(["breakers"], cli_env)
    assert plain.returncode == 0, describe(plain)
    assert "no breakers yet" in plain.stdout

    as_json = run_manage(["breakers", "--json"], cli_env)
    assert as_json.returncode == 0, describe(as_json)
    assert json_of(as_json) == []

    agents = run_manage(["agents"], cli_env)
    assert agents.returncode == 0, describe(agents)
    assert "no agents yet" in agents.stdout
    assert json_of(run_manage(["agents", "--json"], cli_env)) == []


# --- a breaker opens, is shown, warned about, and reset ------------------------------------


def test_open_breaker_is_listed_warned_about_and_reset(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    team = write_team(
        tmp_path,
        {
            "name": "fragile",
            "agents": {
                "flaky": agent("fail", breaker={"failure_threshold": 1, "reset_timeout": 600}),
                "steady": agent("ok"),
            },
            "workflow": {
                "strategy": "parallel",
                "steps": [{"id": "a", "agent": "flaky"}, {"id": "b", "agent": "steady"}],
            },
        },
    )
    input_args = ["--input-json", json.dumps({"dir": str(tmp_path)})]

    first = run_manage(["run-team", str(team), *input_args, "--json"], cli_env)
    assert first.returncode == 1, describe(first)
    assert "warning" not in first.stderr
    assert call_count(tmp_path, "flaky") == 1

    # breakers: the table and the JSON.
    table = run_manage(["breakers"], cli_env)
    assert table.returncode == 0, describe(table)
    row = line_with(table.stdout, "flaky")
    assert "open" in row
    assert "RuntimeError" in row
    assert "steady" not in table.stdout  # it never failed: no breaker row

    # The breaker is that of what `flaky` calls, and says who calls it.
    listed = json_of(run_manage(["breakers", "--json"], cli_env))
    assert [entry["identity"] for entry in listed] == [FAIL_TARGET]
    [entry] = listed
    assert entry["used_by"] == [{"team": "fragile", "agent": "flaky"}]
    assert entry["state"] == "open"
    assert entry["failures"] == 1
    assert entry["opened_at"] and entry["next_trial_at"]
    assert entry["next_trial_at"] > entry["opened_at"]
    assert entry["last_error"].startswith("RuntimeError: flaky is down")

    # agents: what registered agents call, with their success rate and breaker state.
    listed = {a["identity"]: a for a in json_of(run_manage(["agents", "--json"], cli_env))}
    assert set(listed) == {FAIL_TARGET, OK_TARGET}
    agents = {entry["used_by"][0]["agent"]: entry for entry in listed.values()}
    assert agents["flaky"]["used_by"] == [{"team": "fragile", "agent": "flaky"}]
    assert agents["steady"]["used_by"] == [{"team": "fragile", "agent": "steady"}]
    assert agents["flaky"]["breaker"] == "open"
    assert agents["flaky"]["recent_calls"] == 1
    assert agents["flaky"]["success_rate"] == 0.0
    assert agents["flaky"]["health"] == "no health check"
    assert agents["steady"]["breaker"] == "closed"
    assert agents["steady"]["recent_calls"] == 1
    assert agents["steady"]["success_rate"] == 1.0
    assert agents["steady"]["health"] == "no health check"
    assert agents["steady"]["last_heartbeat"] is None

    agents_table = run_manage(["agents"], cli_env)
    assert agents_table.returncode == 0, describe(agents_table)
    flaky_row = line_with(agents_table.stdout, "flaky")
    assert "open" in flaky_row and "0%" in flaky_row
    steady_row = line_with(agents_table.stdout, "steady")
    assert "closed" in steady_row and "100%" in steady_row

    # run-team warns about the open breaker, and the agent is not called.
    second = run_manage(["run-team", str(team), *input_args, "--json"], cli_env)
    assert second.returncode == 1, describe(second)
    warning = line_with(second.stderr, "warning")
    assert warning.startswith("warning: agent 'flaky' circuit breaker is open")
    assert "RuntimeError" in warning
    steps = {step["id"]: step for step in json_of(second)["steps"]}
    assert steps["a"]["error"].startswith("CircuitOpen")
    assert steps["b"]["status"] == "completed"
    assert call_count(tmp_path, "flaky") == 1

    # breakers reset closes it; the next run calls the agent again, without a warning.
    reset = run_manage(["breakers", "reset", "flaky"], cli_env)
    assert reset.returncode == 0, describe(reset)
    assert "closed" in reset.stdout
    [entry] = json_of(run_manage(["breakers", "--json"], cli_env))
    assert (entry["state"], entry["failures"]) == ("closed", 0)

    third = run_manage(["run-team", str(team), *input_args, "--json"], cli_env)
    assert third.returncode == 1, describe(third)
    assert "warning" not in third.stderr
    steps = {step["id"]: step for step in json_of(third)["steps"]}
    assert steps["a"]["error"].startswith("RuntimeError")
    assert call_count(tmp_path, "flaky") == 2


# --- identities: what agents call, and who calls it ---------------------------------------


def seed_two_teams(state_dir: Path) -> Any:
    """Team alpha's `e` and team beta's `scan` call the same target; beta's `e` calls
    another. Alpha's `e` failed once and beta's `scan` succeeded once; the shared
    target's breaker is open. Returns the BreakerStore of the CLI's state database."""
    from orchestration.store.agent_registry import AgentRegistry
    from orchestration.store.breakers import BreakerStore
    from orchestration.store.database import ensure_schema
    from orchestration.store.models import AttemptRow, ExecutionRow
    from orchestration.store.repository import Store, now

    url = f"sqlite:///{(state_dir / 'troupe.db').resolve()}"
    ensure_schema(url, auto_upgrade=True)
    store = Store(url)
    registry = AgentRegistry(store)
    registry.register_agents("alpha", {"e": agent("fail"), "steady": agent("ok")})
    registry.register_agents("beta", {"scan": agent("fail"), "e": agent("ok")})
    stamp = now()
    with store.session() as session, session.begin():
        for team in ("alpha", "beta"):
            session.add(
                ExecutionRow(
                    id=team,
                    team=team,
                    strategy="parallel",
                    spec={},
                    status="failed",
                    created_at=stamp,
                )
            )
        session.flush()  # the executions first: attempts refer to them
        session.add(
            AttemptRow(
                execution_id="alpha",
                step_id="a",
                attempt=1,
                agent="e",
                started_at=stamp,
                outcome="error",
            )
        )
        session.add(
            AttemptRow(
                execution_id="beta",
                step_id="b",
                attempt=1,
                agent="scan",
                started_at=stamp,
                outcome="success",
            )
        )
    breakers = BreakerStore(store)
    open_breaker(breakers, FAIL_TARGET)
    return breakers


def open_breaker(breakers: Any, identity: str) -> None:
    from orchestration.spec import BreakerPolicy

    breakers.force_open(identity, BreakerPolicy(reset_timeout=600), "RuntimeError: down")


def test_breakers_and_agents_show_identities_with_their_names_and_teams(
    cli_env: dict[str, str],
) -> None:
    seed_two_teams(Path(cli_env["TROUPE_STATE_DIR"]))

    [entry] = json_of(run_manage(["breakers", "--json"], cli_env))
    assert entry["identity"] == FAIL_TARGET
    assert entry["used_by"] == [{"team": "alpha", "agent": "e"}, {"team": "beta", "agent": "scan"}]
    assert entry["state"] == "open"
    table = run_manage(["breakers"], cli_env)
    assert table.returncode == 0, describe(table)
    row = line_with(table.stdout, FAIL_TARGET)
    assert "alpha/e, beta/scan" in row and "open" in row

    listed = {a["identity"]: a for a in json_of(run_manage(["agents", "--json"], cli_env))}
    assert set(listed) == {FAIL_TARGET, OK_TARGET}
    shared = listed[FAIL_TARGET]
    assert shared["used_by"] == entry["used_by"]
    assert shared["breaker"] == "open"
    # One failure of alpha's `e` and one success of beta's `scan`: one target, 50 %.
    assert (shared["recent_calls"], shared["success_rate"]) == (2, 0.5)
    other = listed[OK_TARGET]
    assert other["used_by"] == [
        {"team": "alpha", "agent": "steady"},
        {"team": "beta", "agent": "e"},
    ]
    assert (other["breaker"], other["recent_calls"]) == ("closed", 0)
    agents_table = run_manage(["agents"], cli_env)
    assert agents_table.returncode == 0, describe(agents_table)
    row = line_with(agents_table.stdout, FAIL_TARGET)
    assert "alpha/e, beta/scan" in row and "open" in row and "50%" in row
    assert "alpha/steady, beta/e" in line_with(agents_table.stdout, OK_TARGET)


def test_reset_takes_an_identity_or_a_name_and_a_name_resets_all_it_calls(
    cli_env: dict[str, str],
) -> None:
    breakers = seed_two_teams(Path(cli_env["TROUPE_STATE_DIR"]))
    open_breaker(breakers, OK_TARGET)

    def states() -> dict[str, str]:
        listed = json_of(run_manage(["breakers", "--json"], cli_env))
        return {entry["identity"]: entry["state"] for entry in listed}

    # `e` is alpha's (the failing target) and beta's (the other): both close.
    by_name = run_manage(["breakers", "reset", "e"], cli_env)
    assert by_name.returncode == 0, describe(by_name)
    assert FAIL_TARGET in by_name.stdout and OK_TARGET in by_name.stdout
    assert "2 different things" in by_name.stdout
    assert states() == {FAIL_TARGET: "closed", OK_TARGET: "closed"}

    open_breaker(breakers, FAIL_TARGET)
    by_identity = run_manage(["breakers", "reset", FAIL_TARGET], cli_env)
    assert by_identity.returncode == 0, describe(by_identity)
    assert "closed" in by_identity.stdout
    assert states() == {FAIL_TARGET: "closed", OK_TARGET: "closed"}

    # `scan` calls only the failing target: the other breaker is left alone.
    open_breaker(breakers, FAIL_TARGET)
    open_breaker(breakers, OK_TARGET)
    by_scan = run_manage(["breakers", "reset", "scan"], cli_env)
    assert by_scan.returncode == 0, describe(by_scan)
    assert states() == {FAIL_TARGET: "closed", OK_TARGET: "open"}


def test_reset_of_a_name_whose_target_has_no_breaker_exits_2(cli_env: dict[str, str]) -> None:
    seed_two_teams(Path(cli_env["TROUPE_STATE_DIR"]))
    result = run_manage(["breakers", "reset", "steady"], cli_env)
    assert result.returncode == 2, describe(result)
    one_error_line(result, "steady", OK_TARGET)


def test_reset_of_an_unknown_agent_exits_2(cli_env: dict[str, str]) -> None:
    result = run_manage(["breakers", "reset", "nobody"], cli_env)
    assert result.returncode == 2, describe(result)
    one_error_line(result, "nobody")
    assert result.stdout == ""


def test_stop_of_an_unknown_execution_exits_2(cli_env: dict[str, str]) -> None:
    result = run_manage(["stop", "00000000-0000-0000-0000-000000000000"], cli_env)
    assert result.returncode == 2, describe(result)
    one_error_line(result, "00000000-0000-0000-0000-000000000000")


# --- validate ----------------------------------------------------------------------------------


def _team_with(primary: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "fallbacks",
        "agents": {"primary": primary, "spare": agent("ok")},
        "workflow": {"strategy": "sequential", "steps": [{"id": "s", "agent": "primary"}]},
    }


def test_validate_rejects_a_fallback_naming_an_unknown_agent(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_team(tmp_path, _team_with(agent("ok", fallback="ghost")))
    result = run_manage(["validate", str(path)], cli_env)
    assert result.returncode == 2, describe(result)
    one_error_line(result, str(path), "agents.primary.fallback", "ghost")


def test_validate_rejects_when_open_fallback_without_a_fallback(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = write_team(tmp_path, _team_with(agent("ok", breaker={"when_open": "fallback"})))
    result = run_manage(["validate", str(path)], cli_env)
    assert result.returncode == 2, describe(result)
    one_error_line(result, str(path), "when_open", "fallback")


def test_validate_accepts_a_declared_fallback(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = write_team(
        tmp_path,
        _team_with(agent("ok", fallback="spare", breaker={"when_open": "fallback"})),
    )
    result = run_manage(["validate", str(path)], cli_env)
    assert result.returncode == 0, describe(result)
    assert "is valid" in result.stdout
