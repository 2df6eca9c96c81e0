"""build_plan: levels, dependencies, visibility, pipeline inputs and output steps per strategy."""

import pytest
import yaml

from orchestration.team_file import parse_team
from workflows.plan import build_plan


def plan_for(strategy, *steps):
    """Each step: "id", or (id, {after/when...})."""
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


DIAMOND = ("a", ("b", {"after": ["a"]}), ("c", {"after": ["a"]}), ("d", {"after": ["b", "c"]}))


@pytest.mark.parametrize(
    ("strategy", "steps", "levels"),
    [
        ("sequential", ("a", "b", "c"), (("a",), ("b",), ("c",))),
        ("pipeline", ("a", "b", "c"), (("a",), ("b",), ("c",))),
        ("parallel", ("a", "b", "c"), (("a", "b", "c"),)),
        ("dag", ("a", "b", "c"), (("a", "b", "c"),)),
        ("dag", DIAMOND, (("a",), ("b", "c"), ("d",))),
        ("dag", (("x", {"after": ["y"]}), "y", "z"), (("y", "z"), ("x",))),
        (
            "conditional",
            ("a", ("b", {"when": "steps.a.output > 1"}), "c"),
            (("a", "c"), ("b",)),
        ),
    ],
    ids=["sequential", "pipeline", "parallel", "dag-independent", "diamond", "dag-order", "when"],
)
def test_levels(strategy, steps, levels):
    assert plan_for(strategy, *steps).levels == levels


def test_condition_reference_becomes_a_dependency():
    plan = plan_for("conditional", "a", "b", ("c", {"after": ["a"], "when": "steps.b.output"}))
    assert plan.step("c").deps == ("a", "b")
    assert plan.step("c").level == 1


def test_sequential_dependencies_chain_in_order():
    plan = plan_for("sequential", "a", "b", "c")
    assert [plan.step(s).deps for s in "abc"] == [(), ("a",), ("b",)]


def test_visible_holds_all_ancestors_but_not_siblings():
    plan = plan_for("dag", *DIAMOND, ("e", {"after": ["d"]}))
    assert plan.step("a").visible == ()
    assert plan.step("b").visible == ("a",)
    assert plan.step("c").visible == ("a",)  # not its sibling b
    assert plan.step("e").visible == ("a", "b", "c", "d")


def test_sequential_steps_see_every_earlier_step():
    plan = plan_for("sequential", "a", "b", "c")
    assert plan.step("c").visible == ("a", "b")


def test_parallel_steps_see_nothing():
    plan = plan_for("parallel", "a", "b")
    assert [plan.step(s).visible for s in "ab"] == [(), ()]


def test_pipeline_input_is_the_previous_step():
    plan = plan_for("pipeline", "a", "b", "c")
    assert [plan.step(s).input_from for s in "abc"] == [None, "a", "b"]


@pytest.mark.parametrize("strategy", ["sequential", "parallel", "dag"])
def test_only_pipeline_passes_outputs_as_input(strategy):
    plan = plan_for(strategy, "a", "b")
    assert [s.input_from for s in plan.steps] == [None, None]


@pytest.mark.parametrize(
    ("strategy", "steps", "outputs"),
    [
        ("sequential", ("a", "b", "c"), ("c",)),
        ("pipeline", ("a", "b", "c"), ("c",)),
        ("parallel", ("a", "b", "c"), ("a", "b", "c")),
        ("dag", DIAMOND, ("d",)),
        ("dag", ("a", ("b", {"after": ["a"]}), ("c", {"after": ["a"]})), ("b", "c")),
        ("conditional", ("a", ("b", {"when": "steps.a.output > 1"})), ("b",)),
    ],
    ids=["sequential", "pipeline", "parallel", "dag-one-sink", "dag-two-sinks", "conditional"],
)
def test_outputs_from(strategy, steps, outputs):
    assert plan_for(strategy, *steps).outputs_from == outputs


def test_plan_keeps_step_details():
    plan = plan_for("conditional", "a", ("b", {"when": "input.go == true"}))
    b = plan.step("b")
    assert (b.agent, b.when, b.position, b.task) == ("worker", "input.go == true", 1, None)
    assert plan.team == "t"


def test_a_delegation_reads_its_dependencies_unless_it_has_a_condition_or_ends_the_run():
    steps = [f"s{i}" for i in range(6)]
    plan = plan_for("sequential", *steps[:3], ("s3", {"when": "steps.s0.output > 1"}), *steps[4:])
    by_id = {step.id: step for step in plan.steps}
    # The step just before it: whether it failed (and, in a pipeline, its input).
    assert plan.reads(by_id["s2"]) == ("s1",)
    assert plan.reads(by_id["s4"]) == ("s3",)
    assert plan.reads(by_id["s0"]) == ()
    # A condition may name any step it sees; the last step decides the run's outcome.
    assert plan.reads(by_id["s3"]) == ("s0", "s1", "s2")
    assert plan.reads(by_id["s5"]) == ("s0", "s1", "s2", "s3", "s4")
