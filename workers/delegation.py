"""One delegation's shell: read the step's state, let ``orchestration.engine.decisions``
decide, carry the decision out (call the agent under its limits, record what happened)
and say what the decision made ready.

Kept free of Celery so it reads as the semantics it implements; ``workers.tasks`` turns a
``RetryLater`` into ``self.retry(countdown=...)`` and sends (or runs) what is ready.
At-least-once delivery, exactly-once recording: every message names its attempt, and an
attempt is recorded once.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from orchestration.agents.base import StartOnLoop
from orchestration.agents.call import AgentCall
from orchestration.agents.registry import build_adapter
from orchestration.agents.secrets import redact
from orchestration.agents.team_channel import Handoff
from orchestration.capacity import KeyedConcurrency
from orchestration.collaboration.attempt import AttemptCollaboration
from orchestration.constants import (
    CANCELLED,
    COMPLETED,
    FAILED,
    OUTCOME_ERROR,
    OUTCOME_REJECTED,
    OUTCOME_TIMEOUT,
    SKIP_JOIN,
)
from orchestration.engine import approvals
from orchestration.engine import decisions as d
from orchestration.errors import (
    CapacityUnavailable,
    CircuitOpen,
    HandoffRefused,
    InternalError,
    LimitsUnavailable,
)
from orchestration.limits.connect import process_limiter
from orchestration.limits.demand import Settlement
from orchestration.limits.fairness import fair_slot
from orchestration.limits.gate import CapacityGate, Route, Waiting
from orchestration.pricing import Prices
from orchestration.priorities import Priority
from orchestration.resilience.backoff import next_delay
from orchestration.resilience.breaker import is_failure
from orchestration.resilience.classify import classify
from orchestration.resilience.time_limit import (
    CallWatch,
    HeartbeatMonitor,
    call_with_time_limit,
    wait_with_time_limit,
)
from orchestration.spec import (
    AgentSpec,
    ApprovalSpec,
    Budget,
    HandoffRule,
    MemoryRule,
    ModelPrice,
    TeamSpec,
    WhenOpen,
)
from orchestration.spending import AttemptSpending, usage_record
from orchestration.step_state import StepState, record_of
from orchestration.store.approvals import ApprovalRecord, ApprovalRecords
from orchestration.store.breaker_cache import CachedBreakers
from orchestration.store.budgets import BudgetRecords
from orchestration.store.delegations import DelegationRecords
from orchestration.store.memory import MemoryRecords
from orchestration.store.repository import (
    AttemptEnd,
    AttemptError,
    Countdown,
    Decided,
    aware,
    now,
)
from workers.asks import Asks
from workflows.aggregation import ALL, JoinRun, Parent, readiness, reduced, reducer_input
from workflows.handoffs import detect, handoff_item, handoff_prompt, refusal
from workflows.outcome import StepRecord, decide_outcome
from workflows.plan import ExecutionPlan, PlannedStep, build_plan
from workflows.runtime_steps import Added, handoff_id, handoff_path, origin_of, planned_for
from workflows.scheduling import AddedStep, expand_map, join_items, released_after
from workflows.status import EXECUTION_FINAL, STEP_FINAL, ExecutionStatus, StepStatus


class _NotOurs(Exception):
    """Writing the attempt's start marker found that another copy of the message had
    started the same attempt."""


class _BookkeepingFailed(Exception):
    """Troupe's own write during a call (its start marker, a lease renewal) failed: not
    the agent's failure, so it is not an attempt's outcome; the task's shell handles
    ``error`` (a database outage is retried later, nothing is dropped)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _own(write: Callable[..., None]) -> Callable[..., None]:
    def guarded(*args: Any) -> None:
        try:
            write(*args)
        except (_NotOurs, _BookkeepingFailed):
            raise
        except Exception as exc:
            raise _BookkeepingFailed(exc) from exc

    return guarded


@dataclass(frozen=True)
class RetryLater:
    countdown: float
    attempt: int
    previous_delay: float | None = None


@dataclass(frozen=True)
class Delivery:
    """What the message said and who received it."""

    execution_id: str
    step_id: str
    attempt: int
    task_id: str | None = None
    worker: str | None = None
    previous_delay: float | None = None
    # The task id of a redelivered message whose run died: an open attempt recorded
    # under it is taken over at once instead of waiting for its lease.
    orphaned_by: str | None = None


def wake_of(delivery: Delivery, attempt: int) -> str:
    """What brings ``attempt`` of the delivered step back at once if it waits for a slot
    (``Demand.wake``): the message its capacity wait would send later, as JSON."""
    return json.dumps(
        [delivery.execution_id, delivery.step_id, attempt, delivery.previous_delay],
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class Outcome:
    """What the shell does after one delegation."""

    # Steps made ready (each with the attempt its message carries).
    send: tuple[tuple[str, int], ...] = ()
    # Every sink is decided: the execution is to be finished.
    ended: bool = False
    # The execution's end was recorded with this step's result.
    finalized: bool = False
    retry: RetryLater | None = None
    # The step waits for an approval: its timer message goes out with this countdown.
    wake_in: float | None = None
    # The delivered attempt failed for good or was refused ("Type: message"): the task
    # ends in Celery's FAILURE state, which Flower shows.
    failure: str | None = None


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
    # The execution's budget (the team's, or the one given at enqueue) and the team's
    # own prices.
    budget: Budget | None = None
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    handoffs: tuple[HandoffRule, ...] = ()
    max_handoff_depth: int = 3
    # The steps that wait for a person's approval, by id.
    approvals: Mapping[str, ApprovalSpec] = field(default_factory=dict)
    # The rule each shared-memory key is written by (others: last writer).
    memory: Mapping[str, MemoryRule] = field(default_factory=dict)
    # The execution's priority (the team's, or the one given at enqueue): its messages
    # carry it.
    priority: Priority = Priority.NORMAL
    name: str = ""
    # Executions of the same key running at once (the team's keyed fairness).
    concurrency: KeyedConcurrency | None = None


def team_of(store: DelegationRecords, execution_id: str) -> TeamContext:
    """The planned team an execution runs. An execution's spec never changes, so a
    worker learns its digest once (a few thousand executions are remembered: 100 bytes
    each), and validates and plans each distinct spec once, whichever execution
    brought it."""
    key = (store.url, execution_id)
    digest = _digests.get(key)
    if digest is None:
        digest = store.execution_digest(execution_id) or f"execution:{execution_id}"
        with _cache_lock:
            _digests[key] = digest
            if len(_digests) > _DIGESTS_KEPT:
                _digests.popitem(last=False)
    team = _teams.get((store.url, digest))
    if team is None:
        spec = TeamSpec.model_validate(store.execution_spec(execution_id))
        team = TeamContext(
            agents=spec.agents,
            plan=build_plan(spec),
            budget=spec.budget,
            prices=spec.prices,
            handoffs=spec.handoffs,
            max_handoff_depth=spec.max_handoff_depth,
            approvals={s.id: s.approval for s in spec.steps if s.approval is not None},
            memory=spec.memory,
            priority=spec.priority,
            name=spec.name,
            concurrency=spec.concurrency,
        )
        with _cache_lock:
            _teams[(store.url, digest)] = team
            if len(_teams) > _TEAMS_KEPT:
                _teams.popitem(last=False)
    return team


_DIGESTS_KEPT = 16_384
_digests: OrderedDict[tuple[str, str], str] = OrderedDict()
_TEAMS_KEPT = 64
_teams: OrderedDict[tuple[str, str], TeamContext] = OrderedDict()
# A threads pool plans and evicts from many threads at once.
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class Ledgers:
    """What a delegation records beside its step: the execution's budget, its
    approvals, and its shared memory and messages."""

    budgets: BudgetRecords
    approvals: ApprovalRecords
    memory: MemoryRecords


class Delegation:
    def __init__(
        self,
        store: DelegationRecords,
        breakers: CachedBreakers,
        limits: Limits,
        ledgers: Ledgers,
        *,
        prices: Mapping[str, ModelPrice] | None = None,
        wake_later: Callable[[str, str, float], None] | None = None,
        wake_now: Callable[[str], None] | None = None,
        capacity: CapacityGate | None = None,
    ) -> None:
        self.store = store
        self.breakers = breakers
        self.limits = limits
        self.budgets = ledgers.budgets
        self.approvals = ledgers.approvals
        self.memory = ledgers.memory
        # The deployment's prices (settings), under each team's own.
        self.prices = prices or {}
        # Sends (execution, step) again after so many seconds: a join's deadline timer.
        self.wake_later = wake_later
        # Sends at once the attempt a wake names (see wake_of): a waiter for the slot a
        # call has just freed. Without it the waiter comes back at its own time.
        self.wake_now = wake_now
        # Endpoints and limits: counted in Redis by a worker (workers/tasks.py), in this
        # process when none is given.
        self.capacity = capacity or CapacityGate(
            breakers, process_limiter(), lease_seconds=limits.lease_ttl
        )

    def run(self, delivery: Delivery, *, looked_again: bool = False) -> Outcome:
        store = self.store
        team = team_of(store, delivery.execution_id)
        plan = team.plan
        step = planned_for(plan, delivery.step_id)
        is_item = step.id != delivery.step_id
        reads = step.deps if is_item else plan.reads(step)
        execution_status, input_value, rows = store.delegation_state(
            delivery.execution_id, delivery.step_id, reads
        )
        row = rows[delivery.step_id]
        # A step that calls no agent (an approval gate, a join without a reducer) has
        # one attempt: the one refused if it is rejected, or the one it is decided at.
        agent = team.agents.get(step.agent)
        max_attempts = agent.retry.max_attempts if agent is not None else 1
        recorded = None
        lost = 0
        if row.attempts >= delivery.attempt and row.status not in STEP_FINAL:
            # begin_attempt raises `attempts` with the attempt row, so a lower count
            # means this attempt was never recorded: no need to look.
            found = store.attempt_row(delivery.execution_id, delivery.step_id, row.attempts)
            if found is not None:
                recorded = d.AttemptState(
                    attempt=found.attempt,
                    outcome=found.outcome,
                    task_id=found.task_id,
                    started_at=aware(found.started_at) or now(),
                    heartbeat_at=aware(found.heartbeat_at),
                )
        if recorded is not None or delivery.attempt > max_attempts:
            lost = store.lost_attempts(delivery.execution_id, delivery.step_id)
        gate, approval = self._approval_state(team, delivery, is_item)
        view = d.View(
            step=step,
            row=_Aware(row),
            rows=rows,
            execution_status=execution_status or ExecutionStatus.PENDING,
            input=input_value,
            attempt=delivery.attempt,
            recorded=recorded,
            task_id=delivery.task_id,
            orphaned_by=delivery.orphaned_by,
            lease_ttl=self.limits.lease_ttl,
            lost=lost,
            max_attempts=max_attempts,
            now=now(),
            gate=gate,
            approval=approval,
        )
        state = _State(team, step, row, rows, view, delivery, execution_status, looked_again)
        return self._carry_out(d.decide(view), state)

    def internal_error(self, delivery: Delivery, error: Exception) -> Outcome:
        """Record an error Troupe raised while deciding or recording the step as that
        attempt's failure: retried under the agent's policy, then the step fails."""
        store = self.store
        team = team_of(store, delivery.execution_id)
        step = planned_for(team.plan, delivery.step_id)
        agent = team.agents.get(step.agent)
        max_attempts = agent.retry.max_attempts if agent is not None else 1
        row = store.steps_by_id(delivery.execution_id, [delivery.step_id])[delivery.step_id]
        if row.status in STEP_FINAL:
            return Outcome()
        message = f"{type(error).__name__}: {error}"[:2000]
        end = AttemptEnd(
            execution_id=delivery.execution_id,
            step_id=delivery.step_id,
            attempt=delivery.attempt,
            agent=step.agent,
            task_id=delivery.task_id,
            worker=delivery.worker,
            started_at=now(),
            duration_ms=0,
            outcome=OUTCOME_ERROR,
            error=AttemptError(InternalError.__name__, message, OUTCOME_ERROR),
        )
        if agent is not None and delivery.attempt < max_attempts:
            delay = next_delay(
                agent.retry, delivery.attempt, delivery.previous_delay, random.Random()
            )
            store.record_retry(end, now() + timedelta(seconds=delay))
            return Outcome(retry=self._later(delay, delivery.attempt + 1, delivery))
        if step.id != delivery.step_id:
            countdown = Countdown(dependents=tuple(row.dependents or ()))
        else:
            countdown = Countdown(dependents=step.dependents, sink=step.sink)
        decided = store.record_failure(end, countdown)
        failure = f"{InternalError.__name__}: {message}"
        if decided is None:
            return Outcome(failure=failure)
        return Outcome(
            send=tuple((sid, 1) for sid in _made_ready(team.plan, decided)),
            ended=decided.ended,
            failure=failure,
        )

    def _carry_out(self, decision: d.Decision | approvals.GateDecision, state: _State) -> Outcome:
        store = self.store
        delivery = state.delivery
        if isinstance(decision, approvals.GateDecision):
            return self._gate(decision, state)
        if isinstance(decision, d.Redrive):
            if state.execution_status in EXECUTION_FINAL:
                return Outcome()  # a copy that comes after the end moves nothing
            return self.redrive(delivery.execution_id, delivery.step_id, delivery.task_id)
        if isinstance(decision, d.Stale):
            return Outcome()  # a copy of an ended attempt: nothing moves
        if isinstance(decision, d.LookLater):
            return Outcome(retry=self._later(decision.seconds, delivery.attempt, delivery))
        if isinstance(decision, d.Decide):
            decided = store.decide_without_call(
                delivery.execution_id,
                delivery.step_id,
                decision.status,
                state.countdown,
                cause=decision.cause,
                reason=decision.reason,
            )
            return state.continuation(decided)
        if isinstance(decision, d.Expand):
            return self._expand(decision.values, state)
        if isinstance(decision, d.Join):
            return self._join(state) if state.is_map else self._join_handoff(state)
        if isinstance(decision, d.SendItems):
            return self._send_items(state) if state.is_map else self._send_handoff(state)
        if isinstance(decision, d.Refuse):
            error = AttemptError(
                type(decision.error).__name__, str(decision.error), OUTCOME_REJECTED
            )
            return self._refuse(state, state.step.agent, decision.attempt, error)
        if isinstance(decision, d.WaitForParents):
            if decision.seconds is None:
                return Outcome()  # a later parent, or the deadline's timer, sends it again
            return Outcome(retry=self._later(decision.seconds, delivery.attempt, delivery))
        if isinstance(decision, d.CancelParents):
            return self._cancel_parents(decision, state)
        if isinstance(decision, d.Joined):
            decided = store.decide_without_call(
                delivery.execution_id,
                delivery.step_id,
                decision.status,
                state.countdown,
                output=decision.output,
                reason=decision.error,
                error_type=decision.error_type or "JoinFailed",
            )
            return state.continuation(decided)
        return self._admit_and_call(decision, state)

    # --- without a call ---------------------------------------------------------------

    def redrive(self, execution_id: str, step_id: str, task_id: str | None = None) -> Outcome:
        """Send what a decided step's decision made ready, walking through decided
        steps (their writer may have run them eagerly in the same task and died), and
        end the execution if every sink is decided. Duplicates of what was sent before
        are harmless: each is recorded once."""
        team = team_of(self.store, execution_id)
        plan = team.plan
        rows = {row.step_id: row for row in self.store.steps(execution_id)}
        send: list[tuple[str, int]] = []
        frontier = [step_id]
        seen: set[str] = set()
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            row = rows.get(current)
            if row is None:
                continue
            if row.status in STEP_FINAL:
                frontier.extend(_dependents(plan, row))
                continue
            if row.waiting <= 0:
                send.append((current, max(1, row.attempts)))
        ended = all(rows[sid].status in STEP_FINAL for sid in plan.sinks if sid in rows)
        return Outcome(send=tuple(send), ended=ended)

    def _expand(self, values: list[Any], state: _State) -> Outcome:
        step, delivery = state.step, state.delivery
        assert step.map is not None
        if not values:
            decided = self.store.decide_without_call(
                delivery.execution_id, step.id, COMPLETED, state.countdown, output=[]
            )
            return state.continuation(decided)
        expansion = expand_map(step.id, step.agent, step.map, values, delivery.attempt)
        added = self.store.expand(delivery.execution_id, step.id, expansion.items, step.position)
        if not added:
            return self._send_items(state)
        return Outcome(send=tuple((item, 1) for item in expansion.first))

    def _send_items(self, state: _State) -> Outcome:
        step, delivery = state.step, state.delivery
        items = self.store.items(delivery.execution_id, step.id)
        assert step.map is not None
        limit = step.map.max_parallel
        decided = sum(1 for item in items if item.status in STEP_FINAL)
        released = len(items) if limit is None else limit + decided
        return Outcome(
            send=tuple(
                (item.step_id, max(1, item.attempts))
                for item in items
                if item.status not in STEP_FINAL and (item.item_index or 0) < released
            )
        )

    def _join(self, state: _State) -> Outcome:
        step, delivery = state.step, state.delivery
        assert step.map is not None
        items = self.store.items(delivery.execution_id, step.id)
        result = join_items(items, step.map.allow_failures)
        decided = self.store.decide_without_call(
            delivery.execution_id,
            step.id,
            result.status,
            state.countdown,
            output=result.output,
            reason=result.error,
            attempts=state.row.attempts,
        )
        return state.continuation(decided)

    # --- handoffs ---------------------------------------------------------------------

    def _hand_off(
        self,
        state: _State,
        attempt: int,
        handoff: Handoff,
        *,
        confidence: float | None,
        rule: HandoffRule | None,
        end: AttemptEnd | None = None,
    ) -> Outcome | None:
        """Pass the step to ``handoff.to``: its decision, the handoff step and the audit
        row in one write, then the handoff step is sent. A handoff the rules call for
        that is refused returns None (the step's own agent is called); one an agent
        asked for fails the step."""
        delivery, team = state.delivery, state.team
        caller = delivery.step_id
        path = handoff_path(caller, _first_agent(team.plan, caller))
        record = {
            "step_id": caller,
            "from_agent": state.step.agent,
            "to_agent": handoff.to,
            "reason": handoff.reason or None,
            "confidence": confidence,
            "path": [*path, handoff.to],
        }
        why = (
            f"unknown agent {handoff.to!r}"
            if handoff.to not in team.agents
            else refusal(path, handoff.to, team.max_handoff_depth)
        )
        if why is not None:
            self.store.record_handoff(
                delivery.execution_id, {**record, "outcome": "refused", "detail": why}
            )
            if rule is not None:
                return None
            error = AttemptError(HandoffRefused.__name__, why, OUTCOME_REJECTED)
            return self._refuse(state, state.step.agent, attempt, error)
        passed = rule.pass_context if rule is not None else ("outputs",)
        meta = {**record, "passed": list(passed), "task": state.task}
        prompt = handoff_prompt(
            caller=state.step.agent,
            target=handoff.to,
            reason=handoff.reason or "handed off by the agent",
            confidence=confidence,
            task=state.task,
        )
        value = handoff.input
        if value is None:
            value = state.step_input(self._visible_rows)
        child = AddedStep(
            step_id=handoff_id(caller, handoff.to),
            agent=handoff.to,
            parent_id=caller,
            item_index=0,
            item=handoff_item(prompt, value, meta),
            origin={"kind": "handoff", "by": caller, "attempt": attempt, "to": handoff.to},
            dependents=(caller,),
        )
        record = {**record, "outcome": "taken", "detail": None}
        if not self.store.hand_off(delivery.execution_id, caller, child, record, end):
            return self._send_handoff(state)
        return Outcome(send=((child.step_id, 1),))

    def _send_handoff(self, state: _State) -> Outcome:
        child = self.store.handoff_step(state.delivery.execution_id, state.delivery.step_id)
        if child is None or child.status in STEP_FINAL:
            return Outcome()
        return Outcome(send=((child.step_id, max(1, child.attempts)),))

    def _join_handoff(self, state: _State) -> Outcome:
        """The step takes its handoff's result as its own."""
        delivery = state.delivery
        child = self.store.handoff_step(delivery.execution_id, delivery.step_id)
        if child is None:  # pragma: no cover - fan_out is set with the child, atomically
            raise InternalError(f"step {delivery.step_id!r} handed off to no step")
        if child.status == COMPLETED:
            status, output, reason = StepStatus.COMPLETED, child.output, None
        elif child.status == StepStatus.CANCELLED:
            status, output, reason = StepStatus.CANCELLED, None, child.reason
        else:
            status, output = StepStatus.FAILED, None
            detail = (
                f"{child.error_type}: {child.error_message}" if child.error_type else child.reason
            )
            reason = f"handoff {child.step_id} did not complete: {detail}"
        decided = self.store.decide_without_call(
            delivery.execution_id,
            delivery.step_id,
            status,
            state.countdown,
            output=output,
            reason=reason,
            attempts=state.row.attempts,
            error_type="HandoffFailed",
        )
        return state.continuation(decided)

    def _refuse(self, state: _State, agent: str, attempt: int, error: AttemptError) -> Outcome:
        """Fail the step without calling its agent, audited as a refused attempt (and,
        for the step that ends the execution, the execution's end with it)."""
        refused = replace(state.attempt_end(agent, attempt, now()), outcome=error.outcome)
        refused = replace(refused, error=error)
        failed = StepRecord(status=FAILED, output=None, error=f"{error.type}: {error.message}")
        decided = self.store.record_failure(
            refused,
            state.countdown,
            execution_pending=state.execution_pending,
            finish=state.finish_with(failed),
        )
        continued = state.continuation(decided, finalized=state.finishes)
        return replace(continued, failure=failed.error)

    def _cancel_parents(self, decision: d.CancelParents, state: _State) -> Outcome:
        """Cancel the parents a join no longer waits for, counting down what waits for
        each (the join among them), then decide the join from what is now recorded: a
        parent decided meanwhile keeps its result, and every parent is final."""
        plan = state.team.plan
        delivery = state.delivery
        send: list[tuple[str, int]] = []
        for parent_id, reason in decision.parents:
            parent = plan.step(parent_id)
            decided = self.store.decide_without_call(
                delivery.execution_id,
                parent_id,
                CANCELLED,
                Countdown(dependents=parent.dependents, sink=parent.sink),
                cause=SKIP_JOIN,
                reason=reason,
            )
            if decided is not None:
                send.extend(
                    (sid, 1) for sid in _made_ready(plan, decided) if sid != delivery.step_id
                )
        if state.looked_again:
            # Every parent was final when this delegation looked again: nothing is left
            # to cancel (kept as a bound on the loop all the same).
            return Outcome(send=tuple(send))
        again = self.run(delivery, looked_again=True)
        return replace(again, send=(*send, *again.send))

    def _arm_join_deadlines(self, state: _State) -> None:
        """The first parent of a join with a deadline to start its agent starts the
        join's clock: record when the deadline passes, and send the join to wake then
        (without holding a worker; a lost timer is found by the reaper)."""
        joins = state.team.plan.deadline_joins.get(state.step.id)
        if not joins:
            return
        execution_id = state.delivery.execution_id
        for join_id in joins:
            join = state.team.plan.step(join_id).join
            assert join is not None and join.deadline is not None
            at = now() + timedelta(seconds=join.deadline)
            if self.store.arm_join_deadline(execution_id, join_id, at) and self.wake_later:
                self.wake_later(
                    execution_id, join_id, min(join.deadline + 0.05, self.limits.max_countdown)
                )

    def _later(self, countdown: float, attempt: int, delivery: Delivery) -> RetryLater:
        return RetryLater(
            min(countdown, self.limits.max_countdown), attempt, delivery.previous_delay
        )

    # --- human approval ---------------------------------------------------------------

    def _approval_state(
        self, team: TeamContext, delivery: Delivery, is_item: bool
    ) -> tuple[ApprovalSpec | None, ApprovalRecord | None]:
        """The step's approval and its record: read only for a step that has one."""
        gate = None if is_item else team.approvals.get(delivery.step_id)
        if gate is None:
            return None, None
        return gate, self.approvals.get(delivery.execution_id, delivery.step_id)

    def _gate(self, decision: approvals.GateDecision, state: _State) -> Outcome:
        """Ask for the approval and pause (nothing held: a timer message wakes the step
        at its timeout), apply a due timeout, or complete a gate that was approved."""
        eid, sid = state.delivery.execution_id, state.delivery.step_id
        if isinstance(decision, approvals.RequestApproval):
            asked = self.approvals.request(eid, sid, decision.prompt, decision.timeout_at)
            if asked.decision is not None:
                return Outcome()  # decided meanwhile: its decider sent the step on
            wait = max(0.0, (asked.timeout_at - now()).total_seconds())
            return Outcome(wake_in=min(wait, self.limits.max_countdown))
        if isinstance(decision, approvals.ApplyTimeout):
            if self.approvals.decide(
                eid, sid, decision.decision, approvals.TIMEOUT, decision.comment
            ):
                return self.run(state.delivery)  # decided here: carry it out
            return Outcome()  # someone decided first and sends the step on
        if isinstance(decision, approvals.PassGate):
            decided = self.store.decide_without_call(
                eid, sid, COMPLETED, state.countdown, output=decision.output
            )
            return state.continuation(decided)
        return Outcome()  # waiting: its timer is set

    # --- the call ---------------------------------------------------------------------

    def _admit_and_call(self, call: d.Call, state: _State) -> Outcome:
        delivery = state.delivery
        self._arm_join_deadlines(state)
        if call.lost is not None:
            self.store.mark_attempt_lost(delivery.execution_id, delivery.step_id, call.lost)
        name = state.step.agent
        agent = state.team.agents[name]
        rule = detect(name, state.task, state.team.handoffs) if state.team.handoffs else None
        if rule is not None:
            handed = self._hand_off(
                state,
                call.attempt,
                Handoff(rule.to, rule.reason),
                confidence=rule.confidence,
                rule=state.team.handoffs[rule.rule_index],
            )
            if handed is not None:
                return handed
        route = self._route(state, call, name, agent)
        if not isinstance(route, Route):
            return route
        admission = route.admission
        if not admission.allowed:
            mode = agent.when_open
            reason = admission.reason or f"circuit open for agent {name!r}"
            if mode is WhenOpen.FALLBACK and agent.fallback is not None:
                fallback = state.team.agents[agent.fallback]
                second = self._route(state, call, agent.fallback, fallback)
                if not isinstance(second, Route):
                    return second
                if second.admission.allowed:
                    return self._call(state, call, agent.fallback, fallback, second)
                reason = f"{reason}; fallback {agent.fallback!r}: {second.admission.reason}"
            elif mode is WhenOpen.WAIT and admission.retry_at is not None:
                wait_until = admission.retry_at + timedelta(seconds=random.uniform(0, 0.05))
                if call.deadline is None or wait_until < call.deadline:
                    self.store.record_waiting(
                        delivery.execution_id, delivery.step_id, wait_until, f"{reason}; waiting"
                    )
                    countdown = max(0.0, (wait_until - now()).total_seconds())
                    return Outcome(retry=self._later(countdown, call.attempt, delivery))
                reason = f"{reason}, past the step's deadline"
            error = AttemptError(CircuitOpen.__name__, reason, OUTCOME_REJECTED)
            return self._refuse(state, name, call.attempt, error)
        return self._call(state, call, name, agent, route)

    def _route(self, state: _State, call: d.Call, name: str, agent: AgentSpec) -> Route | Outcome:
        """Where the call goes (see orchestration/limits/gate.py), or the Outcome of a
        delegation that waits for capacity, or cannot have any."""
        delivery, team = state.delivery, state.team
        step = f"{delivery.execution_id}:{delivery.step_id}"
        fair = fair_slot(
            team.name,
            team.concurrency,
            delivery.execution_id,
            state.view.input,
            self.capacity.fair_lease_seconds,
        )
        try:
            route = self.capacity.route(
                name,
                agent,
                holder=f"{step}:{call.attempt}",
                step=step,
                fair=fair,
                wake=functools.partial(wake_of, delivery, call.attempt),
            )
        except LimitsUnavailable as exc:
            error = AttemptError(LimitsUnavailable.__name__, str(exc), OUTCOME_REJECTED)
            return self._refuse(state, name, call.attempt, error)
        if isinstance(route, Route):
            return route
        return self._wait_for_capacity(state, call, route)

    def _wait_for_capacity(self, state: _State, call: d.Call, waiting: Waiting) -> Outcome:
        """Sent again when capacity is expected, holding no worker slot meanwhile; the
        wait is recorded on the step (``status`` shows it)."""
        delivery = state.delivery
        if waiting.duplicate:
            # The other delivery is running this attempt and records its outcome: this
            # one writes nothing, and looks again when that one's hold lapses.
            return Outcome(retry=self._later(waiting.seconds, call.attempt, delivery))
        until = now() + timedelta(seconds=waiting.seconds)
        reason = f"waiting for capacity: {waiting.reason}"
        if call.deadline is not None and until >= call.deadline:
            error = AttemptError(
                CapacityUnavailable.__name__,
                f"{reason}, past the step's deadline",
                OUTCOME_REJECTED,
            )
            return self._refuse(state, state.step.agent, call.attempt, error)
        self.store.record_waiting(
            delivery.execution_id,
            delivery.step_id,
            until,
            f"{reason}; next try in {waiting.seconds:.2f}s",
        )
        return Outcome(retry=self._later(waiting.seconds, call.attempt, delivery))

    def _release(self, route: Route, settlement: Settlement) -> None:
        """Give back the call's capacity, and send at once the waiter it wakes."""
        wake = route.release(settlement)
        if wake is not None and self.wake_now is not None:
            self.wake_now(wake)

    def ended(self, execution_id: str) -> None:
        """The execution ended: free its slot of its team's key, if it holds one."""
        if team_of(self.store, execution_id).concurrency is not None:
            self.capacity.end_execution(execution_id)

    def _call(
        self, state: _State, call: d.Call, name: str, agent: AgentSpec, route: Route
    ) -> Outcome:
        store = self.store
        delivery = state.delivery
        step = state.step
        attempt = call.attempt
        monitor = HeartbeatMonitor()
        spending = AttemptSpending(
            delivery.execution_id,
            name,
            Prices.layered(self.prices, state.team.prices),
            state.team.budget,
            self.budgets,
        )
        collaboration = AttemptCollaboration(
            self.memory,
            delivery.execution_id,
            delivery.step_id,
            attempt,
            name,
            rules=state.team.memory,
            agents=state.team.agents.keys(),
            asker=Asks(self, state, name).ask,
        )
        agent_call = AgentCall(
            execution_id=delivery.execution_id,
            step_id=delivery.step_id,
            agent=name,
            task=state.task,
            input=(
                state.join_input()
                if step.join is not None
                else state.step_input(self._visible_rows)
            ),
            outputs=UpstreamOutputs(step, lambda: self._visible_rows(state)),
            attempt=attempt,
            item=None if state.added_by_agent else state.row.item,
            index=state.row.item_index,
            _heartbeat=monitor.beat,
            budget=spending,
            shared=collaboration.memory,
            _team=collaboration.channel,
        )
        limit = agent.timeout
        if call.deadline is not None:
            limit = max(0.001, min(limit, (call.deadline - now()).total_seconds()))
        begun = state.attempt_end(name, attempt, now())
        admission = route.admission

        def mark_started() -> None:
            marked = store.begin_attempt(
                delivery.execution_id,
                delivery.step_id,
                name,
                attempt,
                delivery.task_id,
                delivery.worker,
                execution_pending=state.execution_pending,
                started_at=begun.started_at,
            )
            # "cancelled": the stop came after the read and the call is under way; as
            # for a step the stop found running, its result is recorded when it ends.
            if marked == "duplicate":
                raise _NotOurs

        def renew(details: Any) -> None:
            store.renew_lease(delivery.execution_id, delivery.step_id, attempt, details)
            # The call's counts in the limiter are held under the same lease.
            route.renew()

        # A message whose earlier run died (or that this delegation takes over) marks
        # its attempt before calling: if the agent kills this process too, the next
        # delivery finds the attempt and counts it against the retry policy.
        marked_first = call.lost is not None or delivery.orphaned_by is not None
        started = time.perf_counter()
        try:
            if marked_first:
                _own(mark_started)()
            spending.admit()
            adapter = build_adapter(route.spec)
            watch = CallWatch(
                limit,
                heartbeat_timeout=step.heartbeat_timeout or agent.heartbeat_timeout,
                monitor=monitor,
                renew_lease=_own(renew),
                lease_interval=self.limits.lease_interval,
                still_running=None if marked_first else _own(mark_started),
                still_running_after=self.limits.lease_after,
            )
            # An async agent's call runs on the shared loop, waited for by this thread;
            # any other in a helper thread (or here, under SIGALRM, in a pool process).
            start_on_loop: StartOnLoop | None = getattr(adapter, "start_on_loop", None)
            on_loop = start_on_loop(agent_call) if start_on_loop is not None else None
            if on_loop is not None:
                result = collaboration.with_updates(wait_with_time_limit(on_loop, watch))
            else:
                result = call_with_time_limit(
                    lambda: collaboration.with_updates(adapter.invoke(agent_call)), watch
                )
        except _NotOurs:
            # Another copy of this message started the same attempt a moment ago: this
            # call was interrupted (in a helper thread, it goes on unrecorded); look
            # again when the other copy's lease would have expired.
            self._release(route, Settlement())
            if admission.trial:
                self.breakers.store.release_trial(route.identity)
            return Outcome(retry=self._later(self.limits.lease_ttl, attempt, delivery))
        except _BookkeepingFailed as own:
            self._release(route, Settlement())
            if admission.trial:
                self.breakers.store.release_trial(route.identity)
            raise own.error from None
        except Exception as exc:  # every agent failure is classified and recorded
            seconds = time.perf_counter() - started
            failure = classify(exc, agent.retry)
            spent = spending.spent
            self._release(
                route,
                Settlement(
                    seconds=seconds,
                    # Timed out: the server may have used them all.
                    tokens=None
                    if failure.outcome == OUTCOME_TIMEOUT
                    else spent.tokens_in + spent.tokens_out,
                    pause_seconds=failure.retry_after if failure.transient else None,
                    avoid=failure.transient,
                ),
            )
            self.breakers.record_call(
                route.identity,
                agent.breaker,
                failed=is_failure(agent.breaker, failure.breaker_failure, seconds),
                trial=admission.trial,
                error=f"{failure.type}: {failure.message}",
            )
            error = AttemptError(
                type=failure.type, message=redact(failure.message), outcome=failure.outcome
            )
            end = replace(
                begun,
                duration_ms=int(seconds * 1000),
                outcome=failure.outcome,
                error=error,
                # Requests it settled before failing were spent all the same; where it
                # went is recorded either way.
                usage=_with_endpoint(usage_record(spending.spent), route.address),
                context_version=collaboration.context_version,
            )
            if failure.transient and attempt < agent.retry.max_attempts:
                delay = next_delay(agent.retry, attempt, delivery.previous_delay, random.Random())
                if failure.retry_after is not None:
                    delay = max(delay, failure.retry_after)
                retry_at = now() + timedelta(seconds=delay)
                if call.deadline is None or retry_at < call.deadline:
                    store.record_retry(end, retry_at, execution_pending=state.execution_pending)
                    return Outcome(
                        retry=RetryLater(min(delay, self.limits.max_countdown), attempt + 1, delay)
                    )
                end = replace(
                    end,
                    error=replace(
                        error,
                        message=f"{failure.message} (no retry: step deadline of "
                        f"{step.deadline:g}s would pass)",
                    ),
                )
            assert end.error is not None
            failed = StepRecord(
                status=FAILED, output=None, error=f"{end.error.type}: {end.error.message}"
            )
            decided = store.record_failure(
                end,
                state.countdown,
                step_started_at=state.row.started_at,
                execution_pending=state.execution_pending,
                finish=state.finish_with(failed),
            )
            continued = state.continuation(decided, finalized=state.finishes)
            return replace(continued, failure=failed.error)
        seconds = time.perf_counter() - started
        self._release(
            route,
            Settlement(seconds=seconds, tokens=result.usage.tokens_in + result.usage.tokens_out),
        )
        self.breakers.record_call(
            route.identity,
            agent.breaker,
            failed=is_failure(agent.breaker, False, seconds),
            trial=admission.trial,
        )
        usage = spending.price(result.usage)
        spending.charge(usage)
        # The attempt's memory writes and messages, applied before its success (or its
        # handoff) is recorded. A crash between the two leaves the step to run again,
        # and the marker its batch left refuses the next attempt's: applied once.
        self.memory.apply(collaboration.batch())
        if result.handoff is not None:
            ended = replace(
                begun,
                duration_ms=int(seconds * 1000),
                usage=_with_endpoint(usage_record(usage), route.address),
                tool_calls=[asdict(call) for call in result.tool_calls] or None,
                context_version=collaboration.context_version,
            )
            handed = self._hand_off(
                state, attempt, result.handoff, confidence=None, rule=None, end=ended
            )
            if handed is not None:
                return handed
        output = state.join_output(result.output) if step.join is not None else result.output
        done = StepRecord(status=COMPLETED, output=output, error=None)
        decided = store.record_success(
            replace(
                begun,
                duration_ms=int(seconds * 1000),
                usage=_with_endpoint(usage_record(usage), route.address),
                tool_calls=[asdict(call) for call in result.tool_calls] or None,
                context_version=collaboration.context_version,
            ),
            output,
            state.countdown,
            step_started_at=state.row.started_at,
            execution_pending=state.execution_pending,
            finish=state.finish_with(done),
        )
        return state.continuation(decided, finalized=state.finishes)

    def _visible_rows(self, state: _State) -> Mapping[str, StepState]:
        """The rows of every step the step may see: those read already, else read now."""
        step, rows = state.step, state.rows
        if all(sid in rows for sid in step.visible):
            return rows
        return {
            **self.store.steps_by_id(state.delivery.execution_id, step.visible),
            **rows,
        }


@dataclass
class _State:
    """One delegation's read, with what follows from it."""

    team: TeamContext
    step: PlannedStep
    row: StepState
    rows: Mapping[str, StepState]
    view: d.View
    delivery: Delivery
    execution_status: str | None
    # This read follows this delegation's own cancelling of a join's parents.
    looked_again: bool = False

    @property
    def is_item(self) -> bool:
        """A step added at run time (a map item, a handoff, a question)."""
        return self.step.id != self.delivery.step_id

    @property
    def is_map(self) -> bool:
        """A map step itself (it joins items), not one that joins its handoff."""
        return not self.is_item and self.step.map is not None

    @property
    def added_by_agent(self) -> bool:
        """A handoff or a question: its row holds its task and input."""
        origin = origin_of(self.delivery.step_id)
        return origin is not None and origin.kind is not Added.ITEM

    @property
    def task(self) -> str | None:
        if self.added_by_agent and isinstance(self.row.item, dict):
            task = self.row.item.get("task")
            return task if isinstance(task, str) else None
        return self.step.task

    @property
    def execution_pending(self) -> bool:
        return self.execution_status == ExecutionStatus.PENDING

    @property
    def countdown(self) -> Countdown:
        if self.is_item:
            return Countdown(dependents=tuple(self.row.dependents or ()), sink=False)
        return Countdown(dependents=self.step.dependents, sink=self.step.sink)

    @property
    def finishes(self) -> bool:
        """This step's write records the execution's end (see ``finishes_with``)."""
        return not self.is_item and self.team.plan.finishes_with(self.step)

    def finish_with(self, record: StepRecord) -> tuple[str, Any, str | None] | None:
        """The execution's outcome once this step ends as ``record``, if this step's
        write ends the execution: its rows cover every other step."""
        if not self.finishes:
            return None
        records = {sid: record_of(row) for sid, row in self.rows.items()}
        records[self.step.id] = record
        outcome = decide_outcome(self.team.plan, records)
        return outcome.status, outcome.output, outcome.error

    def continuation(self, decided: Decided | None, *, finalized: bool = False) -> Outcome:
        if decided is None:
            # Decided by another copy of this message; that copy sends what follows.
            return Outcome()
        send = [(step_id, 1) for step_id in _made_ready(self.team.plan, decided)]
        if self.is_item and self.row.origin:
            for parent, waiting in decided.counts:
                if waiting > 0:
                    released = released_after(self.row.origin, waiting)
                    if released is not None:
                        send.append((released, 1))
                    del parent
        return Outcome(send=tuple(send), ended=decided.ended, finalized=finalized)

    def _join_parents(self) -> tuple[tuple[Parent, ...], str]:
        """A reducer join's parents (all decided when it calls) and what made it run."""
        assert self.step.join is not None
        parents = d.join_parents(self.step, self.rows)
        passed = d.join_deadline_passed(self.view.row, self.view.now)
        verdict = readiness(self.step.join, parents, deadline_passed=passed)
        return parents, verdict.trigger if isinstance(verdict, JoinRun) else ALL

    def join_input(self) -> Any:
        """A reducer's input: every parent's state and output, their consensus and
        conflicts, and what made the join run."""
        assert self.step.join is not None
        parents, trigger = self._join_parents()
        return reducer_input(self.step.join, parents, trigger)

    def join_output(self, output: Any) -> Any:
        """A reducer join's output: the reducer's answer as the result, with the
        consensus and conflicts it was shown."""
        assert self.step.join is not None
        parents, trigger = self._join_parents()
        return reduced(self.step.join, parents, trigger, output)

    def attempt_end(self, agent: str, attempt: int, started_at: datetime) -> AttemptEnd:
        """The audit row of an attempt that starts now; its end fills in the rest."""
        return AttemptEnd(
            execution_id=self.delivery.execution_id,
            step_id=self.delivery.step_id,
            attempt=attempt,
            agent=agent,
            task_id=self.delivery.task_id,
            worker=self.delivery.worker,
            started_at=started_at,
            duration_ms=0,
        )

    def step_input(self, visible_rows: Callable[[_State], Mapping[str, StepState]]) -> Any:
        step = self.step
        if self.added_by_agent and isinstance(self.row.item, dict):
            return self.row.item.get("input")
        if step.input_from is None:
            return self.view.input
        upstream = self.rows[step.input_from]
        # A pipeline stage whose predecessor was skipped by its condition passes the last
        # output along, as if the skipped stage were the identity.
        if upstream.status == COMPLETED:
            return upstream.output
        rows = visible_rows(self)
        for sid in reversed(step.visible):
            if rows[sid].status == COMPLETED:
                return rows[sid].output
        return self.view.input


def _made_ready(plan: ExecutionPlan, decided: Decided) -> list[str]:
    """What one decision sends: each step whose count reached zero, and each early join
    (quorum, deadline) that its count now lets look at its parents again."""
    ready = list(decided.ready)
    for step_id, waiting in decided.counts:
        if waiting > 0 and step_id in plan.early_joins:
            step = plan.step(step_id)
            assert step.join is not None
            if step.join.wakes(len(step.deps), waiting):
                ready.append(step_id)
    return ready


def _with_endpoint(usage: dict[str, Any] | None, address: str | None) -> dict[str, Any] | None:
    if address is None or (usage is not None and usage.get("endpoint")):
        return usage
    return {**(usage or {}), "endpoint": address}


def _dependents(plan: ExecutionPlan, row: Any) -> tuple[str, ...]:
    if row.dependents:
        return tuple(row.dependents)
    return plan.step(row.step_id).dependents if plan.has(row.step_id) else ()


class _Aware:
    """A step row whose datetimes are timezone-aware (SQLite hands back naive UTC)."""

    def __init__(self, row: StepState) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._row, name)
        return aware(value) if isinstance(value, datetime) else value


class UpstreamOutputs(Mapping[str, Any]):
    """``AgentCall.outputs``: the output of every finished step the agent's step may
    see, in plan order, read when the agent first looks (most never do)."""

    def __init__(self, step: PlannedStep, load: Callable[[], Mapping[str, StepState]]) -> None:
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
                    sid: rows[sid].output
                    for sid in visible
                    if rows[sid].status == StepStatus.COMPLETED
                }
            return self._outputs

    def __getitem__(self, step_id: str) -> Any:
        return self._all()[step_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _first_agent(plan: ExecutionPlan, step_id: str) -> str:
    """The agent a chain of handoffs started from: that of the step (plan step, item
    or question) the first handoff left."""
    current = step_id
    while (origin := origin_of(current)) is not None and origin.kind is Added.HANDOFF:
        current = origin.parent
    return planned_for(plan, current).agent
