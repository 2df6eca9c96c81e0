"""compile_canvas: one delegation or one chord per level, then finalize. Nothing is published."""

import pytest
import yaml
from celery.canvas import Signature, _chain, _chord

from orchestration.team_file import parse_team
from workflows.canvas import compile_canvas
from workflows.plan import build_plan

EXECUTION = "exec-42"
QUEUE = "team-queue"


def canvas_for(strategy, *steps):
    """Each step: (id, agent) or (id, agent, after)."""
    rows = [
        {"id": s[0], "agent": s[1], **({"after": list(s[2])} if len(s) > 2 else {})} for s in steps
    ]
    data = {
        "name": "t",
        "agents": {name: {"target": "json:dumps"} for name in ("scout", "judge")},
        "workflow": {"strategy": strategy, "steps": rows},
    }
    plan = build_plan(parse_team(yaml.safe_dump(data), source="team.yaml"))
    return compile_canvas(plan, EXECUTION, QUEUE)


def assert_delegation(sig, step_id, agent):
    assert isinstance(sig, Signature) and not isinstance(sig, _chord)
    assert sig.task == "troupe.delegate"
    assert sig.args == (EXECUTION, step_id)
    assert sig.immutable is True
    assert sig.options["queue"] == QUEUE
    assert sig.options["shadow"] == f"agent:{agent}"


def assert_finalize(sig):
    assert sig.task == "troupe.finalize"
    assert sig.args == (EXECUTION,)
    assert sig.immutable is True
    assert sig.options["queue"] == QUEUE


def assert_join_chord(part, level_index, members):
    assert isinstance(part, _chord)
    assert len(part.tasks) == len(members)
    for sig, (step_id, agent) in zip(part.tasks, members, strict=True):
        assert_delegation(sig, step_id, agent)
    assert part.body.task == "troupe.join"
    assert part.body.args == (EXECUTION, level_index)
    assert part.body.options["queue"] == QUEUE
    # The join receives the level's results, so it is the one mutable signature.
    assert part.body.immutable is False


def test_sequential_is_a_chain_of_delegations_then_finalize():
    canvas = canvas_for("sequential", ("a", "scout"), ("b", "judge"), ("c", "scout"))
    assert isinstance(canvas, _chain)
    *delegations, last = canvas.tasks
    expected = [("a", "scout"), ("b", "judge"), ("c", "scout")]
    for sig, (step_id, agent) in zip(delegations, expected, strict=True):
        assert_delegation(sig, step_id, agent)
    assert_finalize(last)


def test_parallel_is_one_chord_joined_at_level_zero():
    canvas = canvas_for("parallel", ("a", "scout"), ("b", "judge"))
    assert len(canvas.tasks) == 2
    assert_join_chord(canvas.tasks[0], 0, [("a", "scout"), ("b", "judge")])
    assert_finalize(canvas.tasks[1])


def test_diamond_dag_mixes_single_delegations_and_a_chord():
    canvas = canvas_for(
        "dag",
        ("a", "scout"),
        ("b", "judge", ["a"]),
        ("c", "scout", ["a"]),
        ("d", "judge", ["b", "c"]),
    )
    first, middle, last, final = canvas.tasks
    assert_delegation(first, "a", "scout")
    assert_join_chord(middle, 1, [("b", "judge"), ("c", "scout")])
    assert_delegation(last, "d", "judge")
    assert_finalize(final)


@pytest.mark.parametrize("strategy", ["sequential", "parallel", "dag"])
def test_single_step_team(strategy):
    canvas = canvas_for(strategy, ("only", "judge"))
    first, final = canvas.tasks
    assert_delegation(first, "only", "judge")
    assert_finalize(final)
