"""A team's workflow → ExecutionPlan: who depends on whom, who waits for whom, what each
step sees. Pure: it takes any object shaped like a team declaration (``TeamSpec``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Protocol

from workflows.aggregation import JoinDeclaration, JoinRule
from workflows.conditions import referenced_steps
from workflows.graph import ancestors, sinks, topological_levels


class Strategy(StrEnum):
    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    PIPELINE = "pipeline"
    CONDITIONAL = "conditional"
    DAG = "dag"


class StepDeclaration(Protocol):
    """What the plan needs of a declared step (``orchestration.spec.StepSpec``)."""

    @property
    def id(self) -> str: ...
    @property
    def agent_name(self) -> str: ...
    @property
    def task(self) -> str | None: ...
    @property
    def after(self) -> tuple[str, ...]: ...
    @property
    def when(self) -> str | None: ...
    @property
    def for_each(self) -> str | None: ...
    @property
    def max_parallel(self) -> int | None: ...
    @property
    def allow_failures(self) -> bool: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def heartbeat_timeout(self) -> float | None: ...
    @property
    def join(self) -> JoinDeclaration | None: ...


class TeamDeclaration(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def strategy(self) -> Strategy: ...
    @property
    def steps(self) -> Sequence[StepDeclaration]: ...


def dependencies(
    strategy: Strategy, steps: Sequence[StepDeclaration]
) -> dict[str, tuple[str, ...]]:
    """Each step's direct dependencies under ``strategy``. In a dag, a step also depends
    on every step its condition or its ``for_each`` reads."""
    ids = [s.id for s in steps]
    if strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE):
        return {sid: ((ids[i - 1],) if i else ()) for i, sid in enumerate(ids)}
    if strategy is Strategy.PARALLEL:
        return {sid: () for sid in ids}
    deps: dict[str, tuple[str, ...]] = {}
    for step in steps:
        implied: set[str] = set()
        for expression in (step.when, step.for_each):
            if expression:
                implied |= referenced_steps(expression)
        deps[step.id] = tuple(dict.fromkeys([*step.after, *sorted(implied)]))
    return deps


@dataclass(frozen=True)
class MapSpec:
    """A map step: one delegation per item of the list ``for_each`` gives."""

    for_each: str
    max_parallel: int | None
    allow_failures: bool


@dataclass(frozen=True)
class PlannedStep:
    id: str
    agent: str
    task: str | None
    when: str | None
    position: int
    # The longest chain of dependencies before this step (for display: steps of one
    # depth may run together, but nothing waits for a whole depth).
    level: int
    deps: tuple[str, ...]
    # The steps that wait for this one: deciding it counts each of them down.
    dependents: tuple[str, ...]
    # Pipeline: the step whose output becomes this step's input (None: the execution input).
    input_from: str | None
    # Bounds all attempts and waits of the step together, from its first start.
    deadline: float | None
    # Overrides the agent's: the longest silence between the agent's heartbeats.
    heartbeat_timeout: float | None
    map: MapSpec | None
    # A join of its dependencies (its parents): how it aggregates them, and when it runs.
    join: JoinRule | None
    # Nothing depends on it: the execution ends when every sink is decided.
    sink: bool
    _graph: _Graph = field(repr=False, compare=False)

    @property
    def visible(self) -> tuple[str, ...]:
        """Steps whose outputs this step may read: everything that certainly ran before it.

        Computed when asked, and kept only for a DAG: in a sequential team it is every
        earlier step, so keeping it for each step run would hold a quadratic number of
        entries (a 3,000-step team's delegations spent half their time sorting them).
        """
        return self._graph.ancestors_in_order(self.id, self.position)


@dataclass(frozen=True)
class _Graph:
    deps: Mapping[str, tuple[str, ...]]
    position: Mapping[str, int]
    chain: bool  # sequential and pipeline: every earlier step is an ancestor
    _found: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @cached_property
    def order(self) -> tuple[str, ...]:
        return tuple(sorted(self.position, key=self.position.__getitem__))

    def ancestors_in_order(self, step_id: str, position: int) -> tuple[str, ...]:
        if self.chain:
            return self.order[:position]
        found = self._found.get(step_id)
        if found is None:
            seen = ancestors(step_id, self.deps)
            found = self._found[step_id] = tuple(sorted(seen, key=self.position.__getitem__))
        return found


@dataclass(frozen=True)
class ExecutionPlan:
    team: str
    strategy: Strategy
    steps: tuple[PlannedStep, ...]
    # Depths, for display (``validate``); scheduling follows each step's own deps.
    levels: tuple[tuple[str, ...], ...]
    outputs_from: tuple[str, ...]

    def step(self, step_id: str) -> PlannedStep:
        return self._index()[step_id]

    def has(self, step_id: str) -> bool:
        return step_id in self._index()

    @cached_property
    def roots(self) -> tuple[str, ...]:
        """Steps that depend on nothing: published when the execution is enqueued."""
        return tuple(s.id for s in self.steps if not s.deps)

    @cached_property
    def sinks(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps if s.sink)

    @cached_property
    def early_joins(self) -> frozenset[str]:
        """Joins that may run before all their parents are decided (quorum, deadline):
        deciding one of their parents may have to send them."""
        return frozenset(s.id for s in self.steps if s.join is not None and s.join.early)

    @cached_property
    def deadline_joins(self) -> Mapping[str, tuple[str, ...]]:
        """Each parent of a join with a deadline → those joins: the first of a join's
        parents to start its agent starts the join's clock."""
        found: dict[str, list[str]] = {}
        for step in self.steps:
            if step.join is not None and step.join.deadline is not None:
                for parent in step.deps:
                    found.setdefault(parent, []).append(step.id)
        return {parent: tuple(joins) for parent, joins in found.items()}

    def reads(self, step: PlannedStep) -> tuple[str, ...]:
        """The steps whose rows a delegation of ``step`` reads before it calls the agent.

        Its direct dependencies (whether one failed; a pipeline's input), unless it has a
        condition or a ``for_each`` (which may name any step it sees) or it is the one
        step that ends the execution (``finishes_with``): then every step it may see.
        Reading every earlier step made a long sequential team read a quadratic number
        of rows; the agent's view of upstream outputs is read when it first looks.
        """
        if step.when or step.map is not None or self.finishes_with(step):
            return step.visible
        return step.deps

    def finishes_with(self, step: PlannedStep) -> bool:
        """Whether every other step is an ancestor of ``step``: then, once it is
        decided, so is everything, and its delegation can record the execution's end in
        the same write."""
        return step.sink and len(self.sinks) == 1 and len(step.visible) == len(self.steps) - 1

    def _index(self) -> dict[str, PlannedStep]:
        cached: dict[str, PlannedStep] | None = self.__dict__.get("_by_id")
        if cached is None:
            cached = {s.id: s for s in self.steps}
            object.__setattr__(self, "_by_id", cached)
        return cached


def build_plan(team: TeamDeclaration) -> ExecutionPlan:
    strategy = team.strategy
    declared = team.steps
    order = [s.id for s in declared]
    deps = dependencies(strategy, declared)
    levels = topological_levels(order, deps)
    level_of = {sid: i for i, level in enumerate(levels) for sid in level}
    position = {sid: i for i, sid in enumerate(order)}
    dependents: dict[str, list[str]] = {sid: [] for sid in order}
    for sid in order:
        for dep in deps[sid]:
            dependents[dep].append(sid)
    chain = strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE)
    graph = _Graph(deps=deps, position=position, chain=chain)
    end_steps = set(sinks(order, deps))
    planned = []
    for i, step in enumerate(declared):
        planned.append(
            PlannedStep(
                id=step.id,
                agent=step.agent_name,
                task=step.task,
                when=step.when,
                position=i,
                level=level_of[step.id],
                deps=deps[step.id],
                dependents=tuple(dependents[step.id]),
                input_from=order[i - 1] if strategy is Strategy.PIPELINE and i else None,
                deadline=step.deadline,
                heartbeat_timeout=step.heartbeat_timeout,
                map=(
                    MapSpec(step.for_each, step.max_parallel, step.allow_failures)
                    if step.for_each
                    else None
                ),
                join=JoinRule.of(step.join) if step.join is not None else None,
                sink=step.id in end_steps,
                _graph=graph,
            )
        )
    return ExecutionPlan(
        team=team.name,
        strategy=strategy,
        steps=tuple(planned),
        levels=levels,
        outputs_from=_output_steps(strategy, order, deps),
    )


def _output_steps(
    strategy: Strategy, order: list[str], deps: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    if strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE):
        return (order[-1],)
    if strategy is Strategy.PARALLEL:
        return tuple(order)
    return sinks(order, deps)
