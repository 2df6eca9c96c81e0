"""plan_retry: which steps keep their result and which run again, with their counts."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestration.team_file import parse_team
from workflows.plan import ExecutionPlan, build_plan
from workflows.retry import NothingToRetry, RecordedStep, plan_retry

DONE = RecordedStep("completed")
FAILED = RecordedStep("failed")
UPSTREAM = RecordedStep("skipped", "upstream")
CONDITION = RecordedStep("skipped", "condition")


def plan_for(strategy: str, *steps: Any) -> ExecutionPlan:
    rows = []
    for item in steps:
        step_id, extra = (item, {}) if isinstance(item, str) else item
        rows.append({"id": step_id, "agent": "worker", **extra})
    data = {
        "name": "t",
        "agents": {"worker": {"target": "json:dumps"}},
        "workflow": {"strategy": strategy, "steps": rows},
    }
    return build_plan(parse_team(yaml.safe_dump(data), source="team.yaml"))


# a → b → c, a → d: two sinks, c and d.
FORK = ("a", ("b", {"after": ["a"]}), ("c", {"after": ["b"]}), ("d", {"after": ["a"]}))


def test_by_default_the_failed_step_and_what_depends_on_it_run_again() -> None:
    plan = plan_for("dag", *FORK)
    retry = plan_retry(plan, {"a": DONE, "b": FAILED, "c": UPSTREAM, "d": DONE})
    assert retry.reused == ("a", "d")
    assert retry.rerun == ("b", "c")
    # b's dependency a is kept, so b is ready at once; c waits for b.
    assert retry.waiting == {"b": 0, "c": 1}
    assert retry.ready == ("b",)
    assert retry.sinks_left == 1  # d, the other sink, is decided already


def test_from_a_step_runs_it_and_its_dependents_only() -> None:
    plan = plan_for("dag", *FORK)
    everything_done = dict.fromkeys("abcd", DONE)
    retry = plan_retry(plan, everything_done, "d")
    assert (retry.reused, retry.rerun, retry.ready, retry.sinks_left) == (
        ("a", "b", "c"),
        ("d",),
        ("d",),
        1,
    )
    from_root = plan_retry(plan, everything_done, "a")
    assert from_root.rerun == ("a", "b", "c", "d") and from_root.reused == ()
    assert from_root.waiting == {"a": 0, "b": 1, "c": 1, "d": 1}
    assert from_root.sinks_left == 2


def test_a_step_named_and_the_failed_ones_both_run_again() -> None:
    plan = plan_for("dag", *FORK)
    retry = plan_retry(plan, {"a": DONE, "b": FAILED, "c": UPSTREAM, "d": DONE}, "d")
    assert retry.rerun == ("b", "c", "d")
    assert retry.ready == ("b", "d")


def test_a_step_skipped_by_its_own_condition_keeps_that_result() -> None:
    plan = plan_for(
        "conditional",
        "a",
        ("b", {"when": "steps.a.output > 1"}),
        ("c", {"after": ["b"]}),
    )
    retry = plan_retry(plan, {"a": DONE, "b": CONDITION, "c": FAILED})
    assert retry.reused == ("a", "b")
    assert retry.rerun == ("c",)


def test_cancelled_and_never_recorded_steps_run_again() -> None:
    plan = plan_for("sequential", "a", "b", "c")
    retry = plan_retry(plan, {"a": DONE, "b": RecordedStep("cancelled")})
    assert retry.rerun == ("b", "c")
    assert retry.waiting == {"b": 0, "c": 1}


def test_a_map_step_runs_again_whole() -> None:
    plan = plan_for(
        "dag",
        "split",
        ("review", {"for_each": "steps.split.output.files"}),
        ("collect", {"after": ["review"]}),
    )
    retry = plan_retry(plan, dict.fromkeys(("split", "review", "collect"), DONE), "review")
    assert retry.rerun == ("review", "collect")
    assert retry.ready == ("review",)


def test_nothing_to_retry_and_unknown_steps_are_refused() -> None:
    plan = plan_for("dag", *FORK)
    with pytest.raises(NothingToRetry, match="every step completed"):
        plan_retry(plan, dict.fromkeys("abcd", DONE))
    with pytest.raises(NothingToRetry, match=r"no step 'zz' \(its steps: a, b, c, d\)"):
        plan_retry(plan, dict.fromkeys("abcd", DONE), "zz")
