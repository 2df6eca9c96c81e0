"""What a delegation does with the state it read, before any call: a pure function.

The delegation's shell (``workers.delegation``) reads one step's row, its execution's
status and input, and the rows of the steps it depends on; ``decide`` turns that into
one decision, and the shell carries it out. Nothing here touches the database, the
broker or the clock: ``now`` is passed in, so every rule is tested on built state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestration.engine import approvals
from orchestration.errors import AgentError, DeadlineExceeded, ForEachError, WorkerLost
from orchestration.spec import APPROVAL_PSEUDO_AGENT, ApprovalSpec
from orchestration.step_state import StepState
from workflows.aggregation import (
    JoinFail,
    JoinRule,
    JoinRun,
    JoinSkip,
    JoinWait,
    Parent,
    aggregate,
    cancel_reason,
    no_success,
    readiness,
)
from workflows.conditions import ListExpressionError, compile_condition, evaluate_list
from workflows.plan import PlannedStep
from workflows.status import STEP_FINAL, AttemptOutcome, ExecutionStatus, SkipCause, StepStatus


@dataclass(frozen=True)
class View:
    """The state one delegation read."""

    step: PlannedStep  # the plan step (a map item's: its map step)
    row: StepState
    rows: Mapping[str, StepState]
    execution_status: str
    input: Any
    # The attempt the message names, and the step's latest recorded attempt if that is
    # this one or a later one (a redelivered, duplicated or resumed message).
    attempt: int
    recorded: AttemptState | None
    # The Celery task id of the message being handled: an open attempt recorded under
    # it belongs to a run of this very message that stopped (its worker died).
    task_id: str | None
    # An open attempt recorded under this task id may be taken over at once (the
    # message was redelivered, or a re-drive after its redelivery sent it).
    orphaned_by: str | None
    lease_ttl: float
    # Lost attempts so far: they count against the retry policy.
    lost: int
    max_attempts: int
    now: datetime  # timezone-aware, as are the datetimes of ``row`` and ``recorded``
    # The step's approval, and its request and decision if one was recorded (read only
    # for a step that has an approval).
    gate: ApprovalSpec | None = None
    approval: approvals.ApprovalState | None = None


@dataclass(frozen=True)
class AttemptState:
    attempt: int
    outcome: str | None
    task_id: str | None
    started_at: datetime
    heartbeat_at: datetime | None


# --- decisions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Redrive:
    """The step was decided already, and this message may have run before (it was
    delivered again, or sent again by Troupe after its run failed): send on whatever
    the decision made ready, in case its run died before sending it."""


@dataclass(frozen=True)
class Stale:
    """A copy of an attempt that ended (its successor was queued separately), or of a
    step another message decided (that message sends on what it made ready)."""


@dataclass(frozen=True)
class Decide:
    """Decide the step without calling an agent (skipped or cancelled)."""

    status: StepStatus
    cause: SkipCause | None
    reason: str


@dataclass(frozen=True)
class Expand:
    """A map step whose list is known: add one step per item (none: it completes)."""

    values: list[Any]


@dataclass(frozen=True)
class Join:
    """A map step whose items are all decided: its result is theirs."""


@dataclass(frozen=True)
class SendItems:
    """A map step still waiting for items (a redelivered copy of its message): send
    its released undecided items again, in case their messages died with a worker."""


@dataclass(frozen=True)
class Refuse:
    """Fail the step without a call, audited as a refused attempt."""

    attempt: int
    # Recorded as the refused attempt's error: its class name and its message.
    error: AgentError


@dataclass(frozen=True)
class LookLater:
    """Another copy may still be running this attempt: look again when its lease would
    have expired."""

    seconds: float


@dataclass(frozen=True)
class Call:
    """Call the agent: this attempt, after marking ``lost`` (if any) as lost."""

    attempt: int
    lost: int | None
    deadline: datetime | None


@dataclass(frozen=True)
class WaitForParents:
    """A join its parents do not let run yet: nothing to do (a later parent's decision
    or its deadline's timer sends it again). ``seconds``: look again then."""

    seconds: float | None


@dataclass(frozen=True)
class CancelParents:
    """The join decides without the parents still undecided: cancel each (step id, the
    reason recorded on it), then look again."""

    parents: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Joined:
    """The join's decision without an agent: completed with the aggregate, or failed."""

    status: StepStatus
    output: Any
    error_type: str | None
    error: str | None


Decision = (
    Redrive
    | Stale
    | Decide
    | Expand
    | Join
    | SendItems
    | Refuse
    | LookLater
    | Call
    | WaitForParents
    | CancelParents
    | Joined
)


def decide(view: View) -> Decision | approvals.GateDecision:
    row, step = view.row, view.step
    is_item = row.step_id != step.id
    if row.status in STEP_FINAL:
        if view.orphaned_by is None:
            # A message delivered for the first time cannot be the one whose run
            # decided the step: it is a copy (the earlier message of a step the reaper
            # promoted, or the promoted one; a resumption's, a re-drive's). The run that
            # decided the step sent on what it made ready, or died and its own message,
            # delivered again, re-drives. So a copy sends nothing: copies re-driving
            # each other would chase the execution to its end.
            return Stale()
        return Redrive()
    if view.execution_status == ExecutionStatus.CANCELLED:
        return Decide(StepStatus.CANCELLED, None, "execution cancelled")
    if row.fan_out is not None:
        # A map step waits for its items; any other step that handed off waits for its
        # handoff: either way, join once they are decided, else (re)send them.
        return Join() if row.waiting <= 0 else SendItems()
    if not is_item and step.join is not None and row.status == StepStatus.PENDING:
        judged = decide_join(view, step.join)
        if judged is not None:
            return judged  # else a reducer, called below as any agent
    if row.status == StepStatus.PENDING and not is_item:
        blocked_by = failed_dependency(step, view.rows)
        if blocked_by:
            return Decide(
                StepStatus.SKIPPED,
                SkipCause.UPSTREAM,
                f"upstream step {blocked_by!r} did not complete",
            )
        if step.when:
            outcome = compile_condition(step.when).evaluate(view.input, condition_view(view))
            if not outcome.value:
                return Decide(StepStatus.SKIPPED, SkipCause.CONDITION, outcome.reason)
    if not is_item and view.gate is not None:
        # Before anything is called or expanded (a map step is approved once, before
        # its items are added), after the dependencies and the condition.
        gated = approvals.gate(
            view.gate, view.approval, view.now, agentless=step.agent == APPROVAL_PSEUDO_AGENT
        )
        if isinstance(gated, approvals.RejectGate):
            return Refuse(max(1, view.attempt), gated.error)
        if gated is not None:
            return gated
    if not is_item and step.map is not None:
        try:
            values = evaluate_list(
                compile_condition(step.map.for_each), view.input, condition_view(view)
            )
        except ListExpressionError as exc:
            return Refuse(max(1, view.attempt), ForEachError(str(exc)))
        return Expand(values)

    attempt, lost = view.attempt, None
    recorded = view.recorded
    if recorded is not None:
        # The step's latest recorded attempt, at or past the one the message names.
        ours = recorded.task_id is not None and recorded.task_id in (
            view.task_id,
            view.orphaned_by,
        )
        if recorded.outcome is not None:
            if not (ours and recorded.outcome == AttemptOutcome.LOST):
                return Stale()  # that attempt ended; its successor was queued separately
            # A run of this message marked it lost, then died before the next attempt.
            attempt = recorded.attempt + 1
        else:
            if not ours:
                lease = recorded.heartbeat_at or recorded.started_at
                remaining = view.lease_ttl - (view.now - lease).total_seconds()
                if remaining > 0:
                    return LookLater(remaining + 0.1)
            lost, attempt = recorded.attempt, recorded.attempt + 1
    if attempt > view.max_attempts and (lost is not None or view.lost):
        # Lost attempts count against the retry policy: a step whose attempts keep
        # killing their process must end.
        return Refuse(
            attempt,
            WorkerLost(
                f"{view.lost + (lost is not None)} of {attempt - 1} attempts ended with their "
                "worker process (killed, or the agent exited it); no attempts left"
            ),
        )
    deadline = step_deadline(row, step, view.now)
    if deadline is not None and view.now >= deadline:
        return Refuse(attempt, DeadlineExceeded(f"step deadline of {step.deadline:g}s passed"))
    return Call(attempt, lost, deadline)


def failed_dependency(step: PlannedStep, rows: Mapping[str, StepState]) -> str | None:
    if step.join is not None:
        return None  # a join judges its parents by its own rules (decide_join)
    for dep in step.deps:
        row = rows[dep]
        if row.status in (StepStatus.FAILED, StepStatus.CANCELLED):
            return dep
        if row.status == StepStatus.SKIPPED and row.skip_cause == SkipCause.UPSTREAM:
            return dep
    return None


def condition_view(view: View) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for sid in view.step.visible:
        row = view.rows[sid]
        entry: dict[str, Any] = {"status": row.status}
        if row.status == StepStatus.COMPLETED:
            entry["output"] = row.output
        steps[sid] = entry
    return steps


def step_deadline(row: StepState, step: PlannedStep, now: datetime) -> datetime | None:
    if step.deadline is None:
        return None
    started = row.started_at or now
    return started + timedelta(seconds=step.deadline)


# --- joins ------------------------------------------------------------------------------

# A waiting join whose deadline is this close looks again itself (its timer may arrive
# a moment early, from another host's clock); a farther one waits for its timer, and a
# lost timer is found by the reaper.
JOIN_TIMER_SLACK = 2.0


def decide_join(view: View, rule: JoinRule) -> Decision | None:
    """A pending join: wait, cancel the parents it no longer waits for, skip, fail, or
    aggregate. None: a reducer join ready for its agent's call."""
    step = view.step
    parents = join_parents(step, view.rows)
    verdict = readiness(rule, parents, deadline_passed=join_deadline_passed(view.row, view.now))
    if isinstance(verdict, JoinWait):
        due = view.row.next_attempt_at
        remaining = None if due is None else (due - view.now).total_seconds()
        if remaining is not None and remaining <= JOIN_TIMER_SLACK:
            return WaitForParents(remaining + 0.05)
        return WaitForParents(None)
    undecided = [p for p in parents if p.undecided]
    if undecided:
        return CancelParents(
            tuple((p.step_id, cancel_reason(step.id, rule, verdict, p)) for p in undecided)
        )
    if isinstance(verdict, JoinSkip):
        return Decide(StepStatus.SKIPPED, SkipCause.UPSTREAM, verdict.reason)
    if isinstance(verdict, JoinFail):
        return Joined(StepStatus.FAILED, None, verdict.error_type, verdict.reason)
    if step.when:
        outcome = compile_condition(step.when).evaluate(view.input, condition_view(view))
        if not outcome.value:
            return Decide(StepStatus.SKIPPED, SkipCause.CONDITION, outcome.reason)
    failure = no_success(parents)
    if failure is not None:
        return Joined(failure.status, None, failure.error_type, failure.error)
    if rule.reducer is not None:
        return None
    assert isinstance(verdict, JoinRun)
    result = aggregate(rule, parents, verdict.trigger)
    return Joined(result.status, result.output, result.error_type, result.error)


def join_deadline_passed(row: StepState, now: datetime) -> bool:
    """Whether a join's deadline has passed. Armed in ``next_attempt_at`` while it is
    pending; once a reducer join has been called, that column holds its retries, and
    the join ran, so its deadline counts as passed (only a join that ran at its
    deadline still has parents left without a result to account for)."""
    if row.status != StepStatus.PENDING:
        return True
    return row.next_attempt_at is not None and now >= row.next_attempt_at


def join_parents(step: PlannedStep, rows: Mapping[str, StepState]) -> tuple[Parent, ...]:
    """The join's parents as ``workflows.aggregation`` reads them, in dependency order."""
    return tuple(_parent(rows[sid]) for sid in step.deps)


def _parent(row: StepState) -> Parent:
    finished = row.finished_at
    if finished is not None and finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)  # SQLite hands back naive UTC
    return Parent(
        step_id=row.step_id,
        agent=row.agent,
        status=row.status,
        output=row.output,
        error=f"{row.error_type}: {row.error_message}" if row.error_type else None,
        skip_cause=row.skip_cause,
        reason=row.reason,
        started=row.started_at is not None,
        finished_at=finished.timestamp() if finished is not None else None,
    )
