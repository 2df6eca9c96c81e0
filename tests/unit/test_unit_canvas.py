"""compile_level: the messages of one level of the plan (one per step; the members of a
wide level count it down), resuming with attempt numbers and without the steps already
decided; past the last level, the finalize task. Nothing is published."""

import pytest
import yaml

from orchestration.team_file import parse_team
from workflows.canvas import compile_level
from workflows.plan import build_plan

EXECUTION = "exec-42"
QUEUE = "team-queue"
DIAMOND = (
    ("a", "scout"),
    ("b", "judge", ["a"]),
    ("c", "scout", ["a"]),
    ("d", "judge", ["b", "c"]),
)


def plan_for(strategy, *steps):
    """Each step: (id, agent) or (id, agent, after)."""
    rows = [
        {"id": s[0], "agent": s[1], **({"after": list(s[2])} if len(s) > 2 else {})} for s in steps
    ]
    data = {
        "name": "t",
        "agents": {name: {"target": "json:dumps"} for name in ("scout", "judge")},
        "workflow": {"strategy": strategy, "steps": rows},
    }
    return build_plan(parse_team(yaml.safe_dump(data), source="team.yaml"))


def assert_delegation(messages, step_id, agent, *, attempt=1):
    (sig,) = messages
    assert_member(sig, step_id, agent, attempt=attempt)


def assert_member(sig, step_id, agent, *, attempt=1):
    assert sig.task == "troupe.delegate"
    assert sig.args == (EXECUTION, step_id)
    # Two ids and an attempt number: nothing else travels, however long the team.
    assert sig.kwargs == {"attempt": attempt}
    assert sig.options["queue"] == QUEUE
    assert sig.options["shadow"] == f"agent:{agent}"
    # Flower's args and kwargs columns.
    assert sig.options["argsrepr"] == repr((EXECUTION, step_id))
    assert sig.options["kwargsrepr"] == repr({"attempt": attempt})


def assert_level(messages, members):
    assert len(messages) == len(members)
    for sig, (step_id, agent) in zip(messages, members, strict=True):
        assert_member(sig, step_id, agent)


def assert_finalize(messages):
    (sig,) = messages
    assert sig.task == "troupe.finalize"
    assert sig.args == (EXECUTION,)
    assert sig.options["queue"] == QUEUE


def test_a_sequential_team_publishes_one_small_delegation_per_level():
    plan = plan_for("sequential", *((f"s{i}", "scout") for i in range(100)))
    first = compile_level(plan, EXECUTION, QUEUE)
    assert_delegation(first, "s0", "scout")
    assert_delegation(compile_level(plan, EXECUTION, QUEUE, level=57), "s57", "scout")


def test_a_parallel_level_is_one_message_per_step():
    plan = plan_for("parallel", ("a", "scout"), ("b", "judge"))
    assert_level(compile_level(plan, EXECUTION, QUEUE), [("a", "scout"), ("b", "judge")])


def test_a_diamond_dag_level_by_level():
    plan = plan_for("dag", *DIAMOND)
    assert_delegation(compile_level(plan, EXECUTION, QUEUE, level=0), "a", "scout")
    assert_level(compile_level(plan, EXECUTION, QUEUE, level=1), [("b", "judge"), ("c", "scout")])
    assert_delegation(compile_level(plan, EXECUTION, QUEUE, level=2), "d", "judge")


@pytest.mark.parametrize("strategy", ["sequential", "parallel", "dag"])
def test_single_step_team_is_one_delegation(strategy):
    assert_delegation(
        compile_level(plan_for(strategy, ("only", "judge")), EXECUTION, QUEUE), "only", "judge"
    )


def test_resuming_a_wide_level_publishes_only_its_undecided_steps():
    plan = plan_for("dag", *DIAMOND)
    canvas = compile_level(
        plan, EXECUTION, QUEUE, level=1, attempts={"c": 2, "d": 1}, done={"a", "b"}
    )
    assert_delegation(canvas, "c", "scout", attempt=2)


def test_resuming_a_level_with_nothing_left_gives_way_to_the_next():
    plan = plan_for("dag", *DIAMOND)
    canvas = compile_level(plan, EXECUTION, QUEUE, level=1, done={"a", "b", "c"})
    assert_delegation(canvas, "d", "judge")


def test_resuming_with_every_step_finished_only_finalizes():
    plan = plan_for("sequential", ("a", "scout"))
    assert_finalize(compile_level(plan, EXECUTION, QUEUE, level=1))
    assert_finalize(compile_level(plan, EXECUTION, QUEUE, level=0, done={"a"}))
