"""decide_outcome: an execution's status, error and output from its steps' records."""

import pytest
import yaml

from orchestration.constants import CANCELLED, COMPLETED, FAILED, SKIPPED
from orchestration.team_file import parse_team
from workflows.outcome import StepRecord, decide_outcome
from workflows.plan import build_plan


def plan_for(strategy, *steps):
    """Each step: "id", or (id, [after...])."""
    rows = [{"id": s} if isinstance(s, str) else {"id": s[0], "after": list(s[1])} for s in steps]
    data = {
        "name": "t",
        "agents": {"worker": {"target": "json:dumps"}},
        "workflow": {"strategy": strategy, "steps": [{**r, "agent": "worker"} for r in rows]},
    }
    return build_plan(parse_team(yaml.safe_dump(data), source="team.yaml"))


def ok(output):
    return StepRecord(COMPLETED, output, None)


def failed(error="boom"):
    return StepRecord(FAILED, None, error)


SKIP = StepRecord(SKIPPED, None, None)
CANCEL = StepRecord(CANCELLED, None, None)
DIAMOND = ("a", ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"]))


def test_all_completed():
    outcome = decide_outcome(plan_for("sequential", "a", "b"), {"a": ok(1), "b": ok(2)})
    assert (outcome.status, outcome.error, outcome.output) == (COMPLETED, None, 2)


def test_condition_skips_do_not_fail_the_execution():
    plan = plan_for("dag", *DIAMOND)
    outcome = decide_outcome(plan, {"a": ok(1), "b": SKIP, "c": ok(3), "d": ok(4)})
    assert (outcome.status, outcome.error, outcome.output) == (COMPLETED, None, 4)


def test_failed_step_fails_the_execution_and_is_named():
    plan = plan_for("dag", *DIAMOND)
    records = {"a": ok(1), "b": failed("rate limited"), "c": ok(3), "d": SKIP}
    outcome = decide_outcome(plan, records)
    assert outcome.status == FAILED
    assert outcome.error == "step 'b' failed: rate limited"


def test_first_failed_step_in_declared_order_is_reported():
    plan = plan_for("parallel", "a", "b", "c")
    outcome = decide_outcome(plan, {"c": failed("late"), "b": failed("early"), "a": ok(1)})
    assert outcome.error == "step 'b' failed: early"


def test_failed_step_without_error_text():
    outcome = decide_outcome(plan_for("sequential", "a"), {"a": failed(None)})
    assert outcome.error == "step 'a' failed: unknown error"


def test_cancelled():
    plan = plan_for("sequential", "a", "b")
    outcome = decide_outcome(plan, {"a": ok(1), "b": CANCEL})
    assert (outcome.status, outcome.error) == (CANCELLED, "execution cancelled")


def test_failure_wins_over_cancellation():
    plan = plan_for("parallel", "a", "b")
    outcome = decide_outcome(plan, {"a": failed("x"), "b": CANCEL})
    assert outcome.status == FAILED


@pytest.mark.parametrize(
    ("strategy", "records", "output"),
    [
        ("sequential", {"a": ok("A"), "b": ok("B"), "c": ok("C")}, "C"),
        ("pipeline", {"a": ok("A"), "b": ok("B"), "c": ok("C")}, "C"),
        ("sequential", {"a": ok("A"), "b": ok("B"), "c": SKIP}, "B"),
        (
            "parallel",
            {"a": ok("A"), "b": ok({"k": 1}), "c": ok(None)},
            {"a": "A", "b": {"k": 1}, "c": None},
        ),
        ("parallel", {"a": ok("A"), "b": failed(), "c": ok("C")}, {"a": "A", "b": None, "c": "C"}),
    ],
    ids=["sequential", "pipeline", "sequential-last-skipped", "parallel", "parallel-failed-step"],
)
def test_linear_and_parallel_outputs(strategy, records, output):
    assert decide_outcome(plan_for(strategy, "a", "b", "c"), records).output == output


def test_dag_single_sink_output_is_its_output():
    records = {"a": ok(1), "b": ok(2), "c": ok(3), "d": ok({"joined": True})}
    assert decide_outcome(plan_for("dag", *DIAMOND), records).output == {"joined": True}


def test_dag_several_sinks_map_step_to_output():
    plan = plan_for("dag", "a", ("b", ["a"]), ("c", ["a"]))
    outcome = decide_outcome(plan, {"a": ok(1), "b": ok(2), "c": ok(3)})
    assert outcome.output == {"b": 2, "c": 3}


def test_dag_skipped_branch_is_left_out_of_the_sink_mapping():
    plan = plan_for("conditional", "a", ("b", ["a"]), ("c", ["a"]))
    outcome = decide_outcome(plan, {"a": ok(1), "b": SKIP, "c": ok(3)})
    assert outcome.status == COMPLETED
    assert outcome.output == {"c": 3}


def test_independent_branch_output_survives_a_failed_branch():
    plan = plan_for("dag", "a", ("b", ["a"]), "x", ("y", ["x"]))
    records = {"a": failed("down"), "b": SKIP, "x": ok(1), "y": ok(2)}
    outcome = decide_outcome(plan, records)
    assert outcome.status == FAILED
    assert outcome.output == {"y": 2}
