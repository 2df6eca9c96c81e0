"""`manage.py context` and `manage.py messages` as a user runs them, embedded: one team
run that writes, overwrites, retries and sends, then what the commands show of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support.services import describe, run_manage, subprocess_env
from tests.support.teams import FAST_RETRY

pytestmark = pytest.mark.timeout(120)

MEMORY = "tests.support.memory_agents"


def _agent(target: str) -> dict[str, Any]:
    return {"kind": "python", "target": f"{MEMORY}:{target}", "retry": dict(FAST_RETRY)}


TEAM = {
    "name": "context-cli",
    "memory": {"log": "append", "total": "sum", "seen": "merge", "count": "sum"},
    "agents": {
        "contributor": _agent("contributor"),
        "writer": _agent("writes_then_fails_once"),
        "reader": _agent("reads_memory"),
        "listener": _agent("inbox"),
    },
    "workflow": {
        "strategy": "dag",
        "steps": [
            {"id": "first", "agent": "contributor"},
            {"id": "read", "agent": "reader", "after": ["first"]},
            {"id": "second", "agent": "contributor", "after": ["read"]},
            {"id": "write", "agent": "writer", "after": ["second"]},
            {"id": "listen", "agent": "listener", "after": ["write"]},
        ],
    },
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """(environment, execution id) of one completed run of TEAM."""
    directory = tmp_path_factory.mktemp("context-cli")
    env = subprocess_env({"TROUPE_STATE_DIR": str(directory / "state")})
    team = directory / "team.yaml"
    team.write_text(yaml.safe_dump(TEAM, sort_keys=False), encoding="utf-8")
    result = run_manage(["run-team", str(team), "--json"], env)
    assert result.returncode == 0, describe(result)
    yield env, json.loads(result.stdout)["execution_id"]


def json_of(args: list[str], env: dict[str, str]) -> Any:
    result = run_manage([*args, "--json"], env)
    assert result.returncode == 0, describe(result)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not one JSON value:\n{describe(result)}")


def test_context_shows_input_outputs_and_memory_with_versions(
    ran: tuple[dict[str, str], str],
) -> None:
    env, execution_id = ran
    data = json_of(["context", execution_id], env)
    assert data["execution_id"] == execution_id
    assert set(data["outputs"]) == {"first", "read", "second", "write", "listen"}
    # first, second and write each applied one batch; write's first attempt none.
    assert data["memory_version"] == 3
    assert data["memory"]["log"] == ["first", "second"]
    assert data["memory"]["count"] == 1
    keys = {key["key"]: key for key in data["keys"]}
    assert keys["total"]["version"] == 2 and keys["total"]["writer_step"] == "second"
    assert keys["count"]["writer_attempt"] == 2
    assert data["at"] is None

    shown = run_manage(["context", execution_id], env)
    assert shown.returncode == 0, describe(shown)
    assert "memory version 3" in shown.stdout
    assert '["first", "second"]' in shown.stdout


def test_context_at_a_step_shows_what_it_saw(ran: tuple[dict[str, str], str]) -> None:
    env, execution_id = ran
    data = json_of(["context", execution_id, "--at", "read"], env)
    assert data["at"] == {"step": "read", "attempt": 1, "context_version": 1}
    assert data["memory_version"] == 1
    assert data["memory"]["log"] == ["first"]
    assert data["memory"] == json_of(["context", execution_id], env)["outputs"]["read"]
    assert set(data["outputs"]) == {"first"}

    shown = run_manage(["context", execution_id, "--at", "read"], env)
    assert "as step read saw it (attempt 1, memory version 1)" in shown.stdout, describe(shown)


def test_history_lists_every_write_with_its_writer_and_what_it_replaced(
    ran: tuple[dict[str, str], str],
) -> None:
    env, execution_id = ran
    writes = json_of(["context", execution_id, "--history", "last"], env)
    assert [(w["version"], w["memory_version"], w["writer_step"]) for w in writes] == [
        (1, 1, "first"),
        (2, 2, "second"),
    ]
    assert [(w["rule"], w["value"], w["previous"]) for w in writes] == [
        ("last_writer", "first", None),
        ("last_writer", "second", "first"),
    ]
    assert all(w["at"] and w["writer_attempt"] == 1 for w in writes)

    shown = run_manage(["context", execution_id, "--history", "last"], env)
    assert "history of 'last'" in shown.stdout and "second #1" in shown.stdout, describe(shown)


def test_messages_lists_what_was_delivered(ran: tuple[dict[str, str], str]) -> None:
    env, execution_id = ran
    found = json_of(["messages", execution_id], env)
    assert [(m["sender"], m["sender_step"], m["to"], m["content"]) for m in found] == [
        ("writer", "write", "listener", "from attempt 2"),
        ("writer", "write", None, {"attempt": 2}),
    ]
    shown = run_manage(["messages", execution_id], env)
    assert "from attempt 2" in shown.stdout and "everyone" in shown.stdout, describe(shown)


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["context", "no-such-execution"], "error: no execution with id 'no-such-execution'"),
        (["messages", "no-such-execution"], "error: no execution with id 'no-such-execution'"),
        (["context", "EXECUTION", "--at", "nope"], "error: execution EXECUTION has no step 'nope'"),
        (
            ["context", "EXECUTION", "--at", "read", "--history", "log"],
            "error: give --at or --history, not both",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    ran: tuple[dict[str, str], str], args: list[str], line: str
) -> None:
    env, execution_id = ran
    args = [execution_id if arg == "EXECUTION" else arg for arg in args]
    result = run_manage(args, env)
    assert result.returncode == 2, describe(result)
    assert result.stderr.strip() == line.replace("EXECUTION", execution_id), describe(result)
    assert result.stdout == ""
