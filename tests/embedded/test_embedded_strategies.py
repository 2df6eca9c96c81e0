"""End to end in embedded mode: the Python API, an in-process worker, SQLite state.

Every team here uses the deterministic agents of tests.support.agents, so each assertion
is about what the orchestration did: which steps ran, in which order, and what each of
them was shown.
"""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

import pytest

from orchestration import ExecutionReport, PermanentAgentError, StepReport, Team
from tests.support.teams import agent, team_yaml

pytestmark = pytest.mark.timeout(30)


def run(strategy: str, steps: list[dict[str, Any]], input: Any = None, **kwargs: Any):
    team = Team.from_yaml(team_yaml(strategy, steps, **kwargs), source="test-team.yaml")
    return team.run(input, timeout=20)


def by_id(report: ExecutionReport) -> dict[str, StepReport]:
    return {step.id: step for step in report.steps}


def outputs_of(runtime: Any, report: ExecutionReport) -> dict[str, Any]:
    """Every step's recorded output, read from the state store."""
    return {row.step_id: row.output for row in runtime.executions.steps(report.execution_id)}


def assert_all_completed(report: ExecutionReport) -> None:
    assert report.status == "completed", report
    for step in report.steps:
        assert step.status == "completed", step
        assert step.attempts == 1, step
        assert step.error is None, step
        assert step.duration_ms is not None and step.duration_ms >= 0, step


# --- the five strategies ---------------------------------------------------------------


def test_sequential_each_step_sees_every_earlier_output(runtime: Any) -> None:
    report = run(
        "sequential",
        [
            {"id": "first", "task": "one"},
            {"id": "second", "task": "two"},
            {"id": "third", "task": "three"},
        ],
        input="hello",
    )
    assert_all_completed(report)
    assert [s.id for s in report.steps] == ["first", "second", "third"]
    seen = outputs_of(runtime, report)
    assert seen["first"] == {
        "step_id": "first",
        "input": "hello",
        "outputs": [],
        "task": "one",
        "attempt": 1,
    }
    assert seen["second"]["outputs"] == ["first"]
    assert seen["third"]["outputs"] == ["first", "second"]
    # Not a pipeline: every step gets the execution's input.
    assert {value["input"] for value in seen.values()} == {"hello"}
    # The output of a sequential team is its last step's.
    assert report.output == seen["third"]
    assert report.output["task"] == "three"


def test_sequential_steps_run_one_after_another(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": f"s{i}", "agent": "sleepy"} for i in range(3)],
        input=0.05,
    )
    assert_all_completed(report)
    rows = runtime.executions.attempts(report.execution_id)
    assert [row.step_id for row in rows] == ["s0", "s1", "s2"]
    for earlier, later in itertools.pairwise(rows):
        assert earlier.finished_at <= later.started_at


def test_pipeline_passes_each_output_on_as_the_next_input(runtime: Any) -> None:
    report = run(
        "pipeline",
        [
            {"id": "one", "agent": "add_one"},
            {"id": "two", "agent": "add_one"},
            {"id": "three", "agent": "add_one"},
        ],
        input=1,
    )
    assert_all_completed(report)
    assert report.output == 4
    assert outputs_of(runtime, report) == {"one": 2, "two": 3, "three": 4}


def test_pipeline_stage_sees_previous_output_as_input_and_earlier_outputs(runtime: Any) -> None:
    report = run(
        "pipeline",
        [
            {"id": "one", "agent": "add_one"},
            {"id": "two", "agent": "add_one"},
            {"id": "three", "agent": "add_one"},
            {"id": "look", "agent": "echo", "task": "inspect"},
        ],
        input=1,
    )
    assert_all_completed(report)
    assert report.output == {
        "step_id": "look",
        "input": 4,
        "outputs": ["one", "three", "two"],
        "task": "inspect",
        "attempt": 1,
    }


def test_parallel_output_maps_every_step_and_all_saw_the_same_input(runtime: Any) -> None:
    ids = ["alpha", "beta", "gamma", "delta"]
    report = run("parallel", [{"id": sid, "task": f"do {sid}"} for sid in ids], input={"x": 1})
    assert_all_completed(report)
    assert isinstance(report.output, dict)
    assert sorted(report.output) == sorted(ids)
    for sid in ids:
        assert report.output[sid] == {
            "step_id": sid,
            "input": {"x": 1},
            "outputs": [],
            "task": f"do {sid}",
            "attempt": 1,
        }


def test_parallel_steps_overlap_in_time(runtime: Any) -> None:
    # The embedded worker has two threads: two 0.3 s steps out of four must overlap.
    report = run("parallel", [{"id": f"p{i}", "agent": "sleepy"} for i in range(4)], input=0.3)
    assert_all_completed(report)
    rows = runtime.executions.attempts(report.execution_id)
    assert len(rows) == 4
    overlapping = [
        (a.step_id, b.step_id)
        for a in rows
        for b in rows
        if a.step_id < b.step_id and a.started_at < b.finished_at and b.started_at < a.finished_at
    ]
    assert overlapping, [(r.step_id, r.started_at, r.finished_at) for r in rows]


def test_dag_diamond_order_and_visibility(runtime: Any) -> None:
    report = run(
        "dag",
        [
            {"id": "top", "task": "start"},
            {"id": "left", "after": ["top"]},
            {"id": "right", "after": ["top"]},
            {"id": "bottom", "after": ["left", "right"]},
        ],
        input="diamond",
    )
    assert_all_completed(report)
    seen = outputs_of(runtime, report)
    assert seen["top"]["outputs"] == []
    # Siblings run independently: neither sees the other.
    assert seen["left"]["outputs"] == ["top"]
    assert seen["right"]["outputs"] == ["top"]
    assert seen["bottom"]["outputs"] == ["left", "right", "top"]
    # One sink: its output is the execution's.
    assert report.output == seen["bottom"]

    rows = {row.step_id: row for row in runtime.executions.attempts(report.execution_id)}
    assert rows["top"].finished_at <= rows["left"].started_at
    assert rows["top"].finished_at <= rows["right"].started_at
    assert rows["left"].finished_at <= rows["bottom"].started_at
    assert rows["right"].finished_at <= rows["bottom"].started_at


def test_dag_with_several_sinks_outputs_each_of_them(runtime: Any) -> None:
    report = run(
        "dag",
        [
            {"id": "root", "agent": "add_one"},
            {"id": "a", "agent": "echo", "after": ["root"]},
            {"id": "b", "agent": "noop", "after": ["root"]},
        ],
        input=41,
    )
    assert_all_completed(report)
    assert report.output == {
        "a": {"step_id": "a", "input": 41, "outputs": ["root"], "task": None, "attempt": 1},
        "b": None,
    }


@pytest.mark.parametrize(
    ("issues", "taken", "untaken"),
    [(3, "fix", "celebrate"), (0, "celebrate", "fix")],
)
def test_conditional_takes_one_branch_and_the_join_still_runs(
    runtime: Any, issues: int, taken: str, untaken: str
) -> None:
    report = run(
        "conditional",
        [
            {"id": "scan", "agent": "count_issues"},
            {"id": "fix", "after": ["scan"], "when": "steps.scan.output.issues > 0"},
            {"id": "celebrate", "after": ["scan"], "when": "steps.scan.output.issues == 0"},
            {"id": "summary", "after": ["fix", "celebrate"]},
        ],
        input={"scan": issues},
    )
    assert report.status == "completed", report
    steps = by_id(report)
    assert steps["scan"].status == "completed"
    assert steps[taken].status == "completed"
    assert steps[taken].attempts == 1
    assert steps[untaken].status == "skipped"
    assert steps[untaken].attempts == 0
    assert steps[untaken].error is None
    assert untaken in report.reasons
    assert steps["summary"].status == "completed"

    seen = outputs_of(runtime, report)
    assert seen["scan"] == {"issues": issues}
    assert seen[untaken] is None
    # The join sees what ran before it, and not the branch that did not run.
    assert seen["summary"]["outputs"] == sorted(["scan", taken])
    assert report.output == seen["summary"]
    # The agent of the untaken branch was never called.
    assert untaken not in {row.step_id for row in runtime.executions.attempts(report.execution_id)}


def test_conditional_condition_on_the_input(runtime: Any) -> None:
    steps = [
        {"id": "fast", "when": "input.mode == 'fast'"},
        {"id": "thorough", "when": "input.mode == 'thorough'"},
    ]
    report = run("conditional", steps, input={"mode": "thorough"})
    assert report.status == "completed", report
    assert by_id(report)["fast"].status == "skipped"
    assert by_id(report)["thorough"].status == "completed"
    # An untaken end step is not part of the output.
    assert list(report.output) == ["thorough"]


# --- failures and skips ------------------------------------------------------------------


def test_failing_branch_skips_its_dependents_and_spares_the_other_branch(runtime: Any) -> None:
    report = run(
        "dag",
        [
            {"id": "root"},
            {"id": "bad", "agent": "fail_permanent", "after": ["root"]},
            {"id": "needs_bad", "after": ["bad"]},
            {"id": "needs_needs_bad", "after": ["needs_bad"]},
            {"id": "good", "after": ["root"]},
            {"id": "good_too", "after": ["good"]},
        ],
        input="x",
    )
    assert report.status == "failed", report
    assert report.error is not None and "bad" in report.error
    steps = by_id(report)
    assert steps["root"].status == "completed"
    assert steps["bad"].status == "failed"
    assert steps["bad"].attempts == 1
    assert steps["bad"].error == "PermanentAgentError: bad cannot succeed"

    assert steps["needs_bad"].status == "skipped"
    assert steps["needs_bad"].attempts == 0
    assert steps["needs_bad"].error is not None
    assert "'bad'" in steps["needs_bad"].error
    assert steps["needs_needs_bad"].status == "skipped"
    assert steps["needs_needs_bad"].error is not None
    assert "'needs_bad'" in steps["needs_needs_bad"].error

    assert steps["good"].status == "completed"
    assert steps["good_too"].status == "completed"
    # Of the two end steps only the one that ran gives output.
    assert list(report.output) == ["good_too"]
    called = {row.step_id for row in runtime.executions.attempts(report.execution_id)}
    assert called == {"root", "bad", "good", "good_too"}


def test_failing_parallel_step_fails_the_execution_but_not_its_siblings(runtime: Any) -> None:
    report = run(
        "parallel",
        [{"id": "ok1"}, {"id": "broken", "agent": "fail_permanent"}, {"id": "ok2"}],
        input=7,
    )
    assert report.status == "failed"
    steps = by_id(report)
    assert steps["ok1"].status == steps["ok2"].status == "completed"
    assert steps["broken"].status == "failed"
    assert report.output["broken"] is None
    assert report.output["ok1"]["input"] == 7


def test_step_skipped_by_its_condition_is_not_a_failure(runtime: Any) -> None:
    report = run(
        "sequential",
        [
            {"id": "a"},
            {"id": "b", "when": "input.run_b"},
            {"id": "c"},
        ],
        input={"run_b": False},
    )
    assert report.status == "completed", report
    assert report.error is None
    steps = by_id(report)
    assert steps["b"].status == "skipped"
    assert steps["b"].error is None
    assert steps["b"].attempts == 0
    assert "b" in report.reasons
    assert steps["a"].status == steps["c"].status == "completed"
    seen = outputs_of(runtime, report)
    assert seen["c"]["outputs"] == ["a"]
    assert report.output == seen["c"]


def test_condition_that_cannot_be_evaluated_skips_the_step(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": "a"}, {"id": "b", "when": "input.missing_field > 1"}, {"id": "c"}],
        input={},
    )
    assert report.status == "completed", report
    assert by_id(report)["b"].status == "skipped"
    assert "could not be evaluated" in report.reasons["b"]
    assert by_id(report)["c"].status == "completed"


def test_pipeline_skipped_stage_passes_the_value_along(runtime: Any) -> None:
    report = run(
        "pipeline",
        [
            {"id": "one", "agent": "add_one"},
            {"id": "two", "agent": "add_one", "when": "input > 100"},
            {"id": "three", "agent": "add_one"},
        ],
        input=1,
    )
    assert report.status == "completed", report
    assert by_id(report)["two"].status == "skipped"
    assert report.output == 3


# --- retries and the audit trail ---------------------------------------------------------


def test_flaky_agent_succeeds_on_its_third_attempt(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": "flaky", "agent": "flaky_until_third"}],
        agents={"flaky_until_third": agent("flaky_until_third", max_attempts=3)},
    )
    assert report.status == "completed", report
    step = by_id(report)["flaky"]
    assert step.status == "completed"
    assert step.attempts == 3
    assert step.error is None
    assert report.output == {"attempt": 3}


def test_permanent_error_is_not_retried(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": "doomed", "agent": "fail_permanent"}],
        agents={"fail_permanent": agent("fail_permanent", max_attempts=5)},
    )
    assert report.status == "failed"
    step = by_id(report)["doomed"]
    assert step.status == "failed"
    assert step.attempts == 1
    assert step.error == "PermanentAgentError: doomed cannot succeed"
    assert len(runtime.executions.attempts(report.execution_id)) == 1


def test_failing_agent_exhausts_exactly_max_attempts(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": "always", "agent": "fail_always"}, {"id": "after"}],
        agents={"fail_always": agent("fail_always", max_attempts=4)},
    )
    assert report.status == "failed"
    steps = by_id(report)
    assert steps["always"].status == "failed"
    assert steps["always"].attempts == 4
    assert steps["always"].error == "RuntimeError: always always fails (attempt 4)"
    assert steps["after"].status == "skipped"
    assert steps["after"].error is not None and "'always'" in steps["after"].error
    rows = runtime.executions.attempts(report.execution_id, "always")
    assert [row.attempt for row in rows] == [1, 2, 3, 4]
    assert {row.outcome for row in rows} == {"error"}


def test_attempt_over_its_time_limit_is_recorded_as_timeout(runtime: Any) -> None:
    report = run(
        "sequential",
        [{"id": "slow", "agent": "sleepy"}],
        input=1.0,
        agents={"sleepy": agent("sleepy", timeout=0.2, max_attempts=1)},
    )
    assert report.status == "failed"
    step = by_id(report)["slow"]
    assert step.attempts == 1
    assert step.error is not None and step.error.startswith("AttemptTimeout:")
    [row] = runtime.executions.attempts(report.execution_id)
    assert row.outcome == "timeout"
    assert row.error_type == "AttemptTimeout"


def test_audit_trail_has_one_row_per_attempt(runtime: Any) -> None:
    report = run(
        "sequential",
        [
            {"id": "flaky", "agent": "flaky_until_third"},
            {"id": "skip_me", "when": "input == 'never'"},
            {"id": "last", "agent": "noop"},
        ],
        input="go",
    )
    assert report.status == "completed", report
    rows = runtime.executions.attempts(report.execution_id)
    assert [(row.step_id, row.attempt) for row in rows] == [
        ("flaky", 1),
        ("flaky", 2),
        ("flaky", 3),
        ("last", 1),
    ]
    assert [row.outcome for row in rows] == ["error", "error", "success", "success"]
    assert [row.error_type for row in rows] == [
        "TransientAgentError",
        "TransientAgentError",
        None,
        None,
    ]
    assert "not yet (attempt 1)" in (rows[0].error_message or "")
    for row in rows:
        assert row.execution_id == report.execution_id
        assert row.agent in ("flaky_until_third", "noop")
        # The threads pool reports the machine's hostname (Celery's trace_task_ret), or
        # the embedded worker's node name.
        assert row.worker == socket.gethostname() or str(row.worker).startswith("embedded@"), (
            row.worker
        )
        assert row.task_id
        assert row.started_at is not None and row.finished_at is not None
        assert row.started_at <= row.finished_at
        assert isinstance(row.duration_ms, int) and row.duration_ms >= 0
    # A Celery retry re-sends the same task: every attempt of a step shares its task id.
    # The next step ran in the same task, eagerly, once the third attempt succeeded.
    assert len({row.task_id for row in rows}) == 1
    assert rows[0].finished_at <= rows[1].started_at <= rows[1].finished_at <= rows[2].started_at


# --- handles -----------------------------------------------------------------------------


def test_enqueue_returns_a_handle_that_waits_and_reports(runtime: Any) -> None:
    team = Team.from_yaml(team_yaml("pipeline", [{"id": "a", "agent": "add_one"}]))
    handle = team.enqueue(10)
    report = handle.wait(20)
    assert report.status == "completed"
    assert report.output == 11
    assert handle.report().to_json_dict() == report.to_json_dict()
    assert handle.cancel() is False  # already finished


def test_cancel_stops_steps_that_have_not_started(runtime: Any) -> None:
    team = Team.from_yaml(
        team_yaml(
            "sequential",
            [{"id": "slow", "agent": "sleepy"}, {"id": "never"}],
        )
    )
    handle = team.enqueue(0.6)
    deadline = time.monotonic() + 10
    while by_id(handle.report())["slow"].status != "running":
        assert time.monotonic() < deadline, handle.report()
        time.sleep(0.02)
    assert handle.cancel() is True
    report = handle.wait(10)
    assert report.status == "cancelled"
    steps = by_id(report)
    assert steps["never"].status == "cancelled"
    assert steps["never"].attempts == 0
    # Let the running step end so it does not run into the next test.
    while by_id(handle.report())["slow"].status == "running":
        assert time.monotonic() < deadline + 5
        time.sleep(0.02)
    final = handle.report()
    assert final.status == "cancelled"
    assert by_id(final)["never"].status == "cancelled"
    assert {row.step_id for row in runtime.executions.attempts(report.execution_id)} == {"slow"}


def test_permanent_error_class_is_the_public_one() -> None:
    # The agents raise the class exported by the package, which the runtime classifies.
    from tests.support import agents

    assert agents.PermanentAgentError is PermanentAgentError
