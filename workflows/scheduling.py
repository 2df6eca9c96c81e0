"""Scheduling decisions, pure: what a decided step makes ready, what a map step expands
to, which of its items go out when, what its items add up to, and what a stalled
execution still has to run.

Every step row carries ``waiting``, the number of steps it waits for that are not yet
decided. The write that decides a step counts down each step that waits for it; a step
whose count reaches zero is ready and is sent at once. A plan step waits for its
dependencies; a map step, once expanded, waits for its items as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from workflows.plan import ExecutionPlan, MapSpec
from workflows.status import STEP_FINAL, StepStatus

MAP_ORIGIN = "map"


def item_id(map_step: str, index: int) -> str:
    """A map item's step id. Brackets cannot occur in a declared step id, so an item's
    id never collides with a plan step's."""
    return f"{map_step}[{index}]"


@dataclass(frozen=True)
class AddedStep:
    """A step added to a running execution, with where it came from."""

    step_id: str
    agent: str
    parent_id: str
    item_index: int
    item: Any
    # Recorded with the row: who added it and why (a map's expansion, later handoffs
    # and asks).
    origin: dict[str, Any]
    # The steps this one counts down when it is decided.
    dependents: tuple[str, ...]


@dataclass(frozen=True)
class Expansion:
    """A map step's items, and how many of them go out at once."""

    items: tuple[AddedStep, ...]
    released: int

    @property
    def first(self) -> tuple[str, ...]:
        return tuple(item.step_id for item in self.items[: self.released])


def expand_map(
    map_step: str, agent: str, spec: MapSpec, values: Sequence[Any], attempt: int
) -> Expansion:
    count = len(values)
    released = count if spec.max_parallel is None else min(count, spec.max_parallel)
    items = tuple(
        AddedStep(
            step_id=item_id(map_step, index),
            agent=agent,
            parent_id=map_step,
            item_index=index,
            item=value,
            origin={
                "by": MAP_ORIGIN,
                "step": map_step,
                "attempt": attempt,
                "of": count,
                "max_parallel": spec.max_parallel,
            },
            dependents=(map_step,),
        )
        for index, value in enumerate(values)
    )
    return Expansion(items=items, released=released)


def released_after(origin: Mapping[str, Any], parent_waiting: int) -> str | None:
    """Under ``max_parallel``, the item that goes out when one more item of the map is
    decided (its parent's count just went down to ``parent_waiting``). Each count is
    seen by exactly one writer, so each item is released once."""
    if "of" not in origin:
        return None  # not a map's item: a handoff or a question releases nothing
    limit = origin.get("max_parallel")
    count = int(origin["of"])
    if limit is None or limit >= count:
        return None
    decided = count - parent_waiting
    index = limit + decided - 1
    return item_id(str(origin["step"]), index) if index < count else None


class ItemState(Protocol):
    item_index: int | None
    status: str
    output: Any
    error_type: str | None
    error_message: str | None
    reason: str | None


@dataclass(frozen=True)
class MapResult:
    status: StepStatus
    output: Any
    error: str | None


def join_items(items: Iterable[ItemState], allow_failures: bool) -> MapResult:
    """A map step's result from its decided items: the outputs in item order (None for an
    item that did not complete, when failures are allowed)."""
    ordered = sorted(items, key=lambda row: row.item_index or 0)
    outputs = [row.output if row.status == StepStatus.COMPLETED else None for row in ordered]
    failed = [row for row in ordered if row.status != StepStatus.COMPLETED]
    if failed and not allow_failures:
        first = failed[0]
        detail = (
            f"{first.error_type}: {first.error_message}"
            if first.error_type
            else first.reason or first.status
        )
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return MapResult(StepStatus.FAILED, None, f"item {first.item_index} failed: {detail}{more}")
    return MapResult(StepStatus.COMPLETED, outputs, None)


class RowState(Protocol):
    step_id: str
    status: str
    waiting: int
    parent_id: str | None
    item_index: int | None
    origin: Any
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class Resumption:
    """What a stalled execution still has to run: steps to send again (each carries its
    next attempt), and whether it only has to be finished."""

    send: tuple[str, ...]
    finish: bool


def resumption(
    plan: ExecutionPlan, rows: Sequence[RowState], now: datetime | None = None
) -> Resumption:
    """From an execution's rows: every undecided step whose count is zero (ready, whose
    message may have been lost), every released undecided map item, and every join
    whose deadline has passed by ``now`` (its timer may have been lost). With every
    sink decided, the execution is only to be finished."""
    by_id = {row.step_id: row for row in rows}
    if all(by_id[sid].status in STEP_FINAL for sid in plan.sinks if sid in by_id):
        return Resumption(send=(), finish=True)
    send = []
    for row in rows:
        if row.status in STEP_FINAL:
            continue
        if row.waiting > 0 and not _deadline_passed(plan, row, now):
            continue
        if row.parent_id is not None and not _released(row, by_id):
            continue
        send.append(row.step_id)
    return Resumption(send=tuple(send), finish=False)


def _deadline_passed(plan: ExecutionPlan, row: RowState, now: datetime | None) -> bool:
    """A join still pending past its deadline (armed when its first parent started)."""
    if now is None or row.next_attempt_at is None or row.status != StepStatus.PENDING:
        return False
    if not plan.has(row.step_id) or row.step_id not in plan.early_joins:
        return False
    due = row.next_attempt_at
    # SQLite hands back naive UTC.
    return (due if due.tzinfo is not None else due.replace(tzinfo=UTC)) <= now


def _released(item: RowState, by_id: Mapping[str, RowState]) -> bool:
    origin = item.origin or {}
    limit = origin.get("max_parallel")
    if limit is None:
        return True
    parent = by_id.get(str(origin.get("step")))
    if parent is None:
        return True
    decided = int(origin["of"]) - parent.waiting
    return bool((item.item_index or 0) < limit + decided)
