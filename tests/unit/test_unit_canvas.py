"""compile_canvas: a chain of single delegations up to the next level of several steps,
a group that ends the canvas (the delegation that closes it publishes the rest); the
last level finalizes the execution itself. Nothing is published."""

import pytest
import yaml
from celery.canvas import Signature, _chain, _chord, group

from orchestration.team_file import parse_team
from workflows.canvas import compile_canvas
from workflows.plan import build_plan

EXECUTION = "exec-42"
QUEUE = "team-queue"


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


def canvas_for(strategy, *steps):
    return compile_canvas(plan_for(strategy, *steps), EXECUTION, QUEUE)


def assert_delegation(sig, step_id, agent, *, finalizes=False, attempt=1):
    assert isinstance(sig, Signature) and not isinstance(sig, _chord)
    assert sig.task == "troupe.delegate"
    assert sig.args == (EXECUTION, step_id)
    assert sig.kwargs.get("attempt") == attempt
    assert bool(sig.kwargs.get("finalize")) is finalizes
    assert sig.immutable is True
    assert sig.options["queue"] == QUEUE
    assert sig.options["shadow"] == f"agent:{agent}"


def assert_finalize(sig):
    assert sig.task == "troupe.finalize"
    assert sig.args == (EXECUTION,)
    assert sig.immutable is True
    assert sig.options["queue"] == QUEUE


def assert_counted_group(part, members):
    """A level of several steps: a plain group (no chord, no join), counted down in the
    database; no member finalizes, the one that closes the level does."""
    assert isinstance(part, group) and not isinstance(part, _chord)
    assert len(part.tasks) == len(members)
    for sig, (step_id, agent) in zip(part.tasks, members, strict=True):
        assert_delegation(sig, step_id, agent)


def test_sequential_is_a_chain_whose_last_delegation_finalizes():
    canvas = canvas_for("sequential", ("a", "scout"), ("b", "judge"), ("c", "scout"))
    assert isinstance(canvas, _chain)
    first, second, last = canvas.tasks
    assert_delegation(first, "a", "scout")
    assert_delegation(second, "b", "judge")
    assert_delegation(last, "c", "scout", finalizes=True)


def test_parallel_is_one_counted_group():
    canvas = canvas_for("parallel", ("a", "scout"), ("b", "judge"))
    assert_counted_group(canvas, [("a", "scout"), ("b", "judge")])


DIAMOND = (
    ("a", "scout"),
    ("b", "judge", ["a"]),
    ("c", "scout", ["a"]),
    ("d", "judge", ["b", "c"]),
)


def test_diamond_dag_chains_up_to_its_wide_level_which_publishes_the_rest():
    canvas = canvas_for("dag", *DIAMOND)
    first, middle = canvas.tasks
    assert_delegation(first, "a", "scout")
    assert_counted_group(middle, [("b", "judge"), ("c", "scout")])
    # What the delegation closing level 1 publishes:
    rest = compile_canvas(plan_for("dag", *DIAMOND), EXECUTION, QUEUE, from_level=2)
    assert_delegation(rest, "d", "judge", finalizes=True)


def test_resuming_a_wide_level_publishes_only_its_unfinished_steps():
    plan = plan_for("dag", *DIAMOND)
    canvas = compile_canvas(
        plan, EXECUTION, QUEUE, from_level=1, attempts={"c": 2, "d": 1}, done={"a", "b"}
    )
    assert_delegation(canvas, "c", "scout", attempt=2)


@pytest.mark.parametrize("strategy", ["sequential", "parallel", "dag"])
def test_single_step_team_is_one_finalizing_delegation(strategy):
    canvas = canvas_for(strategy, ("only", "judge"))
    assert_delegation(canvas, "only", "judge", finalizes=True)


def test_resuming_publishes_only_unfinished_levels_with_their_next_attempts():
    plan = plan_for("sequential", ("a", "scout"), ("b", "scout"), ("c", "scout"))
    canvas = compile_canvas(plan, EXECUTION, QUEUE, from_level=1, attempts={"b": 3})
    second, last = canvas.tasks
    assert_delegation(second, "b", "scout", attempt=3)
    assert_delegation(last, "c", "scout", finalizes=True)


def test_resuming_with_every_step_finished_only_finalizes():
    plan = plan_for("sequential", ("a", "scout"))
    assert_finalize(compile_canvas(plan, EXECUTION, QUEUE, from_level=1))
