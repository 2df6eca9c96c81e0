"""An execution's final status and output, from its plan and its steps' records. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflows.plan import ExecutionPlan, Strategy
from workflows.status import ExecutionStatus, SkipCause, StepStatus


@dataclass(frozen=True)
class StepRecord:
    status: str
    output: Any
    error: str | None
    # Why it was skipped or cancelled (``SkipCause``), if recorded.
    cause: str | None = None


@dataclass(frozen=True)
class ExecutionOutcome:
    status: str
    output: Any
    error: str | None


def decide_outcome(plan: ExecutionPlan, steps: Mapping[str, StepRecord]) -> ExecutionOutcome:
    failed = [
        sid
        for sid in (s.id for s in plan.steps)
        if steps[sid].status == StepStatus.FAILED and not _absorbed(plan, sid, steps)
    ]
    # A parent a join stopped waiting for was cancelled by the run itself, not by a stop.
    cancelled = any(
        record.status == StepStatus.CANCELLED and record.cause != SkipCause.JOIN
        for record in steps.values()
    )
    status: ExecutionStatus
    if failed:
        first = steps[failed[0]]
        error: str | None = f"step {failed[0]!r} failed: {first.error or 'unknown error'}"
        status = ExecutionStatus.FAILED
    elif cancelled:
        status, error = ExecutionStatus.CANCELLED, "execution cancelled"
    else:
        status, error = ExecutionStatus.COMPLETED, None
    return ExecutionOutcome(status=status, output=_output(plan, steps), error=error)


def _absorbed(plan: ExecutionPlan, step_id: str, steps: Mapping[str, StepRecord]) -> bool:
    """Whether a failed step's failure is part of a join's result instead of the
    execution's: every step that depends on it is a join that absorbs failures
    (``tolerate_failures``, or a quorum) and ran (its own failure fails the execution)."""
    dependents = plan.step(step_id).dependents
    if not dependents:
        return False
    for sid in dependents:
        join = plan.step(sid).join
        record = steps.get(sid)
        if join is None or not join.absorbs_failures or record is None:
            return False
        if record.status not in (StepStatus.COMPLETED, StepStatus.FAILED):
            return False
    return True


def _output(plan: ExecutionPlan, steps: Mapping[str, StepRecord]) -> Any:
    done = {
        sid: record.output for sid, record in steps.items() if record.status == StepStatus.COMPLETED
    }
    if plan.strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE):
        # The last step's output; if a condition skipped it, the last one that ran.
        for step in reversed(plan.steps):
            if step.id in done:
                return done[step.id]
        return None
    if plan.strategy is Strategy.PARALLEL:
        return {sid: done.get(sid) for sid in plan.outputs_from}
    if len(plan.outputs_from) == 1:
        return done.get(plan.outputs_from[0])
    # Several end steps: the ones that ran (an untaken branch is not an output).
    return {sid: done[sid] for sid in plan.outputs_from if sid in done}
