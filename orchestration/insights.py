"""Failure patterns in recent history, found without touching the store: given what the
attempts of a window and the window before it add up to, say what keeps going wrong, with
the evidence, and what to do about it.

Patterns, each only when its evidence passes a threshold (``Thresholds``):

- ``error_cluster``: failures sharing an error signature (the error's type and its
  message with numbers, ids and quoted strings replaced), across steps and executions;
- ``failure_rate_rose`` / ``duration_rose``: an agent that fails more often, or answers
  more slowly, than in the previous window of the same length;
- ``breaker_flapping``: a breaker that opened several times in the window;
- ``step_timeouts``: a step that keeps hitting its agent's time limit;
- ``budget_exceeded``: a team whose executions keep running out of budget.

Time-outs, breaker refusals and budget refusals have patterns of their own, so they are
left out of the error clusters.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflows.runtime_steps import plan_step_of
from workflows.status import AttemptOutcome

CIRCUIT_OPEN = "CircuitOpen"
BUDGET_EXCEEDED = "BudgetExceeded"
WORKER_LOST = "WorkerLost"
OPEN = "open"


@dataclass(frozen=True)
class Failure:
    """An attempt that did not succeed."""

    at: datetime
    execution_id: str
    team: str
    step_id: str
    agent: str
    attempt: int
    outcome: str
    error_type: str | None
    error_message: str | None
    duration_ms: int | None = None


@dataclass(frozen=True)
class CallStats:
    """One agent over one window: calls that reached it and ended, how many of them
    failed, their mean duration."""

    calls: int
    failures: int
    mean_ms: float | None

    @property
    def failure_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class BreakerChange:
    """A breaker's state changed to ``to_state`` at ``at``."""

    key: str
    at: datetime
    to_state: str
    reason: str | None = None


@dataclass(frozen=True)
class Thresholds:
    # Failures sharing a signature before they are a cluster.
    cluster_min: int = 3
    # Calls an agent needs in both windows before a rise is worth reporting.
    rise_min_calls: int = 5
    # Failure rate up by at least this much (0.10: ten percentage points).
    rate_rise: float = 0.10
    # Mean duration multiplied by at least this, and slower by at least ``duration_rise_ms``.
    duration_rise: float = 1.5
    duration_rise_ms: float = 100.0
    # Openings of one breaker in the window.
    flap_opens: int = 3
    # Time-outs of one step.
    timeouts_min: int = 3
    # Executions of one team refused by their budget.
    budget_executions: int = 2
    # Examples kept in evidence.
    examples: int = 3


@dataclass(frozen=True)
class Pattern:
    kind: str
    # What it is about: a signature, an agent, a breaker, a team's step, a team.
    subject: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    recommendation: str = ""


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")
# Hex runs of 8 or more with a digit in them: digests, object ids, request ids.
_HEX = re.compile(r"\b(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPACE = re.compile(r"\s+")
_SIGNATURE_WIDTH = 300


def normalise(message: str | None) -> str:
    """A message with what varies from one occurrence to the next replaced: quoted
    strings, UUIDs, hex ids and numbers."""
    text = _QUOTED.sub("<str>", message or "")
    text = _UUID.sub("<id>", text)
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()[:_SIGNATURE_WIDTH]


def signature(error_type: str | None, message: str | None) -> str:
    """What failures of the same cause have in common: the error's type and its
    normalised message."""
    return f"{error_type or 'error'}: {normalise(message)}"


def find_patterns(
    failures: Sequence[Failure],
    current: Mapping[str, CallStats],
    previous: Mapping[str, CallStats],
    breaker_changes: Sequence[BreakerChange],
    thresholds: Thresholds | None = None,
) -> list[Pattern]:
    """Every pattern the window's failures, its per-agent stats against the previous
    window's, and its breaker changes show."""
    thresholds = thresholds or Thresholds()
    return [
        *error_clusters(failures, thresholds),
        *rises(current, previous, thresholds),
        *flapping_breakers(breaker_changes, failures, thresholds),
        *step_timeouts(failures, thresholds),
        *budgets_hit(failures, thresholds),
    ]


# --- error clusters ---------------------------------------------------------------------


def _clustered(failure: Failure) -> bool:
    return failure.outcome != AttemptOutcome.TIMEOUT and failure.error_type not in (
        CIRCUIT_OPEN,
        BUDGET_EXCEEDED,
    )


def error_clusters(failures: Iterable[Failure], thresholds: Thresholds) -> list[Pattern]:
    groups: dict[str, list[Failure]] = defaultdict(list)
    for failure in failures:
        if _clustered(failure):
            groups[signature(failure.error_type, failure.error_message)].append(failure)
    found = []
    for sign, members in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        if len(members) < thresholds.cluster_min:
            continue
        agents = Counter(f.agent for f in members)
        steps = Counter(f"{f.team}/{plan_step_of(f.step_id)}" for f in members)
        executions = _distinct(f.execution_id for f in members)
        retried = sum(1 for f in members if f.attempt > 1)
        newest = max(members, key=lambda f: f.at)
        found.append(
            Pattern(
                kind="error_cluster",
                subject=sign,
                summary=(
                    f"{len(members)} failures share {sign!r}, in {len(steps)} step(s) of "
                    f"{len(executions)} execution(s)"
                ),
                evidence={
                    "count": len(members),
                    "error_type": newest.error_type,
                    "example": newest.error_message,
                    "agents": dict(agents.most_common()),
                    "steps": dict(steps.most_common(thresholds.examples)),
                    "executions": len(executions),
                    "example_executions": executions[: thresholds.examples],
                    "retries_that_failed": retried,
                    "first_at": min(f.at for f in members).isoformat(),
                    "last_at": newest.at.isoformat(),
                },
                recommendation=_cluster_advice(newest, agents, retried),
            )
        )
    return found


def _cluster_advice(example: Failure, agents: Counter[str], retried: int) -> str:
    names = _names(agents)
    if example.error_type == WORKER_LOST or example.outcome == AttemptOutcome.LOST:
        return (
            f"Attempts of {names} died with their worker process: look in the workers' "
            "logs for crashes or out-of-memory kills, and lower their concurrency or the "
            "agents' memory use."
        )
    if retried:
        return (
            f"Retries do not clear it ({retried} retried attempt(s) failed the same way): "
            f"fix its cause in {names}; if it can never succeed on a retry, raise "
            "PermanentAgentError (or list the error in no_retry_on) so the step fails at "
            "once instead of using its retries."
        )
    return f"Fix its cause in {names}, starting from the example error."


# --- rises against the previous window ----------------------------------------------------


def rises(
    current: Mapping[str, CallStats], previous: Mapping[str, CallStats], thresholds: Thresholds
) -> list[Pattern]:
    found = []
    for agent in sorted(current):
        now, before = current[agent], previous.get(agent)
        if before is None:
            continue
        if now.calls < thresholds.rise_min_calls or before.calls < thresholds.rise_min_calls:
            continue
        evidence = {"now": _stats(now), "before": _stats(before)}
        if now.failure_rate - before.failure_rate >= thresholds.rate_rise:
            found.append(
                Pattern(
                    kind="failure_rate_rose",
                    subject=agent,
                    summary=(
                        f"agent {agent!r} fails {now.failure_rate:.0%} of its calls, "
                        f"up from {before.failure_rate:.0%} in the previous window"
                    ),
                    evidence=evidence,
                    recommendation=(
                        f"Look at what changed for {agent!r} (its service, a deploy, its "
                        "inputs) and at its error clusters in this report."
                    ),
                )
            )
        if (
            now.mean_ms is not None
            and before.mean_ms is not None
            and now.mean_ms >= before.mean_ms * thresholds.duration_rise
            and now.mean_ms - before.mean_ms >= thresholds.duration_rise_ms
        ):
            found.append(
                Pattern(
                    kind="duration_rose",
                    subject=agent,
                    summary=(
                        f"agent {agent!r} takes {now.mean_ms:,.0f} ms a call on average, "
                        f"up from {before.mean_ms:,.0f} ms in the previous window"
                    ),
                    evidence=evidence,
                    recommendation=(
                        f"Check the latency of what {agent!r} calls; if it stays slow, give "
                        "the agent a timeout that fits, or set its breaker's "
                        "slow_call_seconds so slow calls count as failures."
                    ),
                )
            )
    return found


def _stats(stats: CallStats) -> dict[str, Any]:
    return {
        "calls": stats.calls,
        "failures": stats.failures,
        "failure_rate": round(stats.failure_rate, 3),
        "mean_ms": None if stats.mean_ms is None else round(stats.mean_ms, 1),
    }


# --- breakers -----------------------------------------------------------------------------

# A breaker's refusal names it and the end of its cool-down: one open period, one moment.
_REFUSAL = re.compile(r"circuit open for '(?P<key>[^']+)' until (?P<until>\S+)")


def flapping_breakers(
    changes: Sequence[BreakerChange], failures: Iterable[Failure], thresholds: Thresholds
) -> list[Pattern]:
    """Breakers that opened ``flap_opens`` times or more. The breakers' history says
    when each opened; for a breaker with no history in the window (recorded before
    there was one), the distinct cool-downs its refusals name count its openings."""
    opened: dict[str, list[BreakerChange]] = defaultdict(list)
    for change in changes:
        if change.to_state == OPEN:
            opened[change.key].append(change)
    found = []
    for key, openings in sorted(opened.items()):
        if len(openings) < thresholds.flap_opens:
            continue
        found.append(
            _flapping(
                key,
                len(openings),
                {
                    "opened": len(openings),
                    "first_opened_at": openings[0].at.isoformat(),
                    "last_opened_at": openings[-1].at.isoformat(),
                    "last_reason": openings[-1].reason,
                    "source": "breaker history",
                },
            )
        )
    with_history = {change.key for change in changes}
    cooldowns: dict[str, set[str]] = defaultdict(set)
    refusals: Counter[str] = Counter()
    for failure in failures:
        if failure.error_type != CIRCUIT_OPEN:
            continue
        matched = _REFUSAL.search(failure.error_message or "")
        if matched is None or matched["key"] in with_history:
            continue
        cooldowns[matched["key"]].add(matched["until"])
        refusals[matched["key"]] += 1
    for key, ends in sorted(cooldowns.items()):
        if len(ends) < thresholds.flap_opens:
            continue
        found.append(
            _flapping(
                key,
                len(ends),
                {
                    "opened": len(ends),
                    "refused_calls": refusals[key],
                    "source": "refused attempts (no breaker history in the window)",
                },
            )
        )
    return found


def _flapping(key: str, count: int, evidence: dict[str, Any]) -> Pattern:
    return Pattern(
        kind="breaker_flapping",
        subject=key,
        summary=f"the breaker of {key!r} opened {count} times",
        evidence=evidence,
        recommendation=(
            "What it guards fails on and off: each trial call succeeds, then failures open "
            "it again. Look at that service's health; give the breaker a longer "
            "reset_timeout, or a failure_rate over a window rather than consecutive "
            "failures, so it stops swinging."
        ),
    )


# --- time-outs and budgets ------------------------------------------------------------------


def step_timeouts(failures: Iterable[Failure], thresholds: Thresholds) -> list[Pattern]:
    groups: dict[tuple[str, str], list[Failure]] = defaultdict(list)
    for failure in failures:
        if failure.outcome == AttemptOutcome.TIMEOUT:
            groups[(failure.team, plan_step_of(failure.step_id))].append(failure)
    found = []
    for (team, step), members in sorted(groups.items(), key=lambda i: (-len(i[1]), i[0])):
        if len(members) < thresholds.timeouts_min:
            continue
        agents = Counter(f.agent for f in members)
        executions = _distinct(f.execution_id for f in members)
        cut = [f.duration_ms for f in members if f.duration_ms is not None]
        longest = max(cut) if cut else None
        found.append(
            Pattern(
                kind="step_timeouts",
                subject=f"{team}/{step}",
                summary=(
                    f"step {step!r} of team {team!r} timed out {len(members)} times in "
                    f"{len(executions)} execution(s)"
                ),
                evidence={
                    "timeouts": len(members),
                    "agents": dict(agents.most_common()),
                    "executions": len(executions),
                    "example_executions": executions[: thresholds.examples],
                    "longest_ms": longest,
                    "example": members[0].error_message,
                },
                recommendation=(
                    f"The calls of {_names(agents)} hit the time limit"
                    + (f" (cut off after about {longest / 1000:g} s)" if longest else "")
                    + ": raise the agent's timeout if the work needs longer, or split the "
                    "step's work; a step deadline bounds all its attempts together."
                ),
            )
        )
    return found


def budgets_hit(failures: Iterable[Failure], thresholds: Thresholds) -> list[Pattern]:
    groups: dict[str, list[Failure]] = defaultdict(list)
    for failure in failures:
        if failure.error_type == BUDGET_EXCEEDED:
            groups[failure.team].append(failure)
    found = []
    for team, members in sorted(groups.items()):
        executions = _distinct(f.execution_id for f in members)
        if len(executions) < thresholds.budget_executions:
            continue
        agents = Counter(f.agent for f in members)
        found.append(
            Pattern(
                kind="budget_exceeded",
                subject=team,
                summary=(
                    f"team {team!r} ran out of budget in {len(executions)} execution(s) "
                    f"({len(members)} refused call(s))"
                ),
                evidence={
                    "executions": len(executions),
                    "refused": len(members),
                    "agents": dict(agents.most_common()),
                    "example_executions": executions[: thresholds.examples],
                    "example": members[0].error_message,
                },
                recommendation=(
                    f"Raise team {team!r}'s budget (budget.max_cost_usd / max_tokens, or "
                    "run-team --max-cost-usd), or make its calls cheaper: a lower "
                    f"max_tokens or a cheaper model for {_names(agents)}."
                ),
            )
        )
    return found


def _distinct(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _names(agents: Counter[str]) -> str:
    names = [f"{name!r}" for name, _ in agents.most_common(3)]
    more = len(agents) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")
