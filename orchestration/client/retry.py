"""Retrying an execution: a new execution of the same spec and input that keeps the results
of the steps it does not run again."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError

from orchestration.client.handle import ExecutionHandle
from orchestration.client.runtime import Runtime, get_runtime
from orchestration.constants import COMPLETED, EXECUTION_FINAL, PENDING
from orchestration.errors import ExecutionError
from orchestration.spec import Budget, TeamSpec
from orchestration.store.models import StepRow
from orchestration.store.repository import now, spec_digest
from orchestration.store.retries import RetryRecords
from workflows.plan import ExecutionPlan, build_plan
from workflows.retry import NothingToRetry, RecordedStep, RetryPlan, plan_retry

# Marks a step row whose result was kept from the execution retried (its ``origin``).
REUSED = "reused"


class RetryRefused(ExecutionError):
    """The retry asked for cannot be made: the execution still runs, the step is not in
    its team, or nothing would run again."""


def retry_execution(
    execution_id: str,
    *,
    from_step: str | None = None,
    budget: Budget | None = None,
    check_worker: bool = True,
    runtime: Runtime | None = None,
) -> ExecutionHandle:
    """Start a new execution linked to ``execution_id`` (its ``retry_of``), with the
    same input and team spec. It runs ``from_step`` and everything that depends on it
    again, and by default (or as well) every step that did not complete and what depends
    on it; every other step keeps its recorded output and its agent is not called.

    ``budget`` replaces the limits it gives for this run, as ``Team.enqueue`` does."""
    runtime = runtime or get_runtime()
    records = RetryRecords(runtime.store)
    old, rows = records.recorded(execution_id)
    if old.status not in EXECUTION_FINAL:
        raise RetryRefused(
            f"execution {execution_id} is {old.status}: wait for it to end, or stop it, "
            "before retrying it"
        )
    spec: dict[str, Any] = dict(old.spec)
    try:
        team = TeamSpec.model_validate(spec)
        plan = build_plan(team)
    except ValidationError as exc:
        raise RetryRefused(
            f"cannot retry execution {execution_id}: its recorded team spec is not valid "
            f"today ({exc.error_count()} problem(s)); run its team file again instead"
        ) from None
    by_id = {row.step_id: row for row in rows}
    recorded = {sid: RecordedStep(row.status, row.skip_cause) for sid, row in by_id.items()}
    try:
        retry = plan_retry(plan, recorded, from_step)
    except NothingToRetry as exc:
        raise RetryRefused(f"cannot retry execution {execution_id}: {exc}") from None
    if check_worker:
        runtime.ensure_worker()
    recorded_budget = Budget(max_cost_usd=old.max_cost_usd, max_tokens=old.max_tokens)
    effective = recorded_budget.merged(budget)
    digest = old.spec_digest or spec_digest(spec)
    if effective != recorded_budget:
        # Workers read an execution's budget from its stored spec.
        spec = {**spec, "budget": effective.model_dump(mode="json")}
        digest = spec_digest(spec)
    new_id = str(uuid.uuid4())
    stamp = now()
    records.create(
        {
            "id": new_id,
            "team": old.team,
            "strategy": old.strategy,
            "spec": spec,
            "spec_digest": digest,
            "input": old.input,
            "status": PENDING,
            "sinks_left": retry.sinks_left,
            "max_cost_usd": effective.max_cost_usd,
            "max_tokens": effective.max_tokens,
            "created_at": stamp,
            "retry_of": execution_id,
        },
        _step_rows(new_id, execution_id, plan, retry, by_id),
    )
    from workers.publish import Routing, delegation_message, publish

    # Each to its agent's queue, at the execution's priority (both in the stored spec).
    routing = Routing.for_settings(runtime.settings)
    agents, priority = team.agents, team.priority
    publish(
        runtime.app,
        [
            delegation_message(new_id, sid, agent, routing.step(agents.get(agent), priority))
            for sid in retry.ready
            for agent in (plan.step(sid).agent,)
        ],
    )
    return runtime.handle(new_id)


def _step_rows(
    new_id: str, old_id: str, plan: ExecutionPlan, retry: RetryPlan, old: dict[str, StepRow]
) -> list[dict[str, Any]]:
    """A kept step starts decided, with its recorded output (and, skipped by its own
    condition, its reason); a step to run again starts pending, waiting for those of its
    dependencies that run again."""
    stamp = now()
    rows = []
    for step in plan.steps:
        row: dict[str, Any] = {
            "execution_id": new_id,
            "step_id": step.id,
            "agent": step.agent,
            "position": step.position,
            "level": step.level,
            "attempts": 0,
        }
        if step.id in retry.waiting:
            # Every row names the same columns: they are inserted as one batch.
            row.update(
                status=PENDING,
                waiting=retry.waiting[step.id],
                skip_cause=None,
                reason=None,
                output=None,
                started_at=None,
                finished_at=None,
                origin=None,
            )
        else:
            kept = old[step.id]
            row.update(
                status=kept.status,
                waiting=0,
                skip_cause=kept.skip_cause,
                # A completed step's reason would read as an error; a skipped one's says why.
                reason=None if kept.status == COMPLETED else kept.reason,
                output=kept.output,
                started_at=stamp,
                finished_at=stamp,
                origin={"kind": REUSED, "execution": old_id},
            )
        rows.append(row)
    return rows
