"""Circuit breaker transitions as pure functions over a snapshot of the shared state.

CLOSED → OPEN after the policy's failure condition (N consecutive failures, or a failure
rate over a sliding window of calls once ``min_calls`` were seen; slow calls may count as
failures); OPEN → HALF_OPEN after ``reset_timeout`` (by a trial call or a healthy probe);
HALF_OPEN admits ``half_open_max_calls`` trial calls; a success closes, a failure re-opens.
The store applies these with compare-and-set updates so all workers agree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from orchestration.spec import BreakerPolicy

CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"


@dataclass(frozen=True)
class BreakerSnapshot:
    state: str = CLOSED
    consecutive_failures: int = 0
    outcomes: str = ""
    opened_at: datetime | None = None
    next_trial_at: datetime | None = None
    half_open_calls: int = 0
    probe_failures: int = 0
    last_error: str | None = None


def failure_rate(outcomes: str) -> float:
    return outcomes.count("1") / len(outcomes) if outcomes else 0.0


def should_open(snapshot: BreakerSnapshot, policy: BreakerPolicy) -> bool:
    if policy.failure_threshold and snapshot.consecutive_failures >= policy.failure_threshold:
        return True
    return (
        policy.failure_rate is not None
        and len(snapshot.outcomes) >= policy.min_calls
        and failure_rate(snapshot.outcomes) >= policy.failure_rate
    )


def opened(
    snapshot: BreakerSnapshot, policy: BreakerPolicy, now: datetime, error: str | None
) -> BreakerSnapshot:
    return replace(
        snapshot,
        state=OPEN,
        opened_at=now,
        next_trial_at=now + timedelta(seconds=policy.reset_timeout),
        half_open_calls=0,
        last_error=error or snapshot.last_error,
    )


def closed(snapshot: BreakerSnapshot) -> BreakerSnapshot:
    return BreakerSnapshot(state=CLOSED, last_error=snapshot.last_error)


def is_failure(policy: BreakerPolicy, failed: bool, seconds: float) -> bool:
    slow = policy.slow_call_seconds is not None and seconds >= policy.slow_call_seconds
    return failed or slow


def after_call(
    snapshot: BreakerSnapshot,
    policy: BreakerPolicy,
    *,
    failed: bool,
    trial: bool,
    now: datetime,
    error: str | None = None,
) -> BreakerSnapshot:
    """The state after a call finished. ``trial``: it was admitted by HALF_OPEN."""
    if snapshot.state == HALF_OPEN:
        if not trial:
            return snapshot  # admitted while closed, finished after: says nothing new
        if failed:
            return opened(
                replace(snapshot, consecutive_failures=snapshot.consecutive_failures + 1),
                policy,
                now,
                error,
            )
        return closed(snapshot)
    if snapshot.state == OPEN:
        return snapshot  # a late result from before the breaker opened
    consecutive = snapshot.consecutive_failures + 1 if failed else 0
    outcomes = snapshot.outcomes
    if policy.failure_rate is not None:
        outcomes = (outcomes + ("1" if failed else "0"))[-policy.window :]
    updated = replace(
        snapshot,
        consecutive_failures=consecutive,
        outcomes=outcomes,
        last_error=error if failed and error else snapshot.last_error,
    )
    return opened(updated, policy, now, error) if should_open(updated, policy) else updated


def after_probe(
    snapshot: BreakerSnapshot,
    policy: BreakerPolicy,
    *,
    healthy: bool,
    failures_to_open: int,
    now: datetime,
    detail: str | None = None,
) -> BreakerSnapshot:
    """The state after a heartbeat probe of the agent's health check."""
    if healthy:
        cooled = snapshot.next_trial_at is not None and now >= snapshot.next_trial_at
        if snapshot.state == OPEN and cooled:
            return replace(snapshot, state=HALF_OPEN, half_open_calls=0, probe_failures=0)
        return replace(snapshot, probe_failures=0)
    failures = snapshot.probe_failures + 1
    updated = replace(snapshot, probe_failures=failures)
    if snapshot.state != OPEN and failures >= failures_to_open:
        return opened(updated, policy, now, f"{failures} failed health probes: {detail}")
    return updated
