"""Joins, pure: when a join runs (quorum, deadline, failures) and what its parents add up
to under each strategy, with the conflicts between them (workflows.aggregation)."""

from __future__ import annotations

from typing import Any

import pytest

from workflows.aggregation import (
    ALL,
    DEADLINE,
    MAX_CONFLICTS,
    QUORUM,
    RECOMMENDATION,
    JoinFail,
    JoinRule,
    JoinRun,
    JoinSkip,
    JoinWait,
    Parent,
    aggregate,
    cancel_reason,
    readiness,
    reduced,
    reducer_input,
)
from workflows.status import SkipCause, StepStatus


def done(step: str, output: Any, agent: str | None = None, at: float | None = None) -> Parent:
    return Parent(step, agent or step, StepStatus.COMPLETED, output=output, finished_at=at)


def failed(step: str, agent: str | None = None) -> Parent:
    return Parent(step, agent or step, StepStatus.FAILED, error=f"RuntimeError: {step} broke")


def running(step: str) -> Parent:
    return Parent(step, step, StepStatus.RUNNING, started=True)


def pending(step: str) -> Parent:
    return Parent(step, step, StepStatus.PENDING)


def dropped(parent: Parent) -> Parent:
    """What the join's own cancel leaves of an undecided parent."""
    return Parent(
        parent.step_id,
        parent.agent,
        StepStatus.CANCELLED,
        skip_cause=SkipCause.JOIN,
        reason="cancelled by the join",
        started=parent.started,
    )


def skipped_by_condition(step: str) -> Parent:
    return Parent(
        step, step, StepStatus.SKIPPED, skip_cause=SkipCause.CONDITION, reason="false: x > 1"
    )


# --- when a join runs -------------------------------------------------------------------


def test_a_plain_join_waits_for_every_parent_then_runs() -> None:
    rule = JoinRule()
    assert readiness(rule, [done("a", 1), running("b")], deadline_passed=False) == JoinWait()
    assert readiness(rule, [done("a", 1), done("b", 2)], deadline_passed=False) == JoinRun(ALL)


def test_a_parent_skipped_by_its_condition_does_not_stop_a_join() -> None:
    parents = [done("a", 1), skipped_by_condition("b")]
    assert readiness(JoinRule(), parents, deadline_passed=False) == JoinRun(ALL)


def test_a_failed_parent_skips_a_join_that_does_not_tolerate_failures() -> None:
    verdict = readiness(JoinRule(), [done("a", 1), failed("b")], deadline_passed=False)
    assert verdict == JoinSkip("upstream step 'b' did not complete")


def test_a_failed_parent_is_part_of_a_join_that_tolerates_failures() -> None:
    rule = JoinRule(tolerate_failures=True)
    assert readiness(rule, [done("a", 1), failed("b")], deadline_passed=False) == JoinRun(ALL)


def test_a_quorum_runs_once_enough_parents_completed() -> None:
    rule = JoinRule(quorum=2)
    assert readiness(rule, [done("a", 1), running("b"), running("c")], deadline_passed=False) == (
        JoinWait()
    )
    verdict = readiness(rule, [done("a", 1), done("b", 1), running("c")], deadline_passed=False)
    assert verdict == JoinRun(QUORUM)
    # Met only as the last parent was decided: every parent is in.
    assert readiness(rule, [failed("a"), done("b", 1), done("c", 1)], deadline_passed=False) == (
        JoinRun(ALL)
    )


def test_without_tolerate_failures_a_failure_does_not_count_towards_the_quorum() -> None:
    rule = JoinRule(quorum=2)
    assert readiness(rule, [done("a", 1), failed("b"), running("c")], deadline_passed=False) == (
        JoinWait()
    )
    tolerant = JoinRule(quorum=2, tolerate_failures=True)
    verdict = readiness(tolerant, [done("a", 1), failed("b"), running("c")], deadline_passed=False)
    assert verdict == JoinRun(QUORUM)


def test_a_quorum_that_can_no_longer_be_met_fails_at_once() -> None:
    rule = JoinRule(quorum=2)
    verdict = readiness(rule, [failed("a"), failed("b"), running("c")], deadline_passed=False)
    assert isinstance(verdict, JoinFail)
    assert verdict.error_type == "QuorumUnreachable"
    assert verdict.reason == (
        "quorum of 2 of 3 parents can no longer be met: 2 gave no result "
        "('a' failed (RuntimeError: a broke); 'b' failed (RuntimeError: b broke))"
    )


def test_the_deadline_runs_a_join_with_the_results_so_far() -> None:
    parents = [done("a", 1), running("b"), pending("c")]
    assert readiness(JoinRule(quorum=2, deadline=5), parents, deadline_passed=False) == JoinWait()
    assert readiness(JoinRule(quorum=2, deadline=5), parents, deadline_passed=True) == (
        JoinRun(DEADLINE)
    )
    assert readiness(JoinRule(deadline=5), parents, deadline_passed=True) == JoinRun(DEADLINE)


def test_a_deadline_join_that_does_not_tolerate_failures_is_skipped_at_the_first() -> None:
    verdict = readiness(
        JoinRule(deadline=5), [failed("a"), running("b"), running("c")], deadline_passed=False
    )
    assert verdict == JoinSkip("upstream step 'a' did not complete")


def test_an_unreachable_quorum_fails_even_once_the_deadline_passed() -> None:
    rule = JoinRule(quorum=2, deadline=5)
    verdict = readiness(rule, [failed("a"), failed("b"), running("c")], deadline_passed=True)
    assert isinstance(verdict, JoinFail)


def test_parents_another_join_cancelled_never_count() -> None:
    rule = JoinRule(quorum=2)
    verdict = readiness(rule, [done("a", 1), dropped(running("b"))], deadline_passed=False)
    assert isinstance(verdict, JoinFail)


SCENARIOS = [
    (JoinRule(quorum=2), [done("a", 1), done("b", 2), running("c")], False),
    (JoinRule(quorum=2, deadline=1), [done("a", 1), running("b"), pending("c")], True),
    (JoinRule(quorum=1, deadline=1), [running("a"), running("b")], True),
    (JoinRule(deadline=1), [done("a", 1), running("b"), running("c")], True),
    (JoinRule(deadline=1), [failed("a"), running("b")], False),
    (JoinRule(quorum=2), [failed("a"), failed("b"), running("c")], False),
    (JoinRule(quorum=3, tolerate_failures=True), [failed("a"), done("b", 1), running("c")], True),
]


@pytest.mark.parametrize(("rule", "parents", "passed"), SCENARIOS)
def test_the_verdict_is_the_same_after_the_join_cancels_the_undecided(
    rule: JoinRule, parents: list[Parent], passed: bool
) -> None:
    """The engine cancels the undecided parents, then decides from the rows again: a
    dropped parent must count where an undecided one did, whatever the clock says by
    then (it only moves on)."""
    before = readiness(rule, parents, deadline_passed=passed)
    assert not isinstance(before, JoinWait)
    after_cancel = [dropped(p) if p.undecided else p for p in parents]
    for later in (passed, True):
        assert readiness(rule, after_cancel, deadline_passed=later) == before


@pytest.mark.parametrize(
    ("rule", "parents", "waiting", "wakes"),
    [
        # A plain join is sent when its count reaches zero, never before.
        (JoinRule(), 3, 1, False),
        (JoinRule(tolerate_failures=True, deadline=5), 3, 1, False),
        # Without tolerate_failures, any failure may skip or doom the join.
        (JoinRule(deadline=5), 3, 2, True),
        # Quorum 2 of 3: met, or (failures not counting) missed, once 2 are decided.
        (JoinRule(quorum=2), 3, 2, False),
        (JoinRule(quorum=2), 3, 1, True),
        # Quorum 4 of 5 fails once 2 failed: look from the second decision on.
        (JoinRule(quorum=4), 5, 4, False),
        (JoinRule(quorum=4), 5, 3, True),
        # With failures counting, only the k-th decision can meet it.
        (JoinRule(quorum=4, tolerate_failures=True), 5, 2, False),
        (JoinRule(quorum=4, tolerate_failures=True), 5, 1, True),
        (JoinRule(quorum=1), 3, 0, False),
    ],
)
def test_which_parent_decisions_send_an_early_join(
    rule: JoinRule, parents: int, waiting: int, wakes: bool
) -> None:
    assert rule.wakes(parents, waiting) is wakes


def test_a_cancelled_parent_is_told_why() -> None:
    rule = JoinRule(quorum=2, deadline=2.5)
    assert (
        cancel_reason("vote", rule, JoinRun(QUORUM), running("c"))
        == "cancelled while running: join 'vote' met its quorum of 2"
    )
    assert (
        cancel_reason("vote", rule, JoinRun(DEADLINE), pending("c"))
        == "cancelled while pending: join 'vote' reached its deadline of 2.5s"
    )
    assert cancel_reason("vote", rule, JoinFail("QuorumUnreachable", "x"), running("c")) == (
        "cancelled while running: join 'vote' can no longer meet its quorum of 2"
    )


# --- what the parents add up to -----------------------------------------------------------


def test_collect_gives_every_output_with_full_consensus() -> None:
    result = aggregate(JoinRule(), [done("a", 1), done("b", {"x": 2})], ALL)
    assert result.status == StepStatus.COMPLETED
    assert result.output == {
        "result": {"a": 1, "b": {"x": 2}},
        "consensus": {"type": "success", "confidence": 1.0, "agreeing": 2, "of": 2},
        "conflicts": [],
        "resolution": {
            "resolved": True,
            "strategy": "collect",
            "recommendation": None,
            "chosen": ["a", "b"],
        },
        "parents": [
            {"step": "a", "agent": "a", "status": "completed"},
            {"step": "b", "agent": "b", "status": "completed"},
        ],
        "trigger": "all",
    }


def test_a_tolerated_failure_is_a_conflict_with_each_success() -> None:
    rule = JoinRule(tolerate_failures=True)
    output = aggregate(rule, [done("a", 1, "writer"), failed("b", "checker")], ALL).output
    assert output["result"] == {"a": 1, "b": None}
    assert output["consensus"] == {"type": "partial", "confidence": 0.5, "agreeing": 1, "of": 2}
    assert output["conflicts"] == [
        {
            "agent1": "writer",
            "agent2": "checker",
            "step1": "a",
            "step2": "b",
            "issue": "contradictory results (success vs failure): 'b' failed "
            "(RuntimeError: b broke)",
        }
    ]
    assert output["resolution"] == {
        "resolved": False,
        "strategy": "collect",
        "recommendation": RECOMMENDATION,
        "chosen": ["a"],
    }
    assert output["parents"][1] == {
        "step": "b",
        "agent": "checker",
        "status": "failed",
        "error": "RuntimeError: b broke",
    }


def test_majority_over_a_field_reports_the_dissent() -> None:
    rule = JoinRule(aggregate="majority", field="verdict")
    parents = [
        done("a", {"verdict": "approve", "by": "a"}),
        done("b", {"verdict": "reject", "by": "b"}),
        done("c", {"verdict": "approve", "by": "c"}),
    ]
    output = aggregate(rule, parents, ALL).output
    # The first parent that voted for the winner gives the whole output.
    assert output["result"] == {"verdict": "approve", "by": "a"}
    assert output["consensus"] == {
        "type": "success",
        "confidence": pytest.approx(0.6667),
        "agreeing": 2,
        "of": 3,
    }
    assert [(c["step1"], c["step2"], c["issue"]) for c in output["conflicts"]] == [
        ("a", "b", 'different values of \'verdict\': "approve" vs "reject"'),
        ("b", "c", 'different values of \'verdict\': "reject" vs "approve"'),
    ]
    assert output["resolution"] == {
        "resolved": True,
        "strategy": "majority",
        "recommendation": RECOMMENDATION,
        "chosen": ["a", "c"],
    }


def test_majority_over_whole_outputs_compares_mappings_by_value() -> None:
    rule = JoinRule(aggregate="majority")
    parents = [done("a", {"n": 1, "m": [1]}), done("b", {"m": [1], "n": 1}), done("c", {"n": 2})]
    output = aggregate(rule, parents, ALL).output
    assert output["result"] == {"n": 1, "m": [1]}
    assert output["resolution"]["chosen"] == ["a", "b"]
    assert [c["issue"].split(":")[0] for c in output["conflicts"]] == ["different outputs"] * 2


def test_a_tied_majority_is_unresolved() -> None:
    rule = JoinRule(aggregate="majority", tolerate_failures=True)
    output = aggregate(rule, [done("a", "yes"), done("b", "no"), failed("c")], ALL).output
    assert output["result"] is None
    assert output["consensus"]["confidence"] == 0.0
    assert output["resolution"] == {
        "resolved": False,
        "strategy": "majority",
        "recommendation": RECOMMENDATION,
        "chosen": [],
    }
    # a vs c and b vs c (success vs failure), then a vs b (different outputs).
    assert len(output["conflicts"]) == 3


def test_a_missing_field_votes_as_null() -> None:
    rule = JoinRule(aggregate="majority", field="verdict")
    output = aggregate(rule, [done("a", {}), done("b", "text"), done("c", {"verdict": 1})], ALL)
    assert output.output["result"] == {}
    assert output.output["resolution"]["chosen"] == ["a", "b"]


def test_priority_takes_the_first_listed_agent_that_succeeded() -> None:
    rule = JoinRule(aggregate="priority", priority=("expert", "junior"), tolerate_failures=True)
    parents = [
        done("quick", "q", agent="intern"),
        done("careful", "j", agent="junior"),
        failed("best", agent="expert"),
    ]
    output = aggregate(rule, parents, ALL).output
    assert output["result"] == "j"
    assert output["resolution"]["chosen"] == ["careful"]
    assert output["resolution"]["resolved"] is True
    assert output["consensus"] == {"type": "partial", "confidence": 0.3333, "agreeing": 1, "of": 3}
    assert {(c["agent1"], c["agent2"]) for c in output["conflicts"]} == {
        ("intern", "expert"),
        ("junior", "expert"),
    }
    # Agents not in the list rank after every listed one.
    only_unlisted = [done("quick", "q", agent="intern"), failed("best", agent="expert")]
    assert aggregate(rule, only_unlisted, ALL).output["result"] == "q"


def test_first_success_takes_the_parent_that_finished_first() -> None:
    rule = JoinRule(aggregate="first_success", tolerate_failures=True)
    parents = [done("a", "late", at=20.0), failed("b"), done("c", "early", at=10.0)]
    output = aggregate(rule, parents, ALL).output
    assert output["result"] == "early"
    assert output["resolution"]["chosen"] == ["c"]


def test_a_join_none_of_whose_parents_completed_fails() -> None:
    rule = JoinRule(aggregate="first_success", tolerate_failures=True)
    result = aggregate(rule, [failed("a"), dropped(running("b"))], DEADLINE)
    assert result.status == StepStatus.FAILED
    assert result.error_type == "NoParentSucceeded"
    assert result.error == (
        "none of its 2 parents completed ('a' failed (RuntimeError: a broke); "
        "'b' cancelled (cancelled by the join))"
    )


def test_the_parents_a_join_dropped_are_recorded_with_what_they_were_doing() -> None:
    rule = JoinRule(quorum=1, deadline=3)
    parents = [done("a", 1), dropped(running("b")), dropped(pending("c"))]
    output = aggregate(rule, parents, QUORUM).output
    assert output["trigger"] == "quorum"
    assert output["parents"] == [
        {"step": "a", "agent": "a", "status": "completed"},
        {
            "step": "b",
            "agent": "b",
            "status": "cancelled",
            "was": "running",
            "reason": "cancelled by the join",
        },
        {
            "step": "c",
            "agent": "c",
            "status": "cancelled",
            "was": "pending",
            "reason": "cancelled by the join",
        },
    ]
    # A parent dropped by the join is neither a success nor a failure.
    assert output["consensus"] == {"type": "success", "confidence": 1.0, "agreeing": 1, "of": 1}
    assert output["conflicts"] == []


def test_conflicts_are_bounded_and_the_rest_counted() -> None:
    rule = JoinRule(aggregate="majority", tolerate_failures=True)
    parents = [done(f"s{i}", i) for i in range(30)] + [failed(f"f{i}") for i in range(10)]
    output = aggregate(rule, parents, ALL).output
    everything = 30 * 10 + 30 * 29 // 2
    assert len(output["conflicts"]) == MAX_CONFLICTS
    assert output["conflicts_omitted"] == everything - MAX_CONFLICTS


def test_a_reducer_is_shown_every_result_and_its_answer_becomes_the_result() -> None:
    rule = JoinRule(aggregate="reducer", reducer="judge", field="score", tolerate_failures=True)
    parents = [done("a", {"score": 1}), done("b", {"score": 2}), failed("c")]
    given = reducer_input(rule, parents, ALL)
    assert given["parents"][0] == {
        "step": "a",
        "agent": "a",
        "status": "completed",
        "output": {"score": 1},
    }
    assert given["parents"][2]["error"] == "RuntimeError: c broke"
    assert given["trigger"] == "all"
    assert len(given["conflicts"]) == 3  # a/c, b/c, and a/b on score
    output = reduced(rule, parents, ALL, {"score": 1.5})
    assert output["result"] == {"score": 1.5}
    assert output["conflicts"] == given["conflicts"]
    assert output["resolution"] == {
        "resolved": True,
        "strategy": "reducer",
        "recommendation": RECOMMENDATION,
        "reducer": "judge",
    }
