"""The operator's commands about the past, as a user runs them: executions, logs, audit
export, metrics, report and purge, on a history seeded in the state database (embedded
mode, SQLite), and what each says to bad arguments."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.cli_runs import json_of, one_error_line, run_many
from tests.support.history_seed import (
    FLAPPING_BREAKER,
    LONG_OUTPUT,
    History,
    seed_history,
    seed_old_and_new,
)
from tests.support.services import describe, subprocess_env

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "00000000-0000-0000-0000-000000000000"


def state_url(state: Path) -> str:
    return f"sqlite:///{(state / 'troupe.db').resolve()}"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], History]]:
    state = tmp_path_factory.mktemp("history-state")
    history = seed_history(state_url(state))
    yield subprocess_env({"TROUPE_STATE_DIR": str(state)}), history


def test_executions_lists_the_latest_first_and_filters(
    seeded: tuple[dict[str, str], History],
) -> None:
    env, history = seeded
    everything, filtered = run_many(
        [
            ["executions", "--json", "--limit", "100"],
            ["executions", "--team", "shop", "--status", "failed", "--limit", "2"],
        ],
        env,
    )
    listed = json_of(everything)
    assert len(listed) == len(history.executions)
    created = [line["created_at"] for line in listed]
    assert created == sorted(created, reverse=True)
    logged = next(line for line in listed if line["execution_id"] == history.logged)
    assert logged["team"] == "writers" and logged["status"] == "completed"
    assert (logged["steps"], logged["steps_completed"]) == (3, 2)
    assert (logged["tokens_in"], logged["tokens_out"], logged["cost_usd"]) == (1200, 300, 0.0042)
    assert logged["duration_ms"] == 1000
    retry = next(line for line in listed if line["retry_of"] is not None)
    assert retry["team"] == "shop" and retry["status"] == "completed"

    assert filtered.returncode == 0, describe(filtered)
    shown = [line for line in filtered.stdout.splitlines() if "shop" in line]
    assert len(shown) == 2 and all("failed" in line for line in shown), filtered.stdout
    assert "completed" not in filtered.stdout


def test_logs_show_every_attempt_with_its_wait_usage_tools_and_output(
    seeded: tuple[dict[str, str], History],
) -> None:
    env, history = seeded
    short, full, as_json = run_many(
        [
            ["logs", history.logged],
            ["logs", history.logged, "--full"],
            ["logs", history.logged, "--json"],
        ],
        env,
    )
    log = json_of(as_json)
    assert (log["execution_id"], log["team"], log["status"]) == (
        history.logged,
        "writers",
        "completed",
    )
    attempts = log["attempts"]
    assert [(a["step"], a["attempt"], a["outcome"]) for a in attempts] == [
        ("plan", 1, "error"),
        ("plan", 2, "success"),
        ("write", 1, "success"),
    ]
    first, second, write = attempts
    assert first["error"] == "TransientAgentError: busy, try later"
    assert first["produced_output"] is False and first["output"] is None
    # Waits: plan#1 from the execution's creation, plan#2 from plan#1's end (30 ms),
    # write from plan's end (100 ms).
    assert (first["waited_ms"], second["waited_ms"], write["waited_ms"]) == (10, 50, 30)
    assert second["endpoint"] == "http://llm.internal/v1" and second["model"] == "gpt-test"
    assert second["usage"]["tokens_in"] == 1200
    assert second["tool_calls"][0]["tool"] == "lookup"
    assert second["output"] == {"outline": [1, 2]} and second["produced_output"]
    assert write["output"] == LONG_OUTPUT and write["worker"] == "worker-1@host"
    [review] = log["without_attempts"]
    assert review["step"] == "review" and review["status"] == "skipped"
    assert "condition false" in review["reason"]

    assert short.returncode == 0, describe(short)
    text = short.stdout
    for needle in (
        "plan #1  agent planner  error in 20 ms, waited 10 ms  on worker-1@host",
        "✗ TransientAgentError: busy, try later",
        "endpoint http://llm.internal/v1, model gpt-test, tokens 1,200 in / 300 out, cost 0.004200",
        "↳ lookup(",
        '→ output: {"outline": [1, 2]}',
        "review  skipped without a call: condition false",
    ):
        assert needle in text, f"{needle!r} not in:\n{text}"
    # Short: a long output and a tool's long arguments are cut; --full prints them whole.
    assert LONG_OUTPUT not in text and "q" * 300 not in text
    assert full.returncode == 0, describe(full)
    assert LONG_OUTPUT in full.stdout and "q" * 300 in full.stdout


def test_audit_export_writes_one_record_per_attempt_as_json_lines_or_csv(
    seeded: tuple[dict[str, str], History],
) -> None:
    env, history = seeded
    since = history.logged_at.isoformat()
    until = (history.logged_at + timedelta(seconds=1)).isoformat()
    window, whole_csv = run_many(
        [
            ["audit", "export", "--since", since, "--until", until],
            ["audit", "export", "--format", "csv"],
        ],
        env,
    )
    assert window.returncode == 0, describe(window)
    records = [json.loads(line) for line in window.stdout.splitlines()]
    assert [(r["step"], r["attempt"]) for r in records] == [("plan", 1), ("plan", 2), ("write", 1)]
    assert {r["execution_id"] for r in records} == {history.logged}
    plan = records[1]
    assert (plan["team"], plan["tokens_in"], plan["cost_usd"], plan["model"]) == (
        "writers",
        1200,
        0.0042,
        "gpt-test",
    )
    assert plan["tool_calls"][0]["tool"] == "lookup"

    assert whole_csv.returncode == 0, describe(whole_csv)
    rows = list(csv.DictReader(io.StringIO(whole_csv.stdout)))
    assert len(rows) == history.attempts
    lookup = next(row for row in rows if row["tool_calls"])
    assert json.loads(lookup["tool_calls"])[0]["tool"] == "lookup"
    assert lookup["endpoint"] == "http://llm.internal/v1"


def test_metrics_per_agent_and_endpoint(seeded: tuple[dict[str, str], History]) -> None:
    env, _ = seeded
    as_json, table = run_many(
        [["metrics", "--since", "3h", "--json"], ["metrics", "--agent", "summariser"]],
        env,
    )
    rows = {(row["team"], row["agent"], row["endpoint"]): row for row in json_of(as_json)}
    summariser = rows[("digest", "summariser", None)]
    assert (summariser["total"], summariser["succeeded"], summariser["failed"]) == (23, 20, 3)
    assert (summariser["timeouts"], summariser["retried"], summariser["rejected"]) == (3, 3, 0)
    assert summariser["success_rate"] == round(20 / 23, 4)
    # Ten of 100 ms, ten of 900 ms, three of 30 s: the median is 900 ms.
    assert summariser["p50_ms"] == 900.0
    assert summariser["breaker"] == "closed"
    planner = rows[("writers", "planner", "http://llm.internal/v1")]
    assert (planner["tokens_in"], planner["tokens_out"], planner["cost_usd"]) == (1200, 300, 0.0042)
    payer = rows[("payments", "payer", None)]
    assert (payer["total"], payer["failed"], payer["success_rate"]) == (20, 5, 0.75)

    assert table.returncode == 0, describe(table)
    lines = [line for line in table.stdout.splitlines() if "summariser" in line]
    assert len(lines) == 1 and "digest/summariser" in lines[0], table.stdout
    assert "payer" not in table.stdout


def test_report_finds_each_seeded_pattern_with_evidence_and_advice(
    seeded: tuple[dict[str, str], History],
) -> None:
    env, _ = seeded
    as_json, text = run_many([["report", "--since", "1h", "--json"], ["report"]], env)
    report = json_of(as_json)
    found = {(p["kind"], p["subject"]): p for p in report["patterns"]}
    expected = {
        ("error_cluster", "RuntimeError: item <n> not found"),
        ("error_cluster", "ValueError: card <n> declined"),
        ("failure_rate_rose", "payer"),
        ("duration_rose", "summariser"),
        ("breaker_flapping", FLAPPING_BREAKER),
        ("step_timeouts", "digest/summarise"),
        ("budget_exceeded", "research"),
    }
    assert expected <= set(found), sorted(found)
    cluster = found[("error_cluster", "RuntimeError: item <n> not found")]
    assert cluster["evidence"]["count"] == 4 and cluster["evidence"]["steps"] == {"shop/fetch": 4}
    assert found[("breaker_flapping", FLAPPING_BREAKER)]["evidence"]["opened"] == 3
    assert found[("budget_exceeded", "research")]["evidence"]["executions"] == 2
    rose = found[("failure_rate_rose", "payer")]["evidence"]
    assert (rose["before"]["failure_rate"], rose["now"]["failure_rate"]) == (0.0, 0.5)
    assert all(p["recommendation"] for p in report["patterns"])

    assert text.returncode == 0, describe(text)
    assert (
        "[breaker_flapping] the breaker of 'python:shop.agents:pay' opened 3 times" in text.stdout
    )
    assert "→ Raise team 'research''s budget" in text.stdout


def test_purge_deletes_only_finished_executions_past_the_age(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ids = seed_old_and_new(state_url(state))
    env = subprocess_env({"TROUPE_STATE_DIR": str(state)})

    [dry] = run_many([["purge", "--older-than", "30d", "--dry-run", "--json"]], env)
    counted = json_of(dry)
    assert counted["dry_run"] is True
    assert (counted["executions"], counted["steps"], counted["attempts"]) == (2, 2, 2)
    assert counted["heartbeats"] == 1

    [done] = run_many([["purge", "--older-than", "30d"]], env)
    assert done.returncode == 0, describe(done)
    assert "deleted 2 execution(s)" in done.stdout and "(2 steps, 2 attempts)" in done.stdout

    [left] = run_many([["executions", "--json"]], env)
    assert {line["execution_id"] for line in json_of(left)} == {ids["old_running"], ids["recent"]}


def test_bad_arguments_get_one_line_and_exit_2(seeded: tuple[dict[str, str], History]) -> None:
    env, _ = seeded
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["executions", "--since", "last tuesday"], ("--since", "neither a duration")),
        (["logs", UNKNOWN], (f"no execution with id {UNKNOWN!r}",)),
        (["audit", "export", "--format", "xml"], ("--format", "xml")),
        (["audit", "export", "--since", "1h", "--until", "2h"], ("--since must be before",)),
        (["report", "--since", "2999-01-01"], ("--since must be in the past",)),
        (["purge"], ("--older-than",)),
    ]
    results = run_many([args for args, _needles in cases], env)
    for (_args, needles), result in zip(cases, results, strict=True):
        one_error_line(result, 2, *needles)
