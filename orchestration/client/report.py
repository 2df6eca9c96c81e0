"""What a user reads about an execution: the status command's and run-team's JSON shape."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from orchestration.agents.call import Usage
from orchestration.constants import SKIP_CONDITION
from orchestration.spec import ApprovalSpec
from orchestration.spending import USAGE_KEYS, recorded_usage
from orchestration.store.approvals import ApprovalRecord
from orchestration.store.models import AttemptRow, ExecutionRow, HandoffRow, StepRow


class UsageReport(BaseModel):
    """Tokens and cost summed over attempts. ``cost_usd`` is None when some call's model
    has no price: unknown, not 0."""

    tokens_in: int = 0
    tokens_out: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = 0.0

    @classmethod
    def of(cls, usage: Usage) -> UsageReport:
        cost = usage.known_cost
        return cls(
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=None if cost is None else round(cost, 8),
        )


class AttemptReport(BaseModel):
    """One row of the audit trail: an attempt of a step, with what it used and called."""

    step: str
    attempt: int
    agent: str
    outcome: str | None
    started_at: str
    duration_ms: int | None
    worker: str | None
    error: str | None
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]] | None
    # The shared memory's version the attempt read (None: it read no memory or inbox).
    context_version: int | None = None


def attempt_reports(rows: list[AttemptRow]) -> list[AttemptReport]:
    return [
        AttemptReport(
            step=row.step_id,
            attempt=row.attempt,
            agent=row.agent,
            outcome=row.outcome,
            started_at=row.started_at.isoformat(),
            duration_ms=row.duration_ms,
            worker=row.worker,
            error=f"{row.error_type}: {row.error_message}" if row.error_type else None,
            usage=row.usage or None,
            tool_calls=row.tool_calls or None,
            context_version=row.context_version,
        )
        for row in rows
    ]


class HandoffReport(BaseModel):
    """A handoff taken or refused: from which step and agent, to which, and why."""

    step: str
    from_agent: str
    to_agent: str
    outcome: str  # "taken" or "refused"
    reason: str | None
    confidence: float | None
    path: list[str]
    detail: str | None


def handoff_reports(rows: list[HandoffRow]) -> list[HandoffReport]:
    return [
        HandoffReport(
            step=row.step_id,
            from_agent=row.from_agent,
            to_agent=row.to_agent,
            outcome=row.outcome,
            reason=row.reason,
            confidence=row.confidence,
            path=list(row.path or []),
            detail=row.detail,
        )
        for row in rows
    ]


class ApprovalReport(BaseModel):
    """A step's approval: what was asked and until when, and the decision (None while
    it waits): by whom ("timeout" when its timeout decided), their comment, when."""

    prompt: str
    requested_at: str
    timeout_at: str
    on_timeout: str | None
    # Who may decide (empty: anyone).
    approvers: list[str]
    decision: str | None
    decided_by: str | None
    comment: str | None
    decided_at: str | None


def approval_report(record: ApprovalRecord, spec: ApprovalSpec | None) -> ApprovalReport:
    return ApprovalReport(
        prompt=record.prompt,
        requested_at=record.requested_at.isoformat(),
        timeout_at=record.timeout_at.isoformat(),
        on_timeout=spec.on_timeout if spec is not None else None,
        approvers=list(spec.approvers) if spec is not None else [],
        decision=record.decision,
        decided_by=record.decided_by,
        comment=record.comment,
        decided_at=record.decided_at.isoformat() if record.decided_at else None,
    )


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
    # Summed over the step's attempts; None when no attempt reported any.
    usage: UsageReport | None = None
    # Once the step asked for approval (in the JSON only then).
    approval: ApprovalReport | None = None

    def to_json_dict(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"approval"})
        if self.approval is not None:
            data["approval"] = self.approval.model_dump()
        return data


class ExecutionReport(BaseModel):
    execution_id: str
    team: str
    status: str
    output: Any
    error: str | None
    steps: list[StepReport]
    # Why each skipped or cancelled step did not run (not part of the JSON contract).
    reasons: dict[str, str]
    # Summed over every attempt, and per agent (None/empty: nothing reported).
    usage: UsageReport | None = None
    usage_by_agent: dict[str, UsageReport] = {}
    handoffs: list[HandoffReport] = []

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "status": self.status,
            "output": self.output,
            "usage": self.usage.model_dump() if self.usage is not None else None,
            "steps": [step.to_json_dict() for step in self.steps],
            "handoffs": [handoff.model_dump() for handoff in self.handoffs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), ensure_ascii=False)


def build_report(
    execution: ExecutionRow,
    steps: list[StepRow],
    usage: list[tuple[str, str, dict[str, Any]]] | None = None,
    handoffs: list[HandoffRow] | None = None,
    approvals: list[ApprovalRecord] | None = None,
) -> ExecutionReport:
    """``usage``: (step, agent, usage) of each attempt that reported some;
    ``approvals``: the execution's approval requests and decisions."""
    by_step: dict[str, Usage] = {}
    by_agent: dict[str, Usage] = {}
    total: Usage | None = None
    asked = _approvals(execution, approvals or [])
    for step_id, agent, record in usage or ():
        if not _reports_usage(record):
            continue  # only where the call went (a failed call to an endpoint)
        one = recorded_usage(record)
        by_step[step_id] = by_step.get(step_id, Usage()) + one
        by_agent[agent] = by_agent.get(agent, Usage()) + one
        total = one if total is None else total + one
    return ExecutionReport(
        execution_id=execution.id,
        team=execution.team,
        status=execution.status,
        output=execution.output,
        error=execution.error,
        steps=[
            _step_report(row, by_step.get(row.step_id), asked.get(row.step_id)) for row in steps
        ],
        reasons={row.step_id: row.reason for row in steps if row.reason},
        usage=UsageReport.of(total) if total is not None else None,
        usage_by_agent={agent: UsageReport.of(u) for agent, u in sorted(by_agent.items())},
        handoffs=handoff_reports(handoffs or []),
    )


def _reports_usage(record: dict[str, Any]) -> bool:
    return any(record.get(name) is not None for name in USAGE_KEYS if name != "endpoint")


def _approvals(execution: ExecutionRow, records: list[ApprovalRecord]) -> dict[str, ApprovalReport]:
    if not records:
        return {}
    # What the team file declared (on_timeout, approvers), from the stored spec.
    declared = {
        step.get("id"): step.get("approval")
        for step in (execution.spec or {}).get("workflow", {}).get("steps", ())
    }
    found = {}
    for record in records:
        spec = declared.get(record.step_id)
        found[record.step_id] = approval_report(
            record, ApprovalSpec.model_validate(spec) if spec else None
        )
    return found


def _step_report(
    row: StepRow, usage: Usage | None, approval: ApprovalReport | None = None
) -> StepReport:
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
        usage=UsageReport.of(usage) if usage is not None else None,
        approval=approval,
    )
