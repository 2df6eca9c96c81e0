"""Human approval, decided on the state read: pure, like ``decisions``.

A step with ``approval`` asks for a decision the first time its delegation runs (after
its dependencies and its condition), then holds nothing while it waits: the request is
a row of ``troupe_approvals`` and the step's status, and a timer message wakes the step
at the approval's timeout. A decision (``manage.py approve``, ``ExecutionHandle.approve``,
or the timeout) is recorded by compare-and-set, and the step's delegation is sent
again: approved, it calls its agent (a gate without an agent completes with the
decision as its output); rejected, it fails with ``ApprovalRejected``.

Nothing here touches the database, the broker or the clock: ``now`` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from orchestration.errors import ApprovalRejected
from orchestration.spec import ApprovalSpec
from orchestration.team_limits import MAX_TEXT
from workflows.status import StepStatus

APPROVED = "approved"
REJECTED = "rejected"
# decided_by of a decision the approval's timeout made.
TIMEOUT = "timeout"
WAITING_APPROVAL = StepStatus.WAITING_APPROVAL


class ApprovalState(Protocol):
    """What the engine reads of a ``troupe_approvals`` row (datetimes timezone-aware)."""

    @property
    def timeout_at(self) -> datetime: ...
    @property
    def decision(self) -> str | None: ...
    @property
    def decided_by(self) -> str | None: ...
    @property
    def comment(self) -> str | None: ...
    @property
    def decided_at(self) -> datetime | None: ...


# --- what a delegation of a gated step does ------------------------------------------


@dataclass(frozen=True)
class RequestApproval:
    """No request yet: record it, pause the step, set the timer for its timeout."""

    prompt: str
    timeout_at: datetime


@dataclass(frozen=True)
class AwaitApproval:
    """Asked, undecided, not due (a duplicate or resumed message): its timer is set,
    nothing to do."""


@dataclass(frozen=True)
class ApplyTimeout:
    """Asked, undecided and due (its timer was lost, or this copy came later): record
    the ``on_timeout`` decision, then go on as for any decision."""

    decision: str
    comment: str


@dataclass(frozen=True)
class PassGate:
    """Approved, and the step has no agent: it completes with the decision as output."""

    output: dict[str, Any]


@dataclass(frozen=True)
class RejectGate:
    """Rejected: the step fails without a call (its dependents are skipped)."""

    error: ApprovalRejected


# What the delegation's shell carries out (a rejection is the engine's ``Refuse``).
GateDecision = RequestApproval | AwaitApproval | ApplyTimeout | PassGate


def gate(
    spec: ApprovalSpec, state: ApprovalState | None, now: datetime, *, agentless: bool
) -> GateDecision | RejectGate | None:
    """What a delegation of a step with ``spec`` does before any call. None: approved,
    go on to the agent."""
    if state is None:
        return RequestApproval(spec.prompt, now + timedelta(seconds=spec.timeout))
    if state.decision is None:
        if now < state.timeout_at:
            return AwaitApproval()
        return ApplyTimeout(*timeout_decision(spec))
    if state.decision != APPROVED:
        return RejectGate(ApprovalRejected(rejection(state)))
    if agentless:
        return PassGate(gate_output(state))
    return None


def timeout_decision(spec: ApprovalSpec) -> tuple[str, str]:
    """(decision, comment) recorded when nobody decided in time."""
    decision = APPROVED if spec.on_timeout == "approve" else REJECTED
    return decision, f"no decision within {spec.timeout:g}s (on_timeout: {spec.on_timeout})"


def gate_output(state: ApprovalState) -> dict[str, Any]:
    """A gate's output: the decision, who made it, their comment, and when."""
    return {
        "decision": state.decision,
        "by": state.decided_by,
        "comment": state.comment,
        "at": state.decided_at.isoformat() if state.decided_at else None,
    }


def rejection(state: ApprovalState) -> str:
    """The failed step's error message."""
    if state.decided_by == TIMEOUT:
        return f"approval timed out: {state.comment}"
    said = f": {state.comment}" if state.comment else ""
    return f"rejected by {state.decided_by}{said}"


# --- the timer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Rearm:
    """Not due yet (the broker bounds how long a message may wait): wait again."""

    seconds: float


@dataclass(frozen=True)
class Fire:
    """Due and undecided: record ``decision`` by the timeout, then send the step."""

    decision: str
    comment: str


TimerAction = Rearm | Fire | None


def on_timer(
    spec: ApprovalSpec, state: ApprovalState | None, step_status: str | None, now: datetime
) -> TimerAction:
    """What a timer message does. None: the step waits no more (decided, and its
    decider sent it on; or stopped)."""
    if state is None or state.decision is not None or step_status != WAITING_APPROVAL:
        return None
    remaining = (state.timeout_at - now).total_seconds()
    if remaining > 0:
        return Rearm(remaining)
    return Fire(*timeout_decision(spec))


# --- a person's decision ----------------------------------------------------------------


def approval_of(spec: Mapping[str, Any], step_id: str) -> ApprovalSpec | None:
    """The approval a stored team spec (JSON) declares for a step; None if the step
    declares none or does not exist."""
    for step in spec.get("workflow", {}).get("steps", ()):
        if step.get("id") == step_id:
            declared = step.get("approval")
            return None if declared is None else ApprovalSpec.model_validate(declared)
    return None


# The columns that keep them: decided_by is 200 characters; a comment is bounded as a
# team file's texts are.
MAX_DECIDER = 200
MAX_COMMENT = MAX_TEXT


def check_decision(spec: ApprovalSpec, by: str, comment: str | None) -> str | None:
    """Why ``by`` may not decide this approval (with this comment), or None if they may.
    (``approvers`` guards against deciding by mistake; it is not authentication: ``by``
    is whatever the decider says they are.)"""
    if not by.strip() or len(by) > MAX_DECIDER:
        return f"the decider's name must be 1 to {MAX_DECIDER} characters"
    if by == TIMEOUT:
        return f"{TIMEOUT!r} is reserved for decisions an approval's timeout makes"
    if comment is not None and len(comment) > MAX_COMMENT:
        return f"the comment is longer than {MAX_COMMENT:,} characters"
    if spec.approvers and by not in spec.approvers:
        return f"{by!r} is not an approver of this step (approvers: {', '.join(spec.approvers)})"
    return None


def not_waiting(step_id: str, step_status: str | None, state: ApprovalState | None) -> str:
    """Why a decision on ``step_id`` was refused, given what is recorded now."""
    if state is not None and state.decision is not None:
        when = f" at {state.decided_at.isoformat(timespec='seconds')}" if state.decided_at else ""
        return f"step {step_id!r} was already {state.decision} by {state.decided_by}{when}"
    if step_status is None:
        return f"no step {step_id!r} in this execution"
    return f"step {step_id!r} is not waiting for approval (it is {step_status})"
