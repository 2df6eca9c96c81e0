"""The timer of a step waiting for approval, as the delegation's shell is for a step:
read, let ``orchestration.engine.approvals`` decide, carry it out. ``workers.tasks``
turns the result into messages."""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.engine import approvals as gates
from orchestration.store.approvals import ApprovalRecords
from orchestration.store.delegations import DelegationRecords
from orchestration.store.repository import now
from workers.delegation import team_of


@dataclass(frozen=True)
class TimerOutcome:
    # Not due yet: the timer goes out again with this countdown.
    rearm: float | None = None
    # The timeout was recorded: send the step on (its agent, the attempt to carry).
    send: tuple[str, int] | None = None


def run_timer(
    records: DelegationRecords,
    approvals: ApprovalRecords,
    execution_id: str,
    step_id: str,
    max_countdown: float,
) -> TimerOutcome:
    spec = team_of(records, execution_id).approvals.get(step_id)
    if spec is None:
        return TimerOutcome()
    action = gates.on_timer(
        spec,
        approvals.get(execution_id, step_id),
        approvals.step_status(execution_id, step_id),
        now(),
    )
    if isinstance(action, gates.Rearm):
        return TimerOutcome(rearm=min(action.seconds, max_countdown))
    if isinstance(action, gates.Fire):
        decided = approvals.decide(
            execution_id, step_id, action.decision, gates.TIMEOUT, action.comment
        )
        if decided is not None:
            return TimerOutcome(send=(decided.agent, decided.attempts + 1))
    return TimerOutcome()
