"""Human approval's decisions, pure: on built state, with the clock passed in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from orchestration.engine import approvals as gates
from orchestration.engine import decisions as d
from orchestration.errors import ApprovalRejected
from orchestration.spec import ApprovalSpec, TeamSpec
from workflows.plan import build_plan

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Asked:
    timeout_at: datetime
    decision: str | None = None
    decided_by: str | None = None
    comment: str | None = None
    decided_at: datetime | None = None


def spec(**fields: Any) -> ApprovalSpec:
    return ApprovalSpec.model_validate({"prompt": "Go?", "timeout": 30, **fields})


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


# --- the gate ------------------------------------------------------------------------------


def test_first_delegation_asks_with_the_timeout_from_now() -> None:
    assert gates.gate(spec(), None, NOW, agentless=False) == gates.RequestApproval("Go?", later(30))


def test_undecided_waits_until_its_timeout_then_applies_on_timeout() -> None:
    asked = Asked(timeout_at=later(30))
    assert gates.gate(spec(), asked, later(29.9), agentless=False) == gates.AwaitApproval()
    assert gates.gate(spec(), asked, later(30), agentless=False) == gates.ApplyTimeout(
        "rejected", "no decision within 30s (on_timeout: reject)"
    )
    assert gates.gate(spec(on_timeout="approve"), asked, later(31), agentless=True) == (
        gates.ApplyTimeout("approved", "no decision within 30s (on_timeout: approve)")
    )


def test_approved_goes_on_to_the_agent_or_completes_a_gate() -> None:
    asked = Asked(later(30), "approved", "alice", "fine", later(5))
    assert gates.gate(spec(), asked, later(6), agentless=False) is None
    assert gates.gate(spec(), asked, later(6), agentless=True) == gates.PassGate(
        {"decision": "approved", "by": "alice", "comment": "fine", "at": later(5).isoformat()}
    )


def test_rejected_says_by_whom_or_that_it_timed_out() -> None:
    by_person = gates.gate(
        spec(), Asked(later(30), "rejected", "bob", "no", later(1)), NOW, agentless=False
    )
    assert isinstance(by_person, gates.RejectGate)
    assert str(by_person.error) == "rejected by bob: no"
    timed_out = gates.gate(
        spec(),
        Asked(later(30), "rejected", "timeout", "no decision within 30s", later(30)),
        later(31),
        agentless=True,
    )
    assert isinstance(timed_out, gates.RejectGate)
    assert str(timed_out.error) == "approval timed out: no decision within 30s"


# --- the timer -----------------------------------------------------------------------------


def test_timer_rearms_until_due_then_fires_and_stops_once_decided_or_stopped() -> None:
    asked = Asked(timeout_at=later(30))
    assert gates.on_timer(spec(), asked, "waiting_approval", later(10)) == gates.Rearm(20.0)
    assert gates.on_timer(spec(), asked, "waiting_approval", later(30)) == gates.Fire(
        "rejected", "no decision within 30s (on_timeout: reject)"
    )
    decided = Asked(later(30), "approved", "alice", None, later(3))
    assert gates.on_timer(spec(), decided, "pending", later(30)) is None
    assert gates.on_timer(spec(), asked, "cancelled", later(30)) is None
    assert gates.on_timer(spec(), None, "pending", later(30)) is None


# --- a person's decision -------------------------------------------------------------------


def test_who_may_decide() -> None:
    anyone, listed = spec(), spec(approvers=["alice", "bob"])
    assert gates.check_decision(anyone, "zed", None) is None
    assert gates.check_decision(listed, "bob", "ok") is None
    assert gates.check_decision(listed, "zed", None) == (
        "'zed' is not an approver of this step (approvers: alice, bob)"
    )
    assert "reserved" in (gates.check_decision(anyone, "timeout", None) or "")
    assert "1 to 200 characters" in (gates.check_decision(anyone, " ", None) or "")
    assert "1 to 200 characters" in (gates.check_decision(anyone, "x" * 201, None) or "")
    assert "longer than" in (gates.check_decision(anyone, "amy", "x" * 20_001) or "")


def test_why_a_decision_was_refused() -> None:
    decided = Asked(later(30), "rejected", "bob", None, later(2))
    assert gates.not_waiting("s", "failed", decided) == (
        f"step 's' was already rejected by bob at {later(2).isoformat(timespec='seconds')}"
    )
    assert gates.not_waiting("s", "pending", None) == (
        "step 's' is not waiting for approval (it is pending)"
    )
    assert gates.not_waiting("s", None, None) == "no step 's' in this execution"


def test_approval_of_a_stored_spec() -> None:
    stored = {
        "workflow": {
            "steps": [
                {"id": "a", "agent": "x"},
                {"id": "b", "approval": {"prompt": "B?", "timeout": 5, "approvers": ["al"]}},
            ]
        }
    }
    assert gates.approval_of(stored, "a") is None
    assert gates.approval_of(stored, "missing") is None
    assert gates.approval_of(stored, "b") == spec(prompt="B?", timeout=5, approvers=["al"])


# --- inside the delegation's decision ------------------------------------------------------

TEAM = TeamSpec.model_validate(
    {
        "name": "gated",
        "agents": {"worker": {"target": "tests.support.approval_agents:record"}},
        "workflow": {
            "strategy": "dag",
            "steps": [
                {"id": "up", "agent": "worker"},
                {
                    "id": "gated",
                    "agent": "worker",
                    "after": ["up"],
                    "approval": {"prompt": "Go?", "timeout": 30},
                },
                {"id": "gate", "after": ["up"], "approval": {"prompt": "Go?", "timeout": 30}},
            ],
        },
    }
)
PLAN = build_plan(TEAM)


def row(step_id: str, status: str = "pending", **fields: Any) -> Any:
    values: dict[str, Any] = {
        "execution_id": "e",
        "step_id": step_id,
        "agent": "worker",
        "attempts": 0,
        "skip_cause": None,
        "started_at": None,
        "duration_ms": None,
        "waiting": 0,
        "parent_id": None,
        "item_index": None,
        "item": None,
        "origin": None,
        "dependents": None,
        "fan_out": None,
        "status": status,
        "reason": None,
        "output": None,
        "error_type": None,
        "error_message": None,
    }
    values.update(fields)
    return SimpleNamespace(**values)


def view(
    step_id: str, approval: Asked | None, *, status: str = "pending", up: str = "completed"
) -> d.View:
    step = PLAN.step(step_id)
    rows = {step_id: row(step_id, status), "up": row("up", up)}
    gate = next(s.approval for s in TEAM.steps if s.id == step_id)
    return d.View(
        step=step,
        row=rows[step_id],
        rows=rows,
        execution_status="running",
        input=None,
        attempt=1,
        recorded=None,
        task_id="t",
        orphaned_by=None,
        lease_ttl=15,
        lost=0,
        max_attempts=1,
        now=NOW,
        gate=gate,
        approval=approval,
    )


def test_decide_asks_before_calling_and_calls_once_approved() -> None:
    assert isinstance(d.decide(view("gated", None)), gates.RequestApproval)
    asked = Asked(later(30))
    assert d.decide(view("gated", asked, status="waiting_approval")) == gates.AwaitApproval()
    approved = Asked(later(30), "approved", "al", None, later(1))
    assert isinstance(d.decide(view("gated", approved)), d.Call)
    assert isinstance(d.decide(view("gate", approved)), gates.PassGate)


def test_decide_refuses_a_rejected_step_as_an_audited_attempt() -> None:
    rejected = Asked(later(30), "rejected", "al", "no", later(1))
    decision = d.decide(view("gated", rejected))
    assert isinstance(decision, d.Refuse)
    assert decision.attempt == 1
    assert isinstance(decision.error, ApprovalRejected)


@pytest.mark.parametrize("up", ["failed", "cancelled"])
def test_a_step_whose_dependency_failed_is_skipped_without_asking(up: str) -> None:
    decision = d.decide(view("gated", None, up=up))
    assert isinstance(decision, d.Decide)
    assert decision.status == "skipped"
