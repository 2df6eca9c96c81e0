"""What a user reads about an execution: the status command's and run-team's JSON shape."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from orchestration.constants import SKIP_CONDITION
from orchestration.store.models import ExecutionRow, StepRow


class StepReport(BaseModel):
    id: str
    agent: str
    status: str
    attempts: int
    duration_ms: int | None
    error: str | None
    # A map item: its map step and its index in the list (None for a plan step).
    parent: str | None = None
    item_index: int | None = None


class ExecutionReport(BaseModel):
    execution_id: str
    team: str
    status: str
    output: Any
    error: str | None
    steps: list[StepReport]
    # Why each skipped or cancelled step did not run (not part of the JSON contract).
    reasons: dict[str, str]

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "status": self.status,
            "output": self.output,
            "steps": [step.model_dump() for step in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False)


def build_report(execution: ExecutionRow, steps: list[StepRow]) -> ExecutionReport:
    return ExecutionReport(
        execution_id=execution.id,
        team=execution.team,
        status=execution.status,
        output=execution.output,
        error=execution.error,
        steps=[_step_report(row) for row in steps],
        reasons={row.step_id: row.reason for row in steps if row.reason},
    )


def _step_report(row: StepRow) -> StepReport:
    if row.error_type:
        error: str | None = f"{row.error_type}: {row.error_message}"
    elif row.reason and row.skip_cause != SKIP_CONDITION:
        # A step that never ran because of something upstream says why; one whose own
        # condition was false did not fail, so it carries no error.
        error = row.reason
    else:
        error = None
    return StepReport(
        id=row.step_id,
        agent=row.agent,
        status=row.status,
        attempts=row.attempts,
        duration_ms=row.duration_ms,
        error=error,
        parent=row.parent_id,
        item_index=row.item_index,
    )
