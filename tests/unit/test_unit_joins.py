"""Joins in the team file, the plan, the execution's outcome and the delegation's pure
decisions (with a clock passed in): what the engine does with ``workflows.aggregation``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from orchestration.engine import decisions as d
from orchestration.errors import TeamFileError
from orchestration.spec import JOIN_PSEUDO_AGENT
from orchestration.team_file import parse_team
from workflows.outcome import StepRecord, decide_outcome
from workflows.plan import ExecutionPlan, build_plan
from workflows.scheduling import resumption
from workflows.status import ExecutionStatus, SkipCause, StepStatus

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def team(join: dict[str, Any] | None = None, **join_step: Any) -> dict[str, Any]:
    """Three voters (agents a, b, c) and a join ``vote`` of them."""
    step = {"id": "vote", "after": ["va", "vb", "vc"], **join_step}
    if join is not None:
        step["join"] = join
    return {
        "name": "t",
        "agents": {name: {"target": "json:dumps"} for name in ("a", "b", "c", "judge")},
        "workflow": {
            "strategy": "dag",
            "steps": [
                {"id": "va", "agent": "a"},
                {"id": "vb", "agent": "b"},
                {"id": "vc", "agent": "c"},
                step,
            ],
        },
    }


def parse(data: dict[str, Any]) -> Any:
    return parse_team(yaml.safe_dump(data, sort_keys=False), source="team.yaml")


def plan_of(join: dict[str, Any] | None = None, **join_step: Any) -> ExecutionPlan:
    return build_plan(parse(team(join, **join_step)))


def rejection(data: dict[str, Any]) -> str:
    with pytest.raises(TeamFileError) as info:
        parse(data)
    return str(info.value)


# --- the team file ------------------------------------------------------------------------


def test_a_join_needs_no_agent_and_records_a_pseudo_agent() -> None:
    spec = parse(team({"aggregate": "majority", "field": "verdict"}))
    assert spec.steps[3].agent is None
    assert spec.steps[3].agent_name == JOIN_PSEUDO_AGENT


def test_a_reducer_join_runs_its_reducer() -> None:
    spec = parse(team({"aggregate": "reducer", "reducer": "judge"}))
    assert spec.steps[3].agent_name == "judge"
    assert build_plan(spec).step("vote").agent == "judge"
    assert "a reducer join's agent is its reducer" in rejection(
        team({"aggregate": "reducer", "reducer": "judge"}, agent="a")
    )


@pytest.mark.parametrize(
    ("join", "after", "problem"),
    [
        ({"quorum": 4}, None, "join.quorum: 4 exceeds the 3 steps it joins"),
        ({}, [], "join: a join needs the steps it joins (after)"),
        ({"aggregate": "reducer", "reducer": "nobody"}, None, "unknown agent 'nobody'"),
        (
            {"aggregate": "priority", "priority": ["a", "judge"]},
            None,
            "join.priority: agent 'judge' runs none of the steps it joins (a, b, c)",
        ),
        ({"aggregate": "priority"}, None, "needs the ordered agent list"),
        ({"deadline": 0}, None, "deadline"),
    ],
)
def test_join_fields_are_checked(
    join: dict[str, Any], after: list[str] | None, problem: str
) -> None:
    data = team(join)
    if after is not None:
        data["workflow"]["steps"][3]["after"] = after
    assert problem in rejection(data)


# --- the plan -------------------------------------------------------------------------------


def test_the_plan_knows_which_joins_run_early_and_whose_parents_start_a_clock() -> None:
    plain = plan_of({"aggregate": "collect"})
    assert plain.early_joins == frozenset()
    assert plain.deadline_joins == {}
    timed = plan_of({"quorum": 2, "deadline": 5})
    assert timed.early_joins == frozenset({"vote"})
    assert timed.deadline_joins == {"va": ("vote",), "vb": ("vote",), "vc": ("vote",)}
    rule = timed.step("vote").join
    assert rule is not None and (rule.quorum, rule.deadline) == (2, 5.0)
    assert plan_of({"quorum": 2}).deadline_joins == {}


# --- the execution's outcome ----------------------------------------------------------------


def ok(output: Any = 1) -> StepRecord:
    return StepRecord(StepStatus.COMPLETED, output, None)


FAILED = StepRecord(StepStatus.FAILED, None, "RuntimeError: broke")
DROPPED = StepRecord(StepStatus.CANCELLED, None, "cancelled by join", cause=SkipCause.JOIN)


def test_a_failure_a_join_tolerates_does_not_fail_the_execution() -> None:
    plan = plan_of({"tolerate_failures": True})
    outcome = decide_outcome(plan, {"va": ok(), "vb": FAILED, "vc": ok(), "vote": ok("all")})
    assert (outcome.status, outcome.output) == (ExecutionStatus.COMPLETED, "all")


def test_a_failure_under_a_quorum_that_was_met_does_not_fail_the_execution() -> None:
    plan = plan_of({"quorum": 2})
    outcome = decide_outcome(plan, {"va": ok(), "vb": FAILED, "vc": ok(), "vote": ok()})
    assert outcome.status == ExecutionStatus.COMPLETED


def test_a_failure_without_tolerance_still_fails_the_execution() -> None:
    plan = plan_of({"aggregate": "collect"})
    skipped = StepRecord(StepStatus.SKIPPED, None, "upstream", cause=SkipCause.UPSTREAM)
    outcome = decide_outcome(plan, {"va": ok(), "vb": FAILED, "vc": ok(), "vote": skipped})
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "step 'vb' failed: RuntimeError: broke"


def test_a_failed_join_fails_the_execution_under_its_own_name() -> None:
    plan = plan_of({"quorum": 2})
    failed_join = StepRecord(StepStatus.FAILED, None, "QuorumUnreachable: no")
    outcome = decide_outcome(plan, {"va": FAILED, "vb": FAILED, "vc": DROPPED, "vote": failed_join})
    assert outcome.status == ExecutionStatus.FAILED
    assert outcome.error == "step 'vote' failed: QuorumUnreachable: no"


def test_parents_a_join_cancelled_do_not_cancel_the_execution() -> None:
    plan = plan_of({"quorum": 2})
    outcome = decide_outcome(plan, {"va": ok(), "vb": ok(), "vc": DROPPED, "vote": ok("v")})
    assert (outcome.status, outcome.output) == (ExecutionStatus.COMPLETED, "v")
    stopped = StepRecord(StepStatus.CANCELLED, None, "execution cancelled")
    outcome = decide_outcome(plan, {"va": ok(), "vb": ok(), "vc": stopped, "vote": ok("v")})
    assert outcome.status == ExecutionStatus.CANCELLED


# --- rows, as the delegation reads them -----------------------------------------------------


def row(step_id: str, status: str = StepStatus.PENDING, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "execution_id": "e",
        "step_id": step_id,
        "agent": step_id.removeprefix("v"),
        "status": status,
        "attempts": 0,
        "skip_cause": None,
        "started_at": None,
        "finished_at": None,
        "duration_ms": None,
        "waiting": 0,
        "parent_id": None,
        "item_index": None,
        "item": None,
        "origin": None,
        "dependents": None,
        "fan_out": None,
        "next_attempt_at": None,
        "output": None,
        "error_type": None,
        "error_message": None,
        "reason": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def done(step_id: str, output: Any, seconds_ago: float = 1) -> Any:
    at = NOW - timedelta(seconds=seconds_ago)
    return row(step_id, StepStatus.COMPLETED, output=output, started_at=at, finished_at=at)


def broke(step_id: str) -> Any:
    return row(
        step_id,
        StepStatus.FAILED,
        error_type="RuntimeError",
        error_message="broke",
        finished_at=NOW,
    )


def busy(step_id: str) -> Any:
    return row(step_id, StepStatus.RUNNING, started_at=NOW - timedelta(seconds=3))


def view(plan: ExecutionPlan, join_row: Any, *parents: Any, now: datetime = NOW) -> d.View:
    return d.View(
        step=plan.step("vote"),
        row=join_row,
        rows={r.step_id: r for r in (join_row, *parents)},
        execution_status=ExecutionStatus.RUNNING,
        input=None,
        attempt=1,
        recorded=None,
        task_id="t",
        orphaned_by=None,
        lease_ttl=15,
        lost=0,
        max_attempts=1,
        now=now,
    )


# --- the delegation's decisions -------------------------------------------------------------


def test_a_join_woken_before_its_quorum_waits_for_its_timer() -> None:
    plan = plan_of({"quorum": 2, "deadline": 10})
    armed = row("vote", next_attempt_at=NOW + timedelta(seconds=9))
    decision = d.decide(view(plan, armed, done("va", 1), busy("vb"), busy("vc")))
    assert decision == d.WaitForParents(None)
    # Close to its deadline, it looks again itself (a timer may come a moment early).
    soon = row("vote", next_attempt_at=NOW + timedelta(seconds=1))
    decision = d.decide(view(plan, soon, done("va", 1), busy("vb"), busy("vc")))
    assert decision == d.WaitForParents(pytest.approx(1.05))


def test_a_met_quorum_cancels_the_parents_still_running_first() -> None:
    plan = plan_of({"quorum": 2, "aggregate": "majority"})
    decision = d.decide(view(plan, row("vote"), done("va", "x"), done("vb", "x"), busy("vc")))
    assert decision == d.CancelParents(
        (("vc", "cancelled while running: join 'vote' met its quorum of 2"),)
    )


def test_once_the_parents_are_cancelled_the_join_aggregates() -> None:
    plan = plan_of({"quorum": 2, "aggregate": "majority"})
    dropped = row(
        "vc",
        StepStatus.CANCELLED,
        skip_cause=SkipCause.JOIN,
        reason="cancelled while running: join 'vote' met its quorum of 2",
        started_at=NOW,
    )
    decision = d.decide(view(plan, row("vote"), done("va", "x"), done("vb", "x"), dropped))
    assert isinstance(decision, d.Joined)
    assert decision.status == StepStatus.COMPLETED
    assert decision.output["result"] == "x"
    assert decision.output["trigger"] == "quorum"
    assert decision.output["parents"][2]["was"] == "running"


def test_the_deadline_is_read_from_the_joins_row_against_the_clock() -> None:
    plan = plan_of({"deadline": 5, "tolerate_failures": True})
    armed = row("vote", next_attempt_at=NOW)
    before = d.decide(
        view(plan, armed, done("va", 1), busy("vb"), busy("vc"), now=NOW - timedelta(seconds=3))
    )
    assert before == d.WaitForParents(None)
    at = d.decide(view(plan, armed, done("va", 1), busy("vb"), busy("vc"), now=NOW))
    assert isinstance(at, d.CancelParents)
    assert [reason for _, reason in at.parents] == [
        "cancelled while running: join 'vote' reached its deadline of 5s"
    ] * 2


def test_an_unreachable_quorum_fails_the_join() -> None:
    plan = plan_of({"quorum": 2})
    dropped = row("vc", StepStatus.CANCELLED, skip_cause=SkipCause.JOIN, reason="r")
    decision = d.decide(view(plan, row("vote"), broke("va"), broke("vb"), dropped))
    assert isinstance(decision, d.Joined)
    assert (decision.status, decision.error_type) == (StepStatus.FAILED, "QuorumUnreachable")


def test_a_join_that_does_not_tolerate_failures_is_skipped_as_before() -> None:
    plan = plan_of({"aggregate": "collect"})
    decision = d.decide(view(plan, row("vote"), done("va", 1), broke("vb"), done("vc", 1)))
    assert decision == d.Decide(
        StepStatus.SKIPPED, SkipCause.UPSTREAM, "upstream step 'vb' did not complete"
    )


def test_a_reducer_join_is_called_with_failed_parents_when_it_tolerates_them() -> None:
    plan = plan_of({"aggregate": "reducer", "reducer": "judge", "tolerate_failures": True})
    decision = d.decide(view(plan, row("vote"), done("va", 1), broke("vb"), done("vc", 2)))
    assert isinstance(decision, d.Call)


def test_a_reducer_is_not_called_when_no_parent_completed() -> None:
    plan = plan_of({"aggregate": "reducer", "reducer": "judge", "tolerate_failures": True})
    decision = d.decide(view(plan, row("vote"), broke("va"), broke("vb"), broke("vc")))
    assert isinstance(decision, d.Joined)
    assert decision.error_type == "NoParentSucceeded"


def test_a_joins_condition_is_read_once_its_parents_are_in() -> None:
    plan = plan_of({"aggregate": "collect"}, when="steps.va.output > 5")
    decision = d.decide(view(plan, row("vote"), done("va", 1), done("vb", 1), done("vc", 1)))
    assert isinstance(decision, d.Decide)
    assert decision.cause == SkipCause.CONDITION


# --- resuming -------------------------------------------------------------------------------


def test_resuming_sends_a_join_whose_deadline_passed_though_parents_still_run() -> None:
    plan = plan_of({"deadline": 5, "tolerate_failures": True})
    overdue = row(
        "vote", waiting=2, next_attempt_at=(NOW - timedelta(seconds=1)).replace(tzinfo=None)
    )
    rows = [done("va", 1), busy("vb"), busy("vc"), overdue]
    # (The running parents are sent again too, as before: each finds its live lease.)
    assert resumption(plan, rows, NOW).send == ("vb", "vc", "vote")
    assert resumption(plan, rows, NOW - timedelta(seconds=2)).send == ("vb", "vc")
    assert resumption(plan, rows).send == ("vb", "vc")
