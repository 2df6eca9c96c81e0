"""Joins end to end in embedded mode (the in-process worker, SQLite): aggregation with
conflicts, tolerated failures, a quorum and a deadline that cancel the parents still
undecided, and the records those cancels and late results leave; then the store's part
of it on SQLite and PostgreSQL: arming a deadline once, a late result that never
overwrites a cancelled parent, and the reaper finding a join whose timer was lost."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import ExecutionReport, Team
from orchestration.constants import CANCELLED, COMPLETED, SKIP_JOIN
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.repository import AttemptEnd, Countdown, Store, now
from orchestration.team_file import parse_team
from tests.support.services import run_manage
from workers.reaper import reap
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(60)

VOTERS = {"va": "alpha", "vb": "beta", "vc": "gamma", "vd": "delta"}


def join_team(
    join: dict[str, Any],
    voters: tuple[str, ...] = ("va", "vb", "vc"),
    after: dict[str, list[str]] | None = None,
    first: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Voters (each its own agent, scripted by the input) and a join ``vote`` of them;
    ``first``: steps (of agent alpha) that run before, which ``after`` may name."""
    agents: dict[str, Any] = {
        name: {
            "target": "tests.support.join_agents:voter",
            "timeout": 90,
            "retry": {"max_attempts": 1},
        }
        for name in VOTERS.values()
    }
    agents["judge"] = {"target": "tests.support.join_agents:judge", "retry": {"max_attempts": 1}}
    steps: list[dict[str, Any]] = [{"id": sid, "agent": "alpha"} for sid in first]
    steps += [
        {
            "id": sid,
            "agent": VOTERS[sid],
            **({"after": after[sid]} if after and sid in after else {}),
        }
        for sid in voters
    ]
    steps.append({"id": "vote", "after": list(voters), "join": join})
    return {"name": "joins", "agents": agents, "workflow": {"strategy": "dag", "steps": steps}}


def run(data: dict[str, Any], scripts: dict[str, Any]) -> ExecutionReport:
    team = Team.from_yaml(yaml.safe_dump(data, sort_keys=False), source="joins.yaml")
    return team.run(scripts, timeout=40)


def steps_of(report: ExecutionReport) -> dict[str, Any]:
    return {step.id: step for step in report.steps}


def wait_for(condition: Callable[[], Any], seconds: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def vote(verdict: str, **more: Any) -> dict[str, Any]:
    return {"output": {"verdict": verdict, **more}}


# --- aggregation ----------------------------------------------------------------------------


def test_majority_over_a_field_reports_field_and_failure_conflicts(runtime: Any) -> None:
    data = join_team(
        {"aggregate": "majority", "field": "verdict", "tolerate_failures": True},
        voters=("va", "vb", "vc", "vd"),
    )
    report = run(
        data,
        {
            "va": vote("approve", by="alpha"),
            "vb": vote("reject"),
            "vc": vote("approve", by="gamma"),
            "vd": {"fail": "delta cannot decide"},
        },
    )
    # The failure is part of the join's result, not the execution's.
    assert report.status == "completed", report
    steps = steps_of(report)
    assert steps["vd"].status == "failed"
    assert steps["vote"].status == "completed"
    assert steps["vote"].agent == "(join)"
    output = report.output
    assert output["result"] == {"verdict": "approve", "by": "alpha"}
    assert output["consensus"] == {"type": "partial", "confidence": 0.5, "agreeing": 2, "of": 4}
    issues = {(c["agent1"], c["agent2"]): c["issue"] for c in output["conflicts"]}
    assert issues == {
        ("alpha", "delta"): "contradictory results (success vs failure): 'vd' failed "
        "(PermanentAgentError: delta cannot decide)",
        ("beta", "delta"): "contradictory results (success vs failure): 'vd' failed "
        "(PermanentAgentError: delta cannot decide)",
        ("gamma", "delta"): "contradictory results (success vs failure): 'vd' failed "
        "(PermanentAgentError: delta cannot decide)",
        ("alpha", "beta"): 'different values of \'verdict\': "approve" vs "reject"',
        ("beta", "gamma"): 'different values of \'verdict\': "reject" vs "approve"',
    }
    assert output["resolution"] == {
        "resolved": True,
        "strategy": "majority",
        "recommendation": "review the results manually, or add a validation agent",
        "chosen": ["va", "vc"],
    }
    assert output["trigger"] == "all"


def test_priority_takes_the_first_listed_agent_that_succeeded(runtime: Any) -> None:
    data = join_team(
        {
            "aggregate": "priority",
            "priority": ["delta", "gamma", "alpha"],
            "field": "verdict",
            "tolerate_failures": True,
        },
        voters=("va", "vb", "vc", "vd"),
    )
    report = run(
        data,
        {
            "va": vote("approve"),
            "vb": vote("approve"),
            "vc": vote("reject", why="tests fail"),
            "vd": {"fail": "delta is down"},
        },
    )
    assert report.status == "completed", report
    output = report.output
    # delta failed: gamma is next in the list, ahead of the majority.
    assert output["result"] == {"verdict": "reject", "why": "tests fail"}
    assert output["resolution"]["chosen"] == ["vc"]
    assert output["resolution"]["resolved"] is True
    pairs = {(c["agent1"], c["agent2"]) for c in output["conflicts"]}
    assert pairs == {
        ("alpha", "delta"),
        ("beta", "delta"),
        ("gamma", "delta"),
        ("alpha", "gamma"),
        ("beta", "gamma"),
    }
    assert output["consensus"]["confidence"] == 0.25


def test_a_join_that_does_not_tolerate_failures_is_skipped_as_any_step(runtime: Any) -> None:
    report = run(
        join_team({"aggregate": "collect"}),
        {"va": vote("a"), "vb": {"fail": "no"}, "vc": vote("c")},
    )
    assert report.status == "failed"
    assert report.error == "step 'vb' failed: PermanentAgentError: no"
    vote_step = steps_of(report)["vote"]
    assert vote_step.status == "skipped"
    assert vote_step.error == "upstream step 'vb' did not complete"


def test_first_success_with_a_quorum_of_one_takes_the_winner_and_cancels_the_rest(
    runtime: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "release-va"
    report = run(
        join_team({"aggregate": "first_success", "quorum": 1}),
        {
            "va": {"wait_for": str(gate), "output": "slow"},
            "vb": {"fail": "beta broke"},
            "vc": {"output": "fast"},
        },
    )
    assert report.status == "completed", report
    assert report.output["result"] == "fast"
    assert report.output["trigger"] == "quorum"
    steps = steps_of(report)
    assert steps["va"].status == "cancelled"
    # Running, or (if its call had not been marked yet) pending: either way cancelled.
    assert steps["va"].error.startswith("cancelled while ")
    assert steps["va"].error.endswith(": join 'vote' met its quorum of 1")
    gate.touch()


def test_a_reducer_is_given_every_result_and_gives_the_result(runtime: Any) -> None:
    report = run(
        join_team(
            {
                "aggregate": "reducer",
                "reducer": "judge",
                "field": "score",
                "tolerate_failures": True,
            }
        ),
        {
            "va": {"output": {"score": 3}},
            "vb": {"fail": "beta broke"},
            "vc": {"output": {"score": 5}},
        },
    )
    assert report.status == "completed", report
    assert steps_of(report)["vote"].agent == "judge"
    output = report.output
    assert output["result"] == {
        "shown": [["va", "completed"], ["vb", "failed"], ["vc", "completed"]],
        "conflicts": 3,
        "outputs": ["va", "vc"],
        "score": 5,
    }
    assert output["resolution"]["strategy"] == "reducer"
    assert output["resolution"]["reducer"] == "judge"
    assert len(output["conflicts"]) == 3


# --- quorum and deadline --------------------------------------------------------------------


def test_a_quorum_runs_without_the_hanging_parent_and_its_late_result_changes_nothing(
    runtime: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "release-vc"
    report = run(
        # va and vb wait for a first step, so vc is under way (the embedded worker has
        # two threads) before they meet the quorum.
        join_team(
            {"aggregate": "majority", "field": "verdict", "quorum": 2, "deadline": 30},
            first=("kick",),
            after={"va": ["kick"], "vb": ["kick"]},
        ),
        {
            "kick": {"sleep": 0.3},
            "va": vote("approve"),
            "vb": vote("approve"),
            "vc": {"wait_for": str(gate)},
        },
    )
    assert report.status == "completed", report
    recorded = report.output
    assert recorded["result"] == {"verdict": "approve"}
    assert recorded["trigger"] == "quorum"
    assert recorded["parents"][2] == {
        "step": "vc",
        "agent": "gamma",
        "status": "cancelled",
        "was": "running",
        "reason": "cancelled while running: join 'vote' met its quorum of 2",
    }
    gate.touch()
    wait_for(
        lambda: any(a.outcome for a in runtime.executions.attempts(report.execution_id, "vc")),
        what="vc's late result",
    )
    rows = {row.step_id: row for row in runtime.executions.steps(report.execution_id)}
    assert rows["vc"].status == CANCELLED
    assert rows["vc"].output is None
    assert rows["vote"].output == recorded
    after = runtime.handle(report.execution_id).report()
    assert (after.status, after.output) == ("completed", recorded)


def test_a_deadline_runs_the_join_with_one_result_of_three(runtime: Any, tmp_path: Path) -> None:
    gate = tmp_path / "release-vb"
    started = time.monotonic()
    report = run(
        # vc waits for vb: still pending (never sent) when the deadline passes.
        join_team({"deadline": 1.5, "tolerate_failures": True}, after={"vc": ["vb"]}),
        {"va": vote("approve"), "vb": {"wait_for": str(gate)}, "vc": vote("late")},
    )
    elapsed = time.monotonic() - started
    assert report.status == "completed", report
    assert 1.5 <= elapsed < 30
    output = report.output
    assert output["trigger"] == "deadline"
    assert output["result"] == {"va": {"verdict": "approve"}, "vb": None, "vc": None}
    assert [(p["step"], p["status"], p.get("was")) for p in output["parents"]] == [
        ("va", "completed", None),
        ("vb", "cancelled", "running"),
        ("vc", "cancelled", "pending"),
    ]
    steps = steps_of(report)
    assert steps["vb"].error == "cancelled while running: join 'vote' reached its deadline of 1.5s"
    assert steps["vc"].error == "cancelled while pending: join 'vote' reached its deadline of 1.5s"
    gate.touch()
    wait_for(
        lambda: any(a.outcome for a in runtime.executions.attempts(report.execution_id, "vb")),
        what="vb's late result",
    )
    rows = {row.step_id: row for row in runtime.executions.steps(report.execution_id)}
    assert (rows["vb"].status, rows["vc"].status) == (CANCELLED, CANCELLED)
    # vc was never called: its cancel came before its turn.
    assert runtime.executions.attempts(report.execution_id, "vc") == []
    assert rows["vote"].output == output


def test_an_unreachable_quorum_fails_at_once(runtime: Any, tmp_path: Path) -> None:
    gate = tmp_path / "release-vc"
    report = run(
        join_team({"quorum": 2, "deadline": 30}),
        {
            "va": {"fail": "alpha broke"},
            "vb": {"fail": "beta broke"},
            "vc": {"wait_for": str(gate)},
        },
    )
    try:
        assert report.status == "failed"
        assert report.error == (
            "step 'vote' failed: QuorumUnreachable: quorum of 2 of 3 parents can no longer "
            "be met: 2 gave no result ('va' failed (PermanentAgentError: alpha broke); "
            "'vb' failed (PermanentAgentError: beta broke))"
        )
        assert steps_of(report)["vc"].status == "cancelled"
    finally:
        gate.touch()


def test_validate_shows_each_joins_rule(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = join_team(
        {
            "aggregate": "majority",
            "field": "verdict",
            "quorum": 2,
            "deadline": 5,
            "tolerate_failures": True,
        }
    )
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    result = run_manage(["validate", str(path)], cli_env)
    assert result.returncode == 0, result.stderr
    assert (
        "join majority of 'verdict', quorum 2, deadline 5s, tolerates failures" in result.stdout
    ), result.stdout


# --- the store, on SQLite and PostgreSQL ----------------------------------------------------


def enqueue(url: str, join: dict[str, Any]) -> tuple[Store, str]:
    spec = parse_team(yaml.safe_dump(join_team(join)), source="joins.yaml")
    store = Store(url)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), None
    )
    return store, execution_id


def test_a_deadline_is_armed_once(url: str) -> None:
    store, execution_id = enqueue(url, {"deadline": 5})
    records = DelegationRecords(store)
    at = now() + timedelta(seconds=5)
    assert records.arm_join_deadline(execution_id, "vote", at)
    assert not records.arm_join_deadline(execution_id, "vote", at + timedelta(seconds=1))
    row = records.steps_by_id(execution_id, ["vote"])["vote"]
    assert row.next_attempt_at is not None


def test_a_late_result_never_overwrites_a_parent_the_join_cancelled(url: str) -> None:
    store, execution_id = enqueue(url, {"quorum": 2})
    records = DelegationRecords(store)
    assert records.begin_attempt(execution_id, "vc", "gamma", 1, "task-vc", "w") == "started"
    cancelled = records.decide_without_call(
        execution_id,
        "vc",
        CANCELLED,
        Countdown(dependents=("vote",)),
        cause=SKIP_JOIN,
        reason="cancelled while running: join 'vote' met its quorum of 2",
    )
    assert cancelled is not None and cancelled.counts == (("vote", 2),)
    end = AttemptEnd(execution_id, "vc", 1, "gamma", "task-vc", "w", now(), 5)
    assert records.record_success(end, {"late": True}, Countdown(dependents=("vote",))) is None
    rows = records.steps_by_id(execution_id, ["vc", "vote"])
    assert (rows["vc"].status, rows["vc"].output) == (CANCELLED, None)
    # Counted down once, by the cancel.
    assert rows["vote"].waiting == 2
    attempt = records.attempt_row(execution_id, "vc", 1)
    assert attempt is not None and attempt.outcome == "success"


def test_a_stopped_steps_result_is_still_kept(url: str) -> None:
    """Unlike a join's cancel, a stop leaves a call under way to record its result."""
    store, execution_id = enqueue(url, {"quorum": 2})
    records = DelegationRecords(store)
    ExecutionRecords(store).cancel_execution(execution_id, "stopped")
    end = AttemptEnd(execution_id, "va", 1, "alpha", "task-va", "w", now(), 5)
    decided = records.record_success(end, "kept", Countdown(dependents=("vote",)))
    assert decided is not None
    assert records.steps_by_id(execution_id, ["va"])["va"].status == COMPLETED


def test_the_reaper_resumes_a_join_whose_timer_was_lost(url: str) -> None:
    store, execution_id = enqueue(url, {"deadline": 1})
    records = DelegationRecords(store)
    # A parent hangs under a live lease: the execution does not look stalled.
    assert records.begin_attempt(execution_id, "va", "alpha", 1, "task-va", "w") == "started"
    records.arm_join_deadline(execution_id, "vote", now() - timedelta(seconds=20))
    resumed: list[str] = []
    reap(MaintenanceRecords(store), lease_ttl=15, stall_timeout=120, resume=resumed.append)
    assert resumed == [execution_id]
    # Once a lease: the next round leaves it to the first.
    again: list[str] = []
    reap(MaintenanceRecords(store), lease_ttl=15, stall_timeout=120, resume=again.append)
    assert again == []
