"""Retrying an execution from a step, pure: which steps keep their recorded result, which
run again, and what the new execution's counts start at.

A retry is a new execution of the same spec and input. Every plan step that does not
depend on the steps retried (directly or through others) keeps the result it had, so
its agent is not called again; the steps retried and everything downstream of them run
again, each waiting only for those of its dependencies that run again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from workflows.plan import ExecutionPlan
from workflows.status import SkipCause, StepStatus


class NothingToRetry(ValueError):
    """The retry asked for would run nothing, or names a step the plan lacks."""


@dataclass(frozen=True)
class RecordedStep:
    """What a retry needs of a plan step's row in the execution retried."""

    status: str
    skip_cause: str | None = None


def reusable(step: RecordedStep) -> bool:
    """A result worth keeping: a step that completed, or that its own condition skipped
    (given the same upstream results, the condition says the same again). A failed,
    cancelled or unfinished step has nothing to keep."""
    return step.status == StepStatus.COMPLETED or (
        step.status == StepStatus.SKIPPED and step.skip_cause == SkipCause.CONDITION
    )


@dataclass(frozen=True)
class RetryPlan:
    # Plan steps whose recorded result the new execution starts with.
    reused: tuple[str, ...]
    # Plan steps that run again, in plan order.
    rerun: tuple[str, ...]
    # For each step that runs again: how many of its dependencies run again too.
    waiting: Mapping[str, int]
    # Sinks that run again: the execution ends when they are decided.
    sinks_left: int
    # The steps that run again and wait for nothing: sent when the retry is enqueued.
    ready: tuple[str, ...]


def downstream(plan: ExecutionPlan, starts: Iterable[str]) -> set[str]:
    """``starts`` and every step that depends on one of them, directly or not."""
    found: set[str] = set()
    frontier = list(starts)
    while frontier:
        current = frontier.pop()
        if current in found:
            continue
        found.add(current)
        frontier.extend(plan.step(current).dependents)
    return found


def plan_retry(
    plan: ExecutionPlan, recorded: Mapping[str, RecordedStep], from_step: str | None = None
) -> RetryPlan:
    """What a retry of an execution whose plan steps ended as ``recorded`` runs.

    ``from_step``: run it and its dependents again. Given or not, every step without a
    result to keep (failed, cancelled, skipped because something upstream failed, never
    run) runs again, with its dependents: by default that is all a retry does.
    """
    if from_step is not None and not plan.has(from_step):
        known = ", ".join(step.id for step in plan.steps)
        raise NothingToRetry(f"the team has no step {from_step!r} (its steps: {known})")
    unfinished = [
        step.id for step in plan.steps if step.id not in recorded or not reusable(recorded[step.id])
    ]
    starts = [*([from_step] if from_step is not None else []), *unfinished]
    if not starts:
        raise NothingToRetry("every step completed: name the step to run again with --from-step")
    again = downstream(plan, starts)
    rerun = tuple(step.id for step in plan.steps if step.id in again)
    reused = tuple(step.id for step in plan.steps if step.id not in again)
    waiting = {sid: sum(1 for dep in plan.step(sid).deps if dep in again) for sid in rerun}
    return RetryPlan(
        reused=reused,
        rerun=rerun,
        waiting=waiting,
        sinks_left=sum(1 for sid in rerun if plan.step(sid).sink),
        ready=tuple(sid for sid in rerun if waiting[sid] == 0),
    )
