"""One delegation: decide whether the step runs, pass the breaker, call the agent under its
limits, record what happened.

Kept free of Celery so it reads as the semantics it implements; ``workers.tasks`` turns a
``RetryLater`` into ``self.retry(countdown=...)``. At-least-once delivery, exactly-once
recording: every message names its attempt, and an attempt is recorded once.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from orchestration.agents.call import AgentCall
from orchestration.agents.registry import build_adapter
from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    SKIP_CONDITION,
    SKIP_UPSTREAM,
    SKIPPED,
    STEP_FINAL,
)
from orchestration.envelope import Envelope, StepState, envelope_of, record_of
from orchestration.resilience.backoff import next_delay
from orchestration.resilience.breaker import is_failure
from orchestration.resilience.classify import Failure, classify
from orchestration.resilience.time_limit import (
    CallWatch,
    HeartbeatMonitor,
    call_with_time_limit,
)
from orchestration.spec import AgentSpec, TeamSpec, WhenOpen
from orchestration.store.breaker_cache import CachedBreakers
from orchestration.store.breakers import Admission, aware
from orchestration.store.repository import AttemptEnd, AttemptError, Decided, Store, now
from workflows.conditions import compile_condition
from workflows.outcome import StepRecord, decide_outcome
from workflows.plan import ExecutionPlan, PlannedStep, build_plan


class _NotOurs(Exception):
    """Writing the attempt's start marker found that another copy of the message had
    started the same attempt."""


@dataclass(frozen=True)
class RetryLater:
    countdown: float
    attempt: int
    previous_delay: float | None = None


@dataclass(frozen=True)
class ExecutionContext:
    agents: dict[str, AgentSpec]
    plan: ExecutionPlan
    input: Any


@dataclass(frozen=True)
class Delivery:
    """What the message said and who received it."""

    execution_id: str
    step_id: str
    attempt: int
    task_id: str | None = None
    worker: str | None = None
    previous_delay: float | None = None


@dataclass(frozen=True)
class Limits:
    lease_interval: float = 5.0
    # An attempt still running after this is marked started (see Settings.lease_after).
    lease_after: float = 0.05
    # No countdown may reach the broker's visibility timeout: the message would be
    # delivered twice (a Retry-After or a breaker cool-down can ask for long waits).
    max_countdown: float = float("inf")

    @property
    def lease_ttl(self) -> float:
        return 3 * self.lease_interval


@dataclass(frozen=True)
class TeamContext:
    """What a worker keeps of a team: its agents and its plan. Not the validated spec,
    which for a 10,000-step team held 9 MiB more per worker process."""

    agents: dict[str, AgentSpec]
    plan: ExecutionPlan


def team_of(store: Store, execution_id: str) -> TeamContext:
    """The planned team an execution runs. An execution's spec never changes, so a
    worker learns its digest once (a few thousand executions are remembered: 100 bytes
    each), and validates and plans each distinct spec once, whichever execution
    brought it."""
    digest = _digests.get((store.url, execution_id))
    if digest is None:
        digest = store.execution_digest(execution_id) or f"execution:{execution_id}"
        _digests[(store.url, execution_id)] = digest
        if len(_digests) > _DIGESTS_KEPT:
            _digests.popitem(last=False)
    team = _teams.get((store.url, digest))
    if team is None:
        spec = TeamSpec.model_validate(store.execution_spec(execution_id))
        team = TeamContext(agents=spec.agents, plan=build_plan(spec))
        _teams[(store.url, digest)] = team
        if len(_teams) > _TEAMS_KEPT:
            _teams.popitem(last=False)
    return team


_DIGESTS_KEPT = 16_384
_digests: OrderedDict[tuple[str, str], str] = OrderedDict()
_TEAMS_KEPT = 64
_teams: OrderedDict[tuple[str, str], TeamContext] = OrderedDict()


class Delegation:
    def __init__(self, store: Store, breakers: CachedBreakers, limits: Limits) -> None:
        self.store = store
        self.breakers = breakers
        self.limits = limits

    def run(self, delivery: Delivery) -> Envelope | RetryLater | None:
        """The step's envelope, a retry request, or None for a stale duplicate message."""
        store = self.store
        team = team_of(store, delivery.execution_id)
        step = team.plan.step(delivery.step_id)
        execution_status, input_value, rows = store.delegation_state(
            delivery.execution_id, step.id, team.plan.reads(step)
        )
        context = ExecutionContext(agents=team.agents, plan=team.plan, input=input_value)
        row = rows[step.id]
        if row.status in STEP_FINAL:
            # A redelivered message for a step already done: return what was recorded.
            return envelope_of(row)
        if execution_status == CANCELLED:
            # The stop ended the execution: the step is cancelled and nothing moves on.
            store.finish_step_without_call(
                row.execution_id, row.step_id, CANCELLED, None, "execution cancelled"
            )
            return self._envelope(row.execution_id, row.step_id)
        level = context.plan.counted_level(step)
        if row.status == PENDING:
            blocked_by = _failed_dependency(step, rows)
            if blocked_by:
                reason = f"upstream step {blocked_by!r} did not complete"
                return self._without_call(row, SKIPPED, SKIP_UPSTREAM, reason, level)
            if step.when:
                outcome = compile_condition(step.when).evaluate(
                    context.input, {sid: _condition_view(rows[sid]) for sid in step.visible}
                )
                if not outcome.value:
                    return self._without_call(row, SKIPPED, SKIP_CONDITION, outcome.reason, level)

        attempt = delivery.attempt
        # begin_attempt raises `attempts` with the attempt row, so a lower count means
        # this attempt was never recorded: no need to look.
        recorded = (
            store.attempt_row(delivery.execution_id, step.id, attempt)
            if row.attempts >= attempt
            else None
        )
        if recorded is not None:
            if recorded.outcome is not None:
                return None  # this attempt ended; its successor was queued separately
            lease_age = now() - (aware(recorded.heartbeat_at or recorded.started_at) or now())
            remaining = self.limits.lease_ttl - lease_age.total_seconds()
            if remaining > 0:
                # Maybe still running elsewhere: look again when its lease would expire.
                return self._later(remaining + 0.1, attempt, delivery.previous_delay)
            store.mark_attempt_lost(delivery.execution_id, step.id, attempt)
            attempt = max(attempt, row.attempts) + 1

        deadline = _deadline(row, step)
        if deadline is not None and now() >= deadline:
            return self._reject(context, rows, row.agent, attempt, delivery, _deadline_error(step))

        agent_name = step.agent
        agent = context.agents[agent_name]
        admission = self.breakers.admit(agent_name, agent.breaker)
        if not admission.allowed:
            routed = self._when_open(
                context, rows, agent_name, agent, admission, delivery, attempt, deadline
            )
            if not isinstance(routed, tuple):
                return routed
            agent_name, agent, admission = routed

        return self._call(
            context,
            step,
            rows,
            agent_name,
            agent,
            admission,
            attempt,
            delivery,
            deadline,
            execution_pending=execution_status == PENDING,
        )

    # --- the call ---------------------------------------------------------------------

    def _call(
        self,
        context: ExecutionContext,
        step: PlannedStep,
        rows: dict[str, StepState],
        agent_name: str,
        agent: AgentSpec,
        admission: Admission,
        attempt: int,
        delivery: Delivery,
        deadline: datetime | None,
        *,
        execution_pending: bool,
    ) -> Envelope | RetryLater:
        store = self.store
        execution_id = delivery.execution_id
        level = context.plan.counted_level(step)
        monitor = HeartbeatMonitor()
        call = AgentCall(
            execution_id=execution_id,
            step_id=step.id,
            agent=agent_name,
            task=step.task,
            input=_step_input(context, step, rows, self._visible_rows),
            outputs=UpstreamOutputs(step, lambda: self._visible_rows(execution_id, step, rows)),
            attempt=attempt,
            _heartbeat=monitor.beat,
        )
        limit = agent.timeout
        if deadline is not None:
            limit = max(0.001, min(limit, (deadline - now()).total_seconds()))

        def mark_started() -> None:
            marked = store.begin_attempt(
                execution_id,
                step.id,
                agent_name,
                attempt,
                delivery.task_id,
                delivery.worker,
                execution_pending=execution_pending,
                started_at=begun.started_at,
            )
            # "cancelled": the stop came after the read and the call is under way; as
            # for a step the stop found running, its result is recorded when it ends.
            if marked == "duplicate":
                raise _NotOurs

        begun = _attempt_end(delivery, agent_name, attempt, now())
        started = time.perf_counter()
        try:
            adapter = build_adapter(agent)
            result = call_with_time_limit(
                lambda: adapter.invoke(call),
                CallWatch(
                    limit,
                    heartbeat_timeout=step.heartbeat_timeout or agent.heartbeat_timeout,
                    monitor=monitor,
                    renew_lease=lambda details: store.renew_lease(
                        execution_id, step.id, attempt, details
                    ),
                    lease_interval=self.limits.lease_interval,
                    still_running=mark_started,
                    still_running_after=self.limits.lease_after,
                ),
            )
        except _NotOurs:
            # Another copy of this message started the same attempt a moment ago: this
            # call was interrupted (in a helper thread, it goes on unrecorded); look
            # again when the other copy's lease would have expired.
            if admission.trial:
                self.breakers.store.release_trial(agent_name)
            return self._later(self.limits.lease_ttl, attempt, delivery.previous_delay)
        except Exception as exc:  # every agent failure is classified and recorded
            seconds = time.perf_counter() - started
            failure = classify(exc, agent.retry)
            self.breakers.record_call(
                agent_name,
                agent.breaker,
                failed=is_failure(agent.breaker, failure.breaker_failure, seconds),
                trial=admission.trial,
                error=f"{failure.type}: {failure.message}",
            )
            end = replace(
                begun,
                duration_ms=int(seconds * 1000),
                outcome=failure.outcome,
                error=AttemptError(
                    type=failure.type, message=failure.message, outcome=failure.outcome
                ),
            )
            return self._after_failure(
                rows[step.id],
                agent,
                step,
                end,
                delivery,
                failure,
                deadline,
                execution_pending=execution_pending,
                level=level,
            )
        seconds = time.perf_counter() - started
        self.breakers.record_call(
            agent_name,
            agent.breaker,
            failed=is_failure(agent.breaker, False, seconds),
            trial=admission.trial,
        )
        finish = _outcome_with(
            context, rows, step.id, StepRecord(status=COMPLETED, output=result.output, error=None)
        )
        decided = store.record_success(
            replace(begun, duration_ms=int(seconds * 1000)),
            result.output,
            step_started_at=aware(rows[step.id].started_at),
            execution_pending=execution_pending,
            finish=finish,
            level=level,
        )
        if decided is None:
            # Decided by another copy of this message: return what it recorded.
            return self._envelope(execution_id, step.id)
        return Envelope(
            execution_id=execution_id,
            step_id=step.id,
            status=COMPLETED,
            attempts=attempt,
            error_type=None,
            error_message=None,
            duration_ms=decided.step_ms,
            finalized=finish is not None,
            closes_level=decided.closes_level,
        )

    def _after_failure(
        self,
        row: StepState,
        agent: AgentSpec,
        step: PlannedStep,
        end: AttemptEnd,
        delivery: Delivery,
        failure: Failure,
        deadline: datetime | None,
        *,
        execution_pending: bool,
        level: int | None,
    ) -> Envelope | RetryLater:
        store = self.store
        attempt = end.attempt
        # Attempts lost with a dead worker do not use up the retry budget.
        budget = agent.retry.max_attempts + store.lost_attempts(row.execution_id, row.step_id)
        if failure.transient and attempt < budget:
            delay = next_delay(agent.retry, attempt, delivery.previous_delay, random.Random())
            if failure.retry_after is not None:
                delay = max(delay, failure.retry_after)
            retry_at = now() + timedelta(seconds=delay)
            if deadline is None or retry_at < deadline:
                store.record_retry(end, retry_at, execution_pending=execution_pending)
                return self._later(delay, attempt + 1, delay)
            end = replace(
                end,
                error=AttemptError(
                    type=failure.type,
                    message=f"{failure.message} (no retry: step deadline of "
                    f"{step.deadline:g}s would pass)",
                    outcome=failure.outcome,
                ),
            )
        decided = store.record_failure(
            end,
            step_started_at=aware(row.started_at),
            execution_pending=execution_pending,
            level=level,
        )
        return self._envelope(row.execution_id, row.step_id, decided)

    # --- breaker open -----------------------------------------------------------------

    def _when_open(
        self,
        context: ExecutionContext,
        rows: dict[str, StepState],
        agent_name: str,
        agent: AgentSpec,
        admission: Admission,
        delivery: Delivery,
        attempt: int,
        deadline: datetime | None,
    ) -> Envelope | RetryLater | tuple[str, AgentSpec, Admission]:
        row = rows[delivery.step_id]
        mode = agent.when_open
        reason = admission.reason or f"circuit open for agent {agent_name!r}"
        if mode is WhenOpen.FALLBACK and agent.fallback is not None:
            fallback = context.agents[agent.fallback]
            second = self.breakers.admit(agent.fallback, fallback.breaker)
            if second.allowed:
                return agent.fallback, fallback, second
            reason = f"{reason}; fallback {agent.fallback!r}: {second.reason}"
        elif mode is WhenOpen.WAIT and admission.retry_at is not None:
            wait_until = admission.retry_at + timedelta(seconds=random.uniform(0, 0.05))
            if deadline is None or wait_until < deadline:
                self.store.record_waiting(
                    row.execution_id, row.step_id, wait_until, f"{reason}; waiting"
                )
                countdown = max(0.0, (wait_until - now()).total_seconds())
                return self._later(countdown, attempt, delivery.previous_delay)
            reason = f"{reason}, past the step's deadline"
        error = AttemptError(type="CircuitOpen", message=reason, outcome="rejected")
        return self._reject(context, rows, agent_name, attempt, delivery, error)

    # --- helpers ----------------------------------------------------------------------

    def _visible_rows(
        self, execution_id: str, step: PlannedStep, rows: dict[str, StepState]
    ) -> dict[str, StepState]:
        """The rows of every step ``step`` may see: those read already, else read now."""
        if all(sid in rows for sid in step.visible):
            return rows
        return {**self.store.steps_by_id(execution_id, step.visible), **rows}

    def _later(self, countdown: float, attempt: int, previous: float | None) -> RetryLater:
        return RetryLater(min(countdown, self.limits.max_countdown), attempt, previous)

    def _reject(
        self,
        context: ExecutionContext,
        rows: dict[str, StepState],
        agent: str,
        attempt: int,
        delivery: Delivery,
        error: AttemptError,
    ) -> Envelope:
        """Fail the step without calling its agent, audited as a refused attempt (and,
        for the last step, the execution's end with it)."""
        row = rows[delivery.step_id]
        failed = StepRecord(status=FAILED, output=None, error=f"{error.type}: {error.message}")
        finish = _outcome_with(context, rows, row.step_id, failed)
        refused = replace(
            _attempt_end(delivery, agent, attempt, now()), outcome=error.outcome, error=error
        )
        level = context.plan.counted_level(context.plan.step(row.step_id))
        decided = self.store.record_rejection(refused, finish=finish, level=level)
        if decided is None:
            return self._envelope(row.execution_id, row.step_id)
        return Envelope(
            execution_id=row.execution_id,
            step_id=row.step_id,
            status=FAILED,
            attempts=attempt,
            error_type=error.type,
            error_message=error.message,
            duration_ms=0,
            finalized=finish is not None,
            closes_level=decided.closes_level,
        )

    def _without_call(
        self, row: StepState, status: str, cause: str | None, reason: str, level: int | None
    ) -> Envelope:
        decided = self.store.finish_step_without_call(
            row.execution_id, row.step_id, status, cause, reason, level
        )
        return self._envelope(row.execution_id, row.step_id, decided)

    def _envelope(
        self, execution_id: str, step_id: str, decided: Decided | None = None
    ) -> Envelope:
        """The step's recorded envelope; ``decided``: by this delegation's write."""
        envelope = envelope_of(self.store.steps_by_id(execution_id, [step_id])[step_id])
        if decided is not None:
            envelope["closes_level"] = decided.closes_level
        return envelope


def _attempt_end(delivery: Delivery, agent: str, attempt: int, started_at: datetime) -> AttemptEnd:
    """The audit row of an attempt that starts now; its end fills in the rest."""
    return AttemptEnd(
        execution_id=delivery.execution_id,
        step_id=delivery.step_id,
        attempt=attempt,
        agent=agent,
        task_id=delivery.task_id,
        worker=delivery.worker,
        started_at=started_at,
        duration_ms=0,
    )


def _outcome_with(
    context: ExecutionContext, rows: dict[str, StepState], step_id: str, record: StepRecord
) -> tuple[str, Any, str | None] | None:
    """The execution's outcome once this step ends as ``record``, from the rows already
    read; None unless they cover every step. They do only for the one step of the last
    level whose ancestors are all the others (``ExecutionPlan.reads``); otherwise the
    delegation that closes the last level finishes the execution from fresh rows."""
    if len(rows) != len(context.plan.steps):
        return None
    records = {sid: record_of(row) for sid, row in rows.items()}
    records[step_id] = record
    outcome = decide_outcome(context.plan, records)
    return outcome.status, outcome.output, outcome.error


def _deadline(row: StepState, step: PlannedStep) -> datetime | None:
    if step.deadline is None:
        return None
    started = aware(row.started_at) or now()
    return started + timedelta(seconds=step.deadline)


def _deadline_error(step: PlannedStep) -> AttemptError:
    return AttemptError(
        type="DeadlineExceeded",
        message=f"step deadline of {step.deadline:g}s passed",
        outcome="rejected",
    )


def _step_input(
    context: ExecutionContext,
    step: PlannedStep,
    rows: dict[str, StepState],
    visible_rows: Callable[[str, PlannedStep, dict[str, StepState]], dict[str, StepState]],
) -> Any:
    if step.input_from is None:
        return context.input
    upstream = rows[step.input_from]
    # A pipeline stage whose predecessor was skipped by its condition passes the last
    # output along, as if the skipped stage were the identity.
    if upstream.status == COMPLETED:
        return upstream.output
    rows = visible_rows(upstream.execution_id, step, rows)
    for sid in reversed(step.visible):
        if rows[sid].status == COMPLETED:
            return rows[sid].output
    return context.input


class UpstreamOutputs(Mapping[str, Any]):
    """``AgentCall.outputs``: the output of every finished step the agent's step may
    see, in plan order, read when the agent first looks (most never do)."""

    def __init__(self, step: PlannedStep, load: Callable[[], dict[str, StepState]]) -> None:
        # Not the step's visible ids yet: in a long sequential team they are long.
        self._step = step
        self._load = load
        self._outputs: dict[str, Any] | None = None
        # The agent may look from threads of its own.
        self._lock = threading.Lock()

    def _all(self) -> dict[str, Any]:
        with self._lock:
            if self._outputs is None:
                rows = self._load()
                visible = self._step.visible
                self._outputs = {
                    sid: rows[sid].output for sid in visible if rows[sid].status == COMPLETED
                }
            return self._outputs

    def __getitem__(self, step_id: str) -> Any:
        return self._all()[step_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _failed_dependency(step: PlannedStep, rows: dict[str, StepState]) -> str | None:
    for dep in step.deps:
        row = rows[dep]
        if row.status in (FAILED, CANCELLED):
            return dep
        if row.status == SKIPPED and row.skip_cause == SKIP_UPSTREAM:
            return dep
    return None


def _condition_view(row: StepState) -> dict[str, Any]:
    view: dict[str, Any] = {"status": row.status}
    if row.status == COMPLETED:
        view["output"] = row.output
    return view
