"""What an operator reads about the past: recent executions, one execution's log, the
audit trail as records, per-agent metrics, a failure report, and retention.

Each function takes the runtime to read (by default the process's) and returns plain
models the CLI renders and prints as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestration.client.retry import REUSED
from orchestration.client.runtime import Runtime, get_runtime
from orchestration.constants import COMPLETED, OUTCOME_SUCCESS, STEP_FINAL
from orchestration.insights import (
    BreakerChange,
    Failure,
    Thresholds,
    find_patterns,
)
from orchestration.resilience.breaker import CLOSED
from orchestration.spec import TeamSpec
from orchestration.spending import USAGE_KEYS
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.breakers import BreakerStore
from orchestration.store.history import HistoryRecords, Spent
from orchestration.store.models import ExecutionRow, StepRow
from orchestration.store.repository import aware, now
from workflows.plan import build_plan

# A failure report reads at most this many of the window's latest failures.
REPORT_FAILURES = 20_000


def _when(value: datetime | None) -> str | None:
    return aware(value).isoformat() if value is not None else None


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((aware(end) - aware(start)).total_seconds() * 1000))


def _cost(spent: Spent) -> float | None:
    # A call whose model has no price makes the sum unknown, not smaller.
    return None if spent.unpriced else round(spent.cost_usd, 8)


# --- executions ---------------------------------------------------------------------------


class ExecutionSummary(BaseModel):
    execution_id: str
    team: str
    status: str
    created_at: str
    # From its start (else its creation) to its end, or to now while it runs.
    duration_ms: int | None
    steps: int
    steps_completed: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    retry_of: str | None


def recent_executions(
    *,
    status: str | None = None,
    team: str | None = None,
    since: datetime | None = None,
    limit: int = 20,
    runtime: Runtime | None = None,
) -> list[ExecutionSummary]:
    """The latest executions first."""
    records = HistoryRecords((runtime or get_runtime()).store)
    moment = now()
    return [
        ExecutionSummary(
            execution_id=line.id,
            team=line.team,
            status=line.status,
            created_at=line.created_at.isoformat(),
            duration_ms=_ms(line.started_at or line.created_at, line.finished_at or moment),
            steps=line.steps,
            steps_completed=line.steps_completed,
            tokens_in=line.spent.tokens_in,
            tokens_out=line.spent.tokens_out,
            cost_usd=_cost(line.spent),
            retry_of=line.retry_of,
        )
        for line in records.executions(status=status, team=team, since=since, limit=limit)
    ]


# --- one execution's log ------------------------------------------------------------------


class AttemptLog(BaseModel):
    step: str
    agent: str
    attempt: int
    outcome: str | None
    error: str | None
    started_at: str
    finished_at: str | None
    duration_ms: int | None
    # From when the attempt could start (its step's dependencies decided, or the attempt
    # before it ended) to when it did: queueing, retry backoff, a breaker's cool-down.
    waited_ms: int | None
    worker: str | None
    endpoint: str | None
    model: str | None
    usage: dict[str, Any] | None
    tool_calls: list[dict[str, Any]] | None
    # The step's output, on the attempt that produced it.
    output: Any = None
    produced_output: bool = False


class StepNote(BaseModel):
    """A step decided without an attempt of its own: skipped, cancelled, a map step
    joining its items, or a result kept from the execution retried."""

    step: str
    agent: str
    status: str
    reason: str | None
    output: Any


class ExecutionLog(BaseModel):
    execution_id: str
    team: str
    status: str
    error: str | None
    retry_of: str | None
    attempts: list[AttemptLog]
    without_attempts: list[StepNote]


def execution_log(execution_id: str, *, runtime: Runtime | None = None) -> ExecutionLog:
    """Every attempt of the execution in the order they began, with what it waited,
    used and called, and each step's output on the attempt that produced it."""
    records = HistoryRecords((runtime or get_runtime()).store)
    execution, steps, attempts = records.execution_log(execution_id)
    by_step = {row.step_id: row for row in steps}
    ready = _ready_moments(execution, by_step)
    last_success = {row.step_id: row.attempt for row in attempts if row.outcome == OUTCOME_SUCCESS}
    previous_end: dict[str, datetime | None] = {}
    logs = []
    for row in attempts:
        usage = row.usage or None
        step = by_step.get(row.step_id)
        # A retry could start when the attempt before it ended; a first attempt, when
        # its step was ready.
        since = previous_end[row.step_id] if row.step_id in previous_end else ready.get(row.step_id)
        previous_end[row.step_id] = row.finished_at
        produced = (
            step is not None
            and step.status == COMPLETED
            and last_success.get(row.step_id) == row.attempt
        )
        logs.append(
            AttemptLog(
                step=row.step_id,
                agent=row.agent,
                attempt=row.attempt,
                outcome=row.outcome,
                error=f"{row.error_type}: {row.error_message}" if row.error_type else None,
                started_at=_when(row.started_at) or "",
                finished_at=_when(row.finished_at),
                duration_ms=row.duration_ms,
                waited_ms=_ms(since, row.started_at),
                worker=row.worker,
                endpoint=(usage or {}).get("endpoint"),
                model=(usage or {}).get("model"),
                usage=usage,
                tool_calls=row.tool_calls or None,
                output=step.output if produced and step is not None else None,
                produced_output=produced,
            )
        )
    attempted = {row.step_id for row in attempts}
    notes = [
        StepNote(
            step=row.step_id,
            agent=row.agent,
            status=row.status,
            reason=_note(row),
            output=row.output,
        )
        for row in sorted(steps, key=_step_order)
        if row.step_id not in attempted and row.status in STEP_FINAL
    ]
    return ExecutionLog(
        execution_id=execution.id,
        team=execution.team,
        status=execution.status,
        error=execution.error,
        retry_of=execution.retry_of,
        attempts=logs,
        without_attempts=notes,
    )


def step_starts(execution_id: str, *, runtime: Runtime | None = None) -> dict[str, datetime]:
    """When each step of the execution that has started first started (a view opened
    while it runs counts a running step's time from there)."""
    rows = (runtime or get_runtime()).executions.steps(execution_id)
    return {row.step_id: aware(row.started_at) for row in rows if row.started_at is not None}


def _step_order(row: StepRow) -> tuple[int, int, str]:
    return (row.position, -1 if row.item_index is None else row.item_index, row.step_id)


def _note(row: StepRow) -> str | None:
    origin = row.origin if isinstance(row.origin, dict) else {}
    if origin.get("kind") == REUSED:
        return f"kept from execution {origin.get('execution')}"
    if row.error_type:
        return f"{row.error_type}: {row.error_message}"
    return row.reason


def _ready_moments(
    execution: ExecutionRow, steps: dict[str, StepRow]
) -> dict[str, datetime | None]:
    """When each step could first start: a plan step once its dependencies were decided
    (a root: once the execution was created); a step added at run time once the step
    that added it had started."""
    deps: dict[str, tuple[str, ...]] = {}
    try:
        plan = build_plan(TeamSpec.model_validate(execution.spec))
        deps = {step.id: step.deps for step in plan.steps}
    except (ValidationError, ValueError):
        pass  # a spec this version cannot read: only the waits between attempts are known
    moments: dict[str, datetime | None] = {}
    for sid, row in steps.items():
        if row.parent_id is not None:
            parent = steps.get(row.parent_id)
            moments[sid] = parent.started_at if parent is not None else None
        elif sid in deps:
            if not deps[sid]:
                moments[sid] = execution.created_at
                continue
            ends = [steps[dep].finished_at if dep in steps else None for dep in deps[sid]]
            known = [aware(end) for end in ends if end is not None]
            moments[sid] = max(known) if len(known) == len(ends) else None
    return moments


# --- the audit trail ----------------------------------------------------------------------

AUDIT_FIELDS = (
    "execution_id",
    "team",
    "step",
    "attempt",
    "agent",
    "outcome",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "duration_ms",
    "worker",
    "task_id",
    *USAGE_KEYS,
    "tool_calls",
)


def audit_records(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    runtime: Runtime | None = None,
) -> Iterator[dict[str, Any]]:
    """One flat record per attempt that began in [since, until), in the order they
    began (keys: ``AUDIT_FIELDS``), read a page at a time as they are consumed."""
    records = HistoryRecords((runtime or get_runtime()).store)
    for row in records.audit(since=since, until=until):
        usage = row["usage"] if isinstance(row["usage"], dict) else {}
        record: dict[str, Any] = {
            "execution_id": row["execution_id"],
            "team": row["team"],
            "step": row["step_id"],
            "attempt": row["attempt"],
            "agent": row["agent"],
            "outcome": row["outcome"],
            "error_type": row["error_type"],
            "error_message": row["error_message"],
            "started_at": _when(row["started_at"]),
            "finished_at": _when(row["finished_at"]),
            "duration_ms": row["duration_ms"],
            "worker": row["worker"],
            "task_id": row["task_id"],
        }
        for name in USAGE_KEYS:
            record[name] = usage.get(name)
        record["tool_calls"] = row["tool_calls"] or None
        yield record


def csv_value(value: Any) -> Any:
    """A record's value in a CSV cell: lists and mappings as their JSON."""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return value


# --- metrics --------------------------------------------------------------------------------


class AgentMetrics(BaseModel):
    agent: str
    team: str
    endpoint: str | None
    # What the agent calls, and the state of its breaker now.
    identity: str | None
    breaker: str
    total: int
    succeeded: int
    # Ended in an error, a time-out or a lost worker (time-outs are also counted apart).
    failed: int
    timeouts: int
    # Refused without a call (its breaker open, the step's deadline passed).
    rejected: int
    # Attempts after a step's first.
    retried: int
    running: int
    # Succeeded over the calls that reached the agent and ended (None: no such call).
    success_rate: float | None
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    tokens_in: int
    tokens_out: int
    cost_usd: float | None


def agent_metrics(
    *, since: datetime, agent: str | None = None, runtime: Runtime | None = None
) -> list[AgentMetrics]:
    """Per agent, team and endpoint, over the attempts that began since ``since``."""
    store = (runtime or get_runtime()).store
    stats = HistoryRecords(store).agent_stats(since=since, agent=agent)
    identities = {(row.team, row.name): row.identity for row in AgentRegistry(store).agents()}
    states = {view.key: view.snapshot.state for view in BreakerStore(store).all()}
    found = []
    for group in stats:
        identity = identities.get((group.team, group.agent))
        ended = group.succeeded + group.failed
        found.append(
            AgentMetrics(
                agent=group.agent,
                team=group.team,
                endpoint=group.endpoint,
                identity=identity,
                breaker=states.get(identity or "", CLOSED),
                total=group.total,
                succeeded=group.succeeded,
                failed=group.failed,
                timeouts=group.timeouts,
                rejected=group.rejected,
                retried=group.retried,
                running=group.running,
                success_rate=round(group.succeeded / ended, 4) if ended else None,
                avg_ms=_rounded(group.mean_ms),
                p50_ms=_rounded(group.p50_ms),
                p95_ms=_rounded(group.p95_ms),
                tokens_in=group.spent.tokens_in,
                tokens_out=group.spent.tokens_out,
                cost_usd=_cost(group.spent),
            )
        )
    return found


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# --- failure report -------------------------------------------------------------------------


class PatternReport(BaseModel):
    kind: str
    subject: str
    summary: str
    evidence: dict[str, Any]
    recommendation: str


class FailureReport(BaseModel):
    since: str
    until: str
    # The window the rises are measured against: as long, just before.
    previous_since: str
    failures_read: int
    patterns: list[PatternReport]


def failure_report(
    *,
    since: datetime,
    until: datetime | None = None,
    thresholds: Thresholds | None = None,
    runtime: Runtime | None = None,
) -> FailureReport:
    """The failure patterns of [since, until) (until: now), each with its evidence and
    a recommendation; rises are against the window of the same length before it."""
    records = HistoryRecords((runtime or get_runtime()).store)
    end = until or now()
    start_before = since - (end - since)
    failures = [
        Failure(
            at=aware(row.started_at),
            execution_id=row.execution_id,
            team=row.team,
            step_id=row.step_id,
            agent=row.agent,
            attempt=row.attempt,
            outcome=row.outcome,
            error_type=row.error_type,
            error_message=row.error_message,
            duration_ms=row.duration_ms,
        )
        for row in records.failures(since, end, REPORT_FAILURES)
    ]
    current = records.window_stats(since, end)
    previous = records.window_stats(start_before, since)
    changes = [
        BreakerChange(key=row.key, at=aware(row.at), to_state=row.to_state, reason=row.reason)
        for row in records.breaker_events(since, end)
    ]
    patterns = find_patterns(failures, current, previous, changes, thresholds)
    return FailureReport(
        since=since.isoformat(),
        until=end.isoformat(),
        previous_since=start_before.isoformat(),
        failures_read=len(failures),
        patterns=[
            PatternReport(
                kind=p.kind,
                subject=p.subject,
                summary=p.summary,
                evidence=p.evidence,
                recommendation=p.recommendation,
            )
            for p in patterns
        ],
    )


# --- retention ------------------------------------------------------------------------------


class PurgeReport(BaseModel):
    before: str
    dry_run: bool
    executions: int
    steps: int
    attempts: int
    heartbeats: int
    breaker_events: int


def purge(
    older_than: timedelta, *, dry_run: bool = False, runtime: Runtime | None = None
) -> PurgeReport:
    """Delete what finished more than ``older_than`` ago (``dry_run``: count it)."""
    before = now() - older_than
    counts = HistoryRecords((runtime or get_runtime()).store).purge(before, dry_run=dry_run)
    return PurgeReport(
        before=before.isoformat(),
        dry_run=dry_run,
        executions=counts.executions,
        steps=counts.steps,
        attempts=counts.attempts,
        heartbeats=counts.heartbeats,
        breaker_events=counts.breaker_events,
    )


__all__ = [
    "AUDIT_FIELDS",
    "AgentMetrics",
    "AttemptLog",
    "ExecutionLog",
    "ExecutionSummary",
    "FailureReport",
    "PurgeReport",
    "agent_metrics",
    "audit_records",
    "execution_log",
    "failure_report",
    "purge",
    "recent_executions",
    "step_starts",
]
