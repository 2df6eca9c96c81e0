"""An execution's final status and output, from its plan and its steps' records. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflows.plan import ExecutionPlan, Strategy
from workflows.status import ExecutionStatus, StepStatus


@dataclass(frozen=True)
class StepRecord:
    status: str
    output: Any
    error: str | None


@dataclass(frozen=True)
class ExecutionOutcome:
    status: str
    output: Any
    error: str | None


def decide_outcome(plan: ExecutionPlan, steps: Mapping[str, StepRecord]) -> ExecutionOutcome:
    failed = [sid for sid in (s.id for s in plan.steps) if steps[sid].status == StepStatus.FAILED]
    cancelled = any(record.status == StepStatus.CANCELLED for record in steps.values())
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
