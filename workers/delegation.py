"""One delegation: decide whether the step runs, call its agent, record what happened.

Kept free of Celery so it reads as the semantics it implements; ``workers.tasks`` turns a
``RetryLater`` into ``self.retry(countdown=...)``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from orchestration.agents.call import AgentCall
from orchestration.agents.registry import build_adapter
from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    FAILED,
    OUTCOME_ERROR,
    OUTCOME_TIMEOUT,
    SKIP_CONDITION,
    SKIP_UPSTREAM,
    SKIPPED,
    STEP_FINAL,
)
from orchestration.envelope import Envelope, envelope_of
from orchestration.errors import AgentLoadError, AttemptTimeout, PermanentAgentError
from orchestration.resilience.backoff import next_delay
from orchestration.resilience.time_limit import call_with_time_limit
from orchestration.spec import TeamSpec
from orchestration.store.models import StepRow
from orchestration.store.repository import AttemptError, Store, now
from workflows.conditions import compile_condition
from workflows.plan import ExecutionPlan, PlannedStep, build_plan


@dataclass(frozen=True)
class RetryLater:
    countdown: float


@dataclass(frozen=True)
class ExecutionContext:
    spec: TeamSpec
    plan: ExecutionPlan
    input: Any


@lru_cache(maxsize=256)
def _context(store: Store, execution_id: str) -> ExecutionContext:
    # An execution's spec never changes, so a worker plans it once.
    row = store.execution(execution_id)
    spec = TeamSpec.model_validate(row.spec)
    return ExecutionContext(spec=spec, plan=build_plan(spec), input=row.input)


def run_delegation(
    store: Store,
    execution_id: str,
    step_id: str,
    attempt: int,
    *,
    task_id: str | None = None,
    worker: str | None = None,
    previous_delay: float | None = None,
) -> Envelope | RetryLater | None:
    """Returns the step's envelope, a retry request, or None for a stale redelivery."""
    context = _context(store, execution_id)
    step = context.plan.step(step_id)
    rows = store.steps_by_id(execution_id, (step_id, *step.visible))
    row = rows[step_id]
    if row.status in STEP_FINAL:
        # A redelivered message for a step already done: return what was recorded.
        return envelope_of(row)
    if store.execution_status(execution_id) == CANCELLED:
        return _finish_without_call(store, row, CANCELLED, None, "execution cancelled")

    blocked_by = _failed_dependency(step, rows)
    if blocked_by:
        return _finish_without_call(
            store, row, SKIPPED, SKIP_UPSTREAM, f"upstream step {blocked_by!r} did not complete"
        )
    if step.when:
        outcome = compile_condition(step.when).evaluate(
            context.input, {sid: _condition_view(rows[sid]) for sid in step.visible}
        )
        if not outcome.value:
            return _finish_without_call(store, row, SKIPPED, SKIP_CONDITION, outcome.reason)

    if not store.begin_attempt(execution_id, step_id, step.agent, attempt, task_id, worker):
        recorded = store.attempt_row(execution_id, step_id, attempt)
        if recorded is not None and recorded.outcome is not None:
            # This attempt already ran to an end and its retry is queued separately.
            return None
        # The attempt started on a worker that died before recording an end: run it again.
    return _call_agent(store, context, step, rows, attempt, previous_delay)


def _call_agent(
    store: Store,
    context: ExecutionContext,
    step: PlannedStep,
    rows: dict[str, StepRow],
    attempt: int,
    previous_delay: float | None,
) -> Envelope | RetryLater:
    agent = context.spec.agents[step.agent]
    execution_id = rows[step.id].execution_id
    call = AgentCall(
        execution_id=execution_id,
        step_id=step.id,
        agent=step.agent,
        task=step.task,
        input=_step_input(context, step, rows),
        outputs={sid: rows[sid].output for sid in step.visible if rows[sid].status == COMPLETED},
        attempt=attempt,
    )
    started = time.perf_counter()
    try:
        adapter = build_adapter(agent)
        result = call_with_time_limit(lambda: adapter.invoke(call), agent.timeout)
    except Exception as exc:  # every agent failure is classified and recorded, never lost
        elapsed = _ms_since(started)
        error = _classify(exc)
        permanent = isinstance(exc, PermanentAgentError | AgentLoadError)
        if permanent or attempt >= agent.retry.max_attempts:
            store.record_failure(execution_id, step.id, attempt, elapsed, error)
            return envelope_of(store.steps_by_id(execution_id, [step.id])[step.id])
        delay = next_delay(agent.retry, attempt, previous_delay, random.Random())
        store.record_retry(
            execution_id, step.id, attempt, elapsed, error, now() + timedelta(seconds=delay)
        )
        return RetryLater(countdown=delay)
    store.record_success(execution_id, step.id, attempt, result.output, _ms_since(started))
    return envelope_of(store.steps_by_id(execution_id, [step.id])[step.id])


def _step_input(context: ExecutionContext, step: PlannedStep, rows: dict[str, StepRow]) -> Any:
    if step.input_from is None:
        return context.input
    upstream = rows[step.input_from]
    # A pipeline stage whose predecessor was skipped by its condition passes the last
    # output along, as if the skipped stage were the identity.
    if upstream.status == COMPLETED:
        return upstream.output
    for sid in reversed(step.visible):
        if rows[sid].status == COMPLETED:
            return rows[sid].output
    return context.input


def _failed_dependency(step: PlannedStep, rows: dict[str, StepRow]) -> str | None:
    for dep in step.deps:
        row = rows[dep]
        if row.status in (FAILED, CANCELLED):
            return dep
        if row.status == SKIPPED and row.skip_cause == SKIP_UPSTREAM:
            return dep
    return None


def _condition_view(row: StepRow) -> dict[str, Any]:
    view: dict[str, Any] = {"status": row.status}
    if row.status == COMPLETED:
        view["output"] = row.output
    return view


def _finish_without_call(
    store: Store, row: StepRow, status: str, cause: str | None, reason: str
) -> Envelope:
    store.finish_step_without_call(row.execution_id, row.step_id, status, cause, reason)
    return envelope_of(store.steps_by_id(row.execution_id, [row.step_id])[row.step_id])


def _classify(exc: BaseException) -> AttemptError:
    outcome = OUTCOME_TIMEOUT if isinstance(exc, AttemptTimeout) else OUTCOME_ERROR
    message = str(exc).strip() or type(exc).__name__
    return AttemptError(type=type(exc).__name__, message=message[:2000], outcome=outcome)


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
