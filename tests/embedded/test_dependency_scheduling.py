"""Each step starts when its own dependencies are decided, and map steps grow the plan
while it runs. Embedded mode: the Python API, an in-process worker, SQLite state."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import ExecutionReport, Team
from tests.support.teams import team_yaml

pytestmark = pytest.mark.timeout(60)


def run(strategy: str, steps: list[dict[str, Any]], input: Any = None) -> ExecutionReport:
    team = Team.from_yaml(team_yaml(strategy, steps), source="test-team.yaml")
    return team.run(input, timeout=30)


def outputs_of(runtime: Any, report: ExecutionReport) -> dict[str, Any]:
    return {row.step_id: row.output for row in runtime.executions.steps(report.execution_id)}


def test_a_step_does_not_wait_for_a_branch_it_does_not_depend_on(runtime: Any) -> None:
    """Two branches, a_slow → b_fast and c_fast → d_slow: d_slow starts as soon as
    c_fast ends, while a_slow still runs, and the run takes about one slow step."""
    slow = "1.0"
    report = run(
        "dag",
        [
            {"id": "a_slow", "agent": "timed", "task": slow},
            {"id": "b_fast", "agent": "timed", "after": ["a_slow"]},
            {"id": "c_fast", "agent": "timed"},
            {"id": "d_slow", "agent": "timed", "task": slow, "after": ["c_fast"]},
        ],
    )
    assert report.status == "completed", report
    out = outputs_of(runtime, report)
    # d_slow started before a_slow ended: no barrier between the two branches.
    assert out["d_slow"]["started"] < out["a_slow"]["ended"] - 0.5, out
    assert out["b_fast"]["started"] >= out["a_slow"]["ended"], out
    assert out["d_slow"]["started"] >= out["c_fast"]["ended"], out
    makespan = max(o["ended"] for o in out.values()) - min(o["started"] for o in out.values())
    # The critical path is one slow step; two in a row would be 2 s.
    assert makespan < 1.6, makespan


def test_a_map_step_runs_one_delegation_per_item_and_keeps_item_order(runtime: Any) -> None:
    items = ["a", "b", {"sleep": 0.2}, "d", "e"]
    report = run(
        "dag",
        [
            {"id": "split", "agent": "split"},
            {
                "id": "each",
                "agent": "per_item",
                "for_each": "steps.split.output.files",
                "max_parallel": 2,
            },
        ],
        input=items,
    )
    assert report.status == "completed", report
    # Outputs in item order, whatever order the items finished in.
    assert report.output == [
        {"item": item, "index": index, "attempt": 1} for index, item in enumerate(items)
    ]
    ids = [step.id for step in report.steps]
    assert ids == ["split", "each", *(f"each[{i}]" for i in range(5))], ids
    steps = {step.id: step for step in report.steps}
    assert steps["each[2]"].parent == "each"
    assert steps["each[2]"].item_index == 2


def test_a_map_over_an_empty_list_gives_an_empty_list(runtime: Any) -> None:
    report = run(
        "dag",
        [
            {"id": "split", "agent": "split"},
            {"id": "each", "agent": "per_item", "for_each": "steps.split.output.files"},
        ],
        input=[],
    )
    assert report.status == "completed", report
    assert report.output == []
    assert [step.id for step in report.steps] == ["split", "each"]


def test_a_failed_item_fails_the_map_unless_failures_are_allowed(runtime: Any) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "split", "agent": "split"},
        {"id": "each", "agent": "per_item", "for_each": "steps.split.output.files"},
        {"id": "after", "agent": "echo", "after": ["each"]},
    ]
    failed = run("dag", steps, input=["ok", "bad", "ok"])
    assert failed.status == "failed", failed
    by_id = {step.id: step for step in failed.steps}
    assert by_id["each"].status == "failed"
    assert "item 1 failed" in (by_id["each"].error or "")
    assert by_id["after"].status == "skipped"

    steps[1] = {**steps[1], "allow_failures": True}
    tolerated = run("dag", steps[:2], input=["ok", "bad", "ok"])
    assert tolerated.status == "completed", tolerated
    assert tolerated.output == [
        {"item": "ok", "index": 0, "attempt": 1},
        None,
        {"item": "ok", "index": 2, "attempt": 1},
    ]


def test_a_for_each_that_is_not_a_list_fails_the_step_with_the_reason(runtime: Any) -> None:
    report = run(
        "dag",
        [
            {"id": "split", "agent": "split"},
            {"id": "each", "agent": "per_item", "for_each": "steps.split.output"},
        ],
        input=["x"],
    )
    assert report.status == "failed"
    each = {step.id: step for step in report.steps}["each"]
    assert each.error is not None and "not a list" in each.error, each


def test_async_agents_wait_together_on_the_shared_loop_and_are_cut_off_at_their_limit(
    runtime: Any,
) -> None:
    from tests.support.teams import agent

    team = Team.from_yaml(
        team_yaml(
            "dag",
            [
                {"id": "a", "agent": "async_timed", "task": "0.5"},
                {"id": "b", "agent": "async_timed", "task": "0.5"},
                {"id": "late", "agent": "slow_async", "task": "5"},
            ],
            agents={"slow_async": agent("async_timed", timeout=0.3, max_attempts=1)},
        ),
        source="async.yaml",
    )
    report = team.run(None, timeout=30)
    steps = {step.id: step for step in report.steps}
    assert steps["a"].status == steps["b"].status == "completed"
    assert steps["late"].status == "failed"
    assert (steps["late"].error or "").startswith("AttemptTimeout"), steps["late"]
    out = outputs_of(runtime, report)
    # Both waits overlapped: the second started before the first ended.
    assert max(out["a"]["started"], out["b"]["started"]) < min(out["a"]["ended"], out["b"]["ended"])


def test_an_async_agent_that_exits_fails_its_step_and_the_shared_loop_goes_on(
    runtime: Any,
) -> None:
    from tests.support.teams import agent

    team = Team.from_yaml(
        team_yaml(
            "dag",
            [
                {"id": "exits", "agent": "once_exits"},
                {"id": "after", "agent": "async_timed", "task": "0.5"},
            ],
            agents={"once_exits": agent("async_exits", max_attempts=1)},
        ),
        source="async-exits.yaml",
    )
    report = team.run(None, timeout=30)
    steps = {step.id: step for step in report.steps}
    assert steps["exits"].status == "failed"
    assert (steps["exits"].error or "").startswith("AgentExited"), steps["exits"]
    # The loop that ran it, where the other step was waiting, still runs.
    assert steps["after"].status == "completed", steps["after"]


def test_a_map_of_one_and_of_500_items(runtime: Any) -> None:
    steps: list[dict[str, Any]] = [
        {"id": "split", "agent": "split"},
        {"id": "each", "agent": "per_item", "for_each": "steps.split.output.files"},
    ]
    one = run("dag", steps, input=["only"])
    assert one.status == "completed", one
    assert one.output == [{"item": "only", "index": 0, "attempt": 1}]
    many = run("dag", steps, input=list(range(500)))
    assert many.status == "completed", many
    assert [out["item"] for out in many.output] == list(range(500))
    assert len(many.steps) == 502


def test_a_redelivered_expansion_adds_no_item_twice(runtime: Any) -> None:
    """The map step's message delivered twice (its worker died after the expansion's
    commit, say): the second copy adds nothing and sends the items that are still
    undecided again, so none is lost either."""
    import uuid

    from orchestration.store.delegations import DelegationRecords
    from orchestration.store.repository import AttemptEnd, Countdown, now
    from workers.delegation import Delivery
    from workers.tasks import delegation

    team = Team.from_yaml(
        team_yaml(
            "dag",
            [
                {"id": "split", "agent": "split"},
                {"id": "each", "agent": "per_item", "for_each": "steps.split.output.files"},
            ],
        ),
        source="map.yaml",
    )
    execution_id = str(uuid.uuid4())
    runtime.executions.create_execution(
        execution_id, team.spec.model_dump(mode="json"), team.plan, None
    )
    split = AttemptEnd(execution_id, "split", 1, "split", "t-split", "test", now(), 1)
    decided = DelegationRecords(runtime.store).record_success(
        split, {"files": ["a", "b", "c"]}, Countdown(("each",))
    )
    assert decided is not None and decided.ready == ("each",)

    runner = delegation()
    first = runner.run(Delivery(execution_id, "each", 1, task_id="t-each", worker="test"))
    again = runner.run(Delivery(execution_id, "each", 1, task_id="t-each", worker="test"))

    items = ["each[0]", "each[1]", "each[2]"]
    assert [sid for sid, _ in first.send] == items
    assert sorted(sid for sid, _ in again.send) == items
    rows = runtime.executions.steps(execution_id)
    assert [row.step_id for row in rows] == ["split", "each", *items]
    assert [row.item for row in rows[2:]] == ["a", "b", "c"]
    assert rows[1].waiting == 3 and rows[1].fan_out == 3
