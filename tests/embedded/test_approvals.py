"""Human approval end to end in embedded mode: the Python API (Team.enqueue,
ExecutionHandle.approve), an in-process worker, SQLite state.

tests/integration/test_approvals_distributed.py runs the same semantics through
`manage.py approve` and a real worker process; tests/embedded/test_approval_records.py
the records on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestration import ExecutionHandle, ExecutionReport, Team
from orchestration.errors import ApprovalRefused
from tests.support import teams
from tests.support.approval_agents import called, team_yaml

pytestmark = pytest.mark.timeout(60)


def waiting(handle: ExecutionHandle, step: str, seconds: float = 10) -> ExecutionReport:
    """The report once ``step`` waits for approval (failing after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while True:
        report = handle.report(usage=False)
        found = {s.id: s for s in report.steps}[step]
        if found.status == "waiting_approval":
            return report
        assert report.status not in ("completed", "failed", "cancelled"), report
        assert time.monotonic() < deadline, f"{step} never waited for approval: {report}"
        time.sleep(0.02)


def steps_of(report: ExecutionReport) -> dict[str, Any]:
    return {step.id: step for step in report.steps}


def enqueue(steps: list[dict[str, Any]], log: Path) -> ExecutionHandle:
    return Team.from_yaml(team_yaml(steps), source="approvals.yaml").enqueue({"log": str(log)})


def test_agent_is_called_only_after_approval(runtime: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    handle = enqueue(
        [
            {
                "id": "deploy",
                "agent": "record",
                "approval": {"prompt": "Deploy?", "timeout": 60, "approvers": ["alice", "bob"]},
            },
            {"id": "announce", "agent": "record", "after": ["deploy"]},
        ],
        log,
    )
    report = waiting(handle, "deploy")
    approval = steps_of(report)["deploy"].approval
    assert approval is not None
    assert approval.prompt == "Deploy?"
    assert approval.decision is None
    assert approval.on_timeout == "reject"
    assert approval.approvers == ["alice", "bob"]
    assert report.status == "running"
    assert steps_of(report)["announce"].status == "pending"
    assert called(log, "deploy") == 0

    with pytest.raises(ApprovalRefused, match="'mallory' is not an approver"):
        handle.approve("deploy", by="mallory")
    with pytest.raises(ApprovalRefused, match="reserved"):
        handle.approve("deploy", by="timeout")
    assert steps_of(handle.report())["deploy"].status == "waiting_approval"

    decided = handle.approve("deploy", comment="ship it", by="alice")
    assert (decided.decision, decided.decided_by, decided.comment) == (
        "approved",
        "alice",
        "ship it",
    )
    assert decided.decided_at is not None
    with pytest.raises(ApprovalRefused, match="already approved by alice"):
        handle.approve("deploy", reject=True, by="bob")

    final = handle.wait(timeout=20)
    assert final.status == "completed", final
    assert called(log, "deploy") == 1
    assert called(log, "announce") == 1
    assert steps_of(final)["deploy"].approval == decided


def test_a_gate_completes_with_the_decision_as_its_output(runtime: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    handle = enqueue(
        [
            {"id": "sign_off", "approval": {"prompt": "Sign off?", "timeout": 60}},
            {"id": "after", "agent": "record", "after": ["sign_off"]},
        ],
        log,
    )
    report = waiting(handle, "sign_off")
    assert steps_of(report)["sign_off"].agent == "(approval)"
    handle.approve("sign_off", comment="looks right", by="carol")

    final = handle.wait(timeout=20)
    assert final.status == "completed", final
    rows = {row.step_id: row for row in runtime.executions.steps(handle.execution_id)}
    output = rows["sign_off"].output
    assert {k: output[k] for k in ("decision", "by", "comment")} == {
        "decision": "approved",
        "by": "carol",
        "comment": "looks right",
    }
    assert output["at"] == steps_of(final)["sign_off"].approval.decided_at  # type: ignore[union-attr]
    assert called(log, "after") == 1


def test_rejection_fails_the_step_and_skips_its_dependents(runtime: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    handle = enqueue(
        [
            {"id": "risky", "agent": "record", "approval": {"prompt": "Run it?", "timeout": 60}},
            {"id": "next", "agent": "record", "after": ["risky"]},
            {"id": "independent", "agent": "record"},
        ],
        log,
    )
    waiting(handle, "risky")
    handle.approve("risky", reject=True, comment="too risky", by="dave")

    final = handle.wait(timeout=20)
    steps = steps_of(final)
    assert final.status == "failed"
    assert steps["risky"].status == "failed"
    assert steps["risky"].error == "ApprovalRejected: rejected by dave: too risky"
    assert steps["next"].status == "skipped"
    assert steps["independent"].status == "completed"
    assert called(log, "risky") == 0
    assert called(log, "next") == 0
    audit = handle.attempts()
    assert [(a.step, a.outcome) for a in audit if a.step == "risky"] == [("risky", "rejected")]


@pytest.mark.parametrize("on_timeout", ["approve", "reject"])
def test_timeout_applies_on_timeout(runtime: Any, tmp_path: Path, on_timeout: str) -> None:
    log = tmp_path / "calls.log"
    handle = enqueue(
        [
            {
                "id": "late",
                "agent": "record",
                "approval": {"prompt": "Anyone?", "timeout": 1, "on_timeout": on_timeout},
            }
        ],
        log,
    )
    final = handle.wait(timeout=20)
    late = steps_of(final)["late"]
    assert late.approval is not None
    assert late.approval.decided_by == "timeout"
    assert late.approval.comment == f"no decision within 1s (on_timeout: {on_timeout})"
    if on_timeout == "approve":
        assert final.status == "completed", final
        assert late.approval.decision == "approved"
        assert called(log, "late") == 1
    else:
        assert final.status == "failed", final
        assert late.approval.decision == "rejected"
        assert late.error == (
            "ApprovalRejected: approval timed out: no decision within 1s (on_timeout: reject)"
        )
        assert called(log, "late") == 0
    with pytest.raises(ApprovalRefused, match="already"):
        handle.approve("late", by="erin")


def test_refusals_name_the_reason(runtime: Any, tmp_path: Path) -> None:
    handle = enqueue(
        [
            {"id": "first", "approval": {"prompt": "One?", "timeout": 60}},
            {
                "id": "second",
                "agent": "record",
                "after": ["first"],
                "approval": {"prompt": "Two?", "timeout": 60},
            },
            {"id": "plain", "agent": "record", "after": ["first"]},
        ],
        tmp_path / "calls.log",
    )
    waiting(handle, "first")
    with pytest.raises(ApprovalRefused, match=r"'plain' of execution .* has no approval"):
        handle.approve("plain")
    with pytest.raises(ApprovalRefused, match=r"'nowhere' of execution .* has no approval"):
        handle.approve("nowhere")
    with pytest.raises(
        ApprovalRefused, match=r"'second' is not waiting for approval \(it is pending"
    ):
        handle.approve("second")
    handle.cancel("test over")


def test_stop_cancels_a_waiting_step(runtime: Any, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    handle = enqueue(
        [{"id": "held", "agent": "record", "approval": {"prompt": "Go?", "timeout": 60}}], log
    )
    waiting(handle, "held")
    assert handle.cancel("stopped while waiting")
    final = handle.wait(timeout=10)
    assert final.status == "cancelled"
    assert steps_of(final)["held"].status == "cancelled"
    with pytest.raises(ApprovalRefused, match=r"not waiting for approval \(it is cancelled\)"):
        handle.approve("held", by="frank")
    assert called(log, "held") == 0


def test_a_map_step_is_approved_once_before_its_items_are_added(runtime: Any) -> None:
    team = Team.from_yaml(
        teams.team_yaml(
            "dag",
            [
                {"id": "split", "agent": "split"},
                {
                    "id": "each",
                    "agent": "per_item",
                    "for_each": "steps.split.output.files",
                    "approval": {"prompt": "Review every file?", "timeout": 60},
                },
            ],
        ),
        source="map-approval.yaml",
    )
    handle = team.enqueue(["a.py", "b.py"])
    report = waiting(handle, "each")
    assert [step.id for step in report.steps] == ["split", "each"]
    handle.approve("each", by="jo")
    final = handle.wait(timeout=20)
    assert final.status == "completed", final
    assert [step.id for step in final.steps] == ["split", "each", "each[0]", "each[1]"]
    assert [item["item"] for item in final.output] == ["a.py", "b.py"]
