"""Joins, pure: when a join may run (its quorum, its deadline, its parents' failures),
and what its parents' results add up to under its strategy, with the conflicts between
them.

A join's *parents* are the steps it depends on. Each parent, when the join looks, has
completed (it gave a result), did not complete (failed, skipped because something
upstream failed, or cancelled), chose not to run (skipped by its own condition), was
dropped (cancelled by a join that stopped waiting for it), or is still undecided.

Nothing here reads a clock or a database: the engine passes whether the join's deadline
has passed, and the parents' recorded rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Protocol

from workflows.status import STEP_FINAL, SkipCause, StepStatus

COLLECT: Final = "collect"
MAJORITY: Final = "majority"
PRIORITY: Final = "priority"
FIRST_SUCCESS: Final = "first_success"
REDUCER: Final = "reducer"

# What a conflict or an unresolved join recommends (after the seed documents' own).
RECOMMENDATION: Final = "review the results manually, or add a validation agent"
# Conflicts are pairs, so n parents can contradict each other in n²/4 ways: the output
# lists this many and counts the rest.
MAX_CONFLICTS: Final = 100
# A value quoted in a conflict's issue is cut to this many characters.
_QUOTE_CHARS: Final = 80


class JoinDeclaration(Protocol):
    """What a team file declares of a join (``orchestration.spec.JoinSpec``)."""

    @property
    def aggregate(self) -> str: ...
    @property
    def field(self) -> str | None: ...
    @property
    def priority(self) -> tuple[str, ...]: ...
    @property
    def reducer(self) -> str | None: ...
    @property
    def tolerate_failures(self) -> bool: ...
    @property
    def quorum(self) -> int | None: ...
    @property
    def deadline(self) -> float | None: ...


@dataclass(frozen=True)
class JoinRule:
    """How a join treats its parents: the strategy that aggregates them, and when it runs."""

    aggregate: str = COLLECT
    field: str | None = None
    priority: tuple[str, ...] = ()
    reducer: str | None = None
    tolerate_failures: bool = False
    quorum: int | None = None
    deadline: float | None = None

    @classmethod
    def of(cls, declared: JoinDeclaration) -> JoinRule:
        return cls(
            aggregate=str(declared.aggregate),
            field=declared.field,
            priority=tuple(declared.priority),
            reducer=declared.reducer,
            tolerate_failures=declared.tolerate_failures,
            quorum=declared.quorum,
            deadline=declared.deadline,
        )

    @property
    def early(self) -> bool:
        """Whether the join may run before every parent is decided."""
        return self.quorum is not None or self.deadline is not None

    @property
    def absorbs_failures(self) -> bool:
        """Whether a parent's failure is part of this join's result rather than a reason
        to skip it: with ``tolerate_failures``, and with a quorum (which fails only once
        it can no longer be met)."""
        return self.tolerate_failures or self.quorum is not None

    def wakes(self, parents: int, waiting: int) -> bool:
        """Whether an early join should look at its parents again after one more was
        decided (``waiting`` of its ``parents`` are still undecided). At zero every join
        is sent anyway. Before that, a quorum of k can be met once k are decided, and
        (failures not counting) missed once n - k + 1 are; a join without a quorum
        that does not tolerate failures is skipped at its first failed parent."""
        if waiting <= 0 or not self.early:
            return False
        needed = self.quorum or parents
        if not self.tolerate_failures:
            needed = min(needed, parents - needed + 1)
        return parents - waiting >= needed


@dataclass(frozen=True)
class Parent:
    """A parent's recorded state, as the join reads it."""

    step_id: str
    agent: str
    status: str
    output: Any = None
    # "Type: message" of a failure.
    error: str | None = None
    skip_cause: str | None = None
    reason: str | None = None
    # It began running (an attempt was under way) before it was decided.
    started: bool = False
    # When it was decided, in seconds since the epoch (first_success orders by it).
    finished_at: float | None = None

    @property
    def completed(self) -> bool:
        return self.status == StepStatus.COMPLETED

    @property
    def undecided(self) -> bool:
        return self.status not in STEP_FINAL

    @property
    def dropped(self) -> bool:
        """Cancelled by a join that stopped waiting for it."""
        return self.status == StepStatus.CANCELLED and self.skip_cause == SkipCause.JOIN

    @property
    def blocked(self) -> bool:
        """Did not complete: failed, skipped because something upstream failed, or
        cancelled (not by a join)."""
        if self.status == StepStatus.SKIPPED:
            return self.skip_cause != SkipCause.CONDITION
        if self.status == StepStatus.CANCELLED:
            return not self.dropped
        return self.status == StepStatus.FAILED

    @property
    def detail(self) -> str:
        """Why it gave no result, in words."""
        if self.status == StepStatus.FAILED:
            return f"failed ({self.error})" if self.error else "failed"
        if self.undecided:
            return f"still {self.status}"
        return f"{self.status} ({self.reason})" if self.reason else str(self.status)


# --- when a join runs ---------------------------------------------------------------------

ALL: Final = "all"
QUORUM: Final = "quorum"
DEADLINE: Final = "deadline"


@dataclass(frozen=True)
class JoinWait:
    """Not yet: a later parent's decision, or the deadline, sends the join again."""


@dataclass(frozen=True)
class JoinRun:
    """Aggregate now. ``trigger``: every parent was decided (all), the quorum was met, or
    the deadline passed."""

    trigger: str


@dataclass(frozen=True)
class JoinFail:
    """The quorum can no longer be met: the join fails."""

    error_type: str
    reason: str


@dataclass(frozen=True)
class JoinSkip:
    """A parent did not complete and the join does not tolerate it: skipped, as any
    step whose dependency failed."""

    reason: str


Readiness = JoinWait | JoinRun | JoinFail | JoinSkip


def readiness(rule: JoinRule, parents: Sequence[Parent], *, deadline_passed: bool) -> Readiness:
    """Whether the join runs, fails, is skipped or waits, from its parents' states.

    The engine asks twice when it decides early: before it cancels the undecided
    parents and again after (when they are dropped); both answers agree, because a
    dropped parent counts where an undecided one did.
    """
    undecided = [p for p in parents if p.undecided]
    dropped = [p for p in parents if p.dropped]
    if rule.quorum is None:
        blocked = [p for p in parents if p.blocked]
        if blocked and not rule.tolerate_failures:
            return JoinSkip(f"upstream step {blocked[0].step_id!r} did not complete")
        if deadline_passed and (undecided or dropped):
            return JoinRun(DEADLINE)
        return JoinWait() if undecided else JoinRun(ALL)
    quorum = rule.quorum
    counted = [p for p in parents if _counts(rule, p)]
    if len(counted) >= quorum:
        return JoinRun(QUORUM if undecided or dropped else ALL)
    if len(counted) + len(undecided) + len(dropped) < quorum:
        return JoinFail("QuorumUnreachable", _unreachable(rule, parents))
    if deadline_passed:
        return JoinRun(DEADLINE)
    if not undecided:
        # Only parents another join cancelled are left open: none of them will count.
        return JoinFail("QuorumUnreachable", _unreachable(rule, parents))
    return JoinWait()


def _counts(rule: JoinRule, parent: Parent) -> bool:
    """Whether a parent counts towards the quorum: its result, and with
    ``tolerate_failures`` its failure too."""
    return parent.completed or (rule.tolerate_failures and parent.blocked)


def _unreachable(rule: JoinRule, parents: Sequence[Parent]) -> str:
    head = f"quorum of {rule.quorum} of {len(parents)} parents can no longer be met"
    # Undecided and dropped parents are left out: the message is the same before and
    # after the join cancels them.
    missing = [p for p in parents if not (p.undecided or p.dropped or _counts(rule, p))]
    if not missing:
        counted = sum(1 for p in parents if _counts(rule, p))
        return f"{head}: {counted} counted, and the others were cancelled"
    shown = "; ".join(f"{p.step_id!r} {p.detail}" for p in missing[:5])
    more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{head}: {len(missing)} gave no result ({shown}{more})"


def cancel_reason(join_id: str, rule: JoinRule, verdict: Readiness, parent: Parent) -> str:
    """Why the join cancelled a parent it no longer waits for (recorded on the parent)."""
    if isinstance(verdict, JoinRun):
        why = (
            f"met its quorum of {rule.quorum}"
            if verdict.trigger == QUORUM
            else f"reached its deadline of {rule.deadline:g}s"
        )
    elif isinstance(verdict, JoinFail):
        why = f"can no longer meet its quorum of {rule.quorum}"
    elif isinstance(verdict, JoinSkip):
        why = f"was skipped ({verdict.reason})"
    else:  # pragma: no cover - a waiting join cancels nothing
        why = "stopped waiting"
    was = "running" if parent.started else "pending"
    return f"cancelled while {was}: join {join_id!r} {why}"


# --- what the parents add up to -----------------------------------------------------------


@dataclass(frozen=True)
class Aggregation:
    """The join's decision: completed with ``output``, or failed with an error."""

    status: StepStatus
    output: Any
    error_type: str | None = None
    error: str | None = None


def aggregate(rule: JoinRule, parents: Sequence[Parent], trigger: str) -> Aggregation:
    """The join's output under its strategy (not ``reducer``: see ``reduced``).

    ``{"result", "consensus", "conflicts", "resolution", "parents", "trigger"}``; a join
    none of whose parents completed fails instead (NoParentSucceeded).
    """
    failure = no_success(parents)
    if failure is not None:
        return failure
    completed = [p for p in parents if p.completed]
    result: Any
    if rule.aggregate == MAJORITY:
        winners = _majority(rule, completed)
        chosen = winners
        result = winners[0].output if winners else None
    elif rule.aggregate == PRIORITY:
        chosen = [_by_priority(rule, completed)]
        result = chosen[0].output
    elif rule.aggregate == FIRST_SUCCESS:
        chosen = [_first_to_finish(completed)]
        result = chosen[0].output
    else:
        chosen = completed
        result = {p.step_id: p.output if p.completed else None for p in parents}
    found, omitted = _conflicts(rule, parents)
    resolved = bool(chosen) and (rule.aggregate != COLLECT or not found)
    agreeing = _agreeing(rule, completed, chosen, collect=rule.aggregate == COLLECT)
    output = _record(
        rule,
        parents,
        trigger,
        result=result,
        consensus=_consensus(parents, agreeing),
        conflicts=(found, omitted),
        resolution={
            "resolved": resolved,
            "strategy": rule.aggregate,
            "recommendation": None if resolved and not found else RECOMMENDATION,
            "chosen": [p.step_id for p in chosen],
        },
    )
    return Aggregation(StepStatus.COMPLETED, output)


def reducer_input(rule: JoinRule, parents: Sequence[Parent], trigger: str) -> dict[str, Any]:
    """What a reducer join's agent is given as its input: every parent's state (with the
    outputs of those that completed), the consensus and conflicts found among them, and
    what made the join run."""
    completed = [p for p in parents if p.completed]
    found, omitted = _conflicts(rule, parents)
    record: dict[str, Any] = {
        "parents": [_parent_record(p, with_output=True) for p in parents],
        "consensus": _consensus(parents, _agreeing(rule, completed, completed, collect=True)),
        "conflicts": found,
        "trigger": trigger,
    }
    if omitted:
        record["conflicts_omitted"] = omitted
    return record


def reduced(rule: JoinRule, parents: Sequence[Parent], trigger: str, output: Any) -> Any:
    """A reducer join's output: the reducer's answer as ``result``, with the consensus and
    conflicts it was shown."""
    completed = [p for p in parents if p.completed]
    found, omitted = _conflicts(rule, parents)
    return _record(
        rule,
        parents,
        trigger,
        result=output,
        consensus=_consensus(parents, _agreeing(rule, completed, completed, collect=True)),
        conflicts=(found, omitted),
        resolution={
            "resolved": True,
            "strategy": REDUCER,
            "recommendation": RECOMMENDATION if found else None,
            "reducer": rule.reducer,
        },
    )


def no_success(parents: Sequence[Parent]) -> Aggregation | None:
    """The failure of a join none of whose parents completed (else None): there is
    nothing to aggregate, whatever the strategy."""
    if any(p.completed for p in parents):
        return None
    shown = "; ".join(f"{p.step_id!r} {p.detail}" for p in parents[:5])
    more = f"; and {len(parents) - 5} more" if len(parents) > 5 else ""
    return Aggregation(
        StepStatus.FAILED,
        None,
        "NoParentSucceeded",
        f"none of its {len(parents)} parents completed ({shown}{more})",
    )


def _record(
    rule: JoinRule,
    parents: Sequence[Parent],
    trigger: str,
    *,
    result: Any,
    consensus: dict[str, Any],
    conflicts: tuple[list[dict[str, str]], int],
    resolution: dict[str, Any],
) -> dict[str, Any]:
    found, omitted = conflicts
    record: dict[str, Any] = {
        "result": result,
        "consensus": consensus,
        "conflicts": found,
        "resolution": resolution,
        "parents": [_parent_record(p, with_output=False) for p in parents],
        "trigger": trigger,
    }
    if omitted:
        record["conflicts_omitted"] = omitted
    return record


def _parent_record(parent: Parent, *, with_output: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"step": parent.step_id, "agent": parent.agent}
    if parent.dropped:
        # Still undecided when the join ran: what it was doing, and that it was cancelled.
        entry["status"] = StepStatus.CANCELLED.value
        entry["was"] = "running" if parent.started else "pending"
    else:
        entry["status"] = str(parent.status)
    if parent.completed and with_output:
        entry["output"] = parent.output
    if parent.error:
        entry["error"] = parent.error
    elif parent.reason:
        entry["reason"] = parent.reason
    return entry


def _value(rule: JoinRule, output: Any) -> Any:
    """What parents are compared on: the declared field (a missing field is null), else
    the whole output."""
    if rule.field is None:
        return output
    return output.get(rule.field) if isinstance(output, Mapping) else None


def _key(value: Any) -> str:
    # JSON values compared as canonical JSON: mappings and lists are not hashable.
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _groups(rule: JoinRule, completed: Sequence[Parent]) -> list[list[Parent]]:
    """Completed parents grouped by equal value, largest group first (ties: the group
    whose first parent comes first)."""
    groups: dict[str, list[Parent]] = {}
    for parent in completed:
        groups.setdefault(_key(_value(rule, parent.output)), []).append(parent)
    return sorted(groups.values(), key=len, reverse=True)


def _majority(rule: JoinRule, completed: Sequence[Parent]) -> list[Parent]:
    """The parents that gave the most common value; none on a tie (unresolved)."""
    groups = _groups(rule, completed)
    if len(groups) > 1 and len(groups[0]) == len(groups[1]):
        return []
    return groups[0]


def _by_priority(rule: JoinRule, completed: Sequence[Parent]) -> Parent:
    """The completed parent whose agent comes first in the priority list; agents not in
    the list rank after every listed one, in the join's dependency order."""
    rank = {agent: i for i, agent in enumerate(rule.priority)}
    return min(completed, key=lambda p: rank.get(p.agent, len(rank)))


def _first_to_finish(completed: Sequence[Parent]) -> Parent:
    order = {p.step_id: i for i, p in enumerate(completed)}
    return min(
        completed,
        key=lambda p: (p.finished_at is None, p.finished_at or 0.0, order[p.step_id]),
    )


def _agreeing(
    rule: JoinRule, completed: Sequence[Parent], chosen: Sequence[Parent], *, collect: bool
) -> int:
    """How many parents agree with the result: for collect (and a reducer's view), the
    largest group of equal values when a field is declared, else every completed parent;
    otherwise those whose value equals the chosen one's."""
    if not chosen:
        return 0
    if collect:
        return len(_groups(rule, completed)[0]) if rule.field is not None else len(completed)
    key = _key(_value(rule, chosen[0].output))
    return sum(1 for p in completed if _key(_value(rule, p.output)) == key)


def _consensus(parents: Sequence[Parent], agreeing: int) -> dict[str, Any]:
    """The parents' outcomes (success, failure, partial; none when no parent gave an
    outcome) and the share of them that agrees with the result."""
    considered = [p for p in parents if p.completed or p.blocked]
    succeeded = sum(1 for p in considered if p.completed)
    if not considered:
        kind = "none"
    elif succeeded == len(considered):
        kind = "success"
    elif succeeded == 0:
        kind = "failure"
    else:
        kind = "partial"
    confidence = round(agreeing / len(considered), 4) if considered else 0.0
    return {"type": kind, "confidence": confidence, "agreeing": agreeing, "of": len(considered)}


def _conflicts(rule: JoinRule, parents: Sequence[Parent]) -> tuple[list[dict[str, str]], int]:
    """Pairs of parents whose outcomes contradict: one completed and one did not, or
    (with a declared field, or for a majority vote) two completed with different values.
    The first MAX_CONFLICTS, and how many more there are."""
    completed = [p for p in parents if p.completed]
    blocked = [p for p in parents if p.blocked]
    total = len(completed) * len(blocked)
    compares = rule.field is not None or rule.aggregate == MAJORITY
    if compares:
        pairs = len(completed) * (len(completed) - 1) // 2
        same = sum(len(g) * (len(g) - 1) // 2 for g in _groups(rule, completed))
        total += pairs - same
    found = list(islice(_conflict_pairs(rule, completed, blocked, compares), MAX_CONFLICTS))
    return found, total - len(found)


def _conflict_pairs(
    rule: JoinRule, completed: Sequence[Parent], blocked: Sequence[Parent], compares: bool
) -> Iterator[dict[str, str]]:
    for good in completed:
        for bad in blocked:
            yield _conflict(
                good,
                bad,
                f"contradictory results (success vs failure): {bad.step_id!r} {bad.detail}",
            )
    if not compares:
        return
    for i, first in enumerate(completed):
        first_value = _value(rule, first.output)
        for second in completed[i + 1 :]:
            second_value = _value(rule, second.output)
            if _key(first_value) == _key(second_value):
                continue
            what = f"values of {rule.field!r}" if rule.field is not None else "outputs"
            yield _conflict(
                first,
                second,
                f"different {what}: {_quote(first_value)} vs {_quote(second_value)}",
            )


def _conflict(first: Parent, second: Parent, issue: str) -> dict[str, str]:
    return {
        "agent1": first.agent,
        "agent2": second.agent,
        "step1": first.step_id,
        "step2": second.step_id,
        "issue": issue,
    }


def _quote(value: Any) -> str:
    text = _key(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 1] + "…"
