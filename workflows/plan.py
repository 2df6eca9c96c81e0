"""TeamSpec → ExecutionPlan: who depends on whom, what each step sees, in which level."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from orchestration.spec import Strategy, TeamSpec
from workflows.graph import ancestors, sinks, topological_levels


@dataclass(frozen=True)
class PlannedStep:
    id: str
    agent: str
    task: str | None
    when: str | None
    position: int
    level: int
    deps: tuple[str, ...]
    # Pipeline: the step whose output becomes this step's input (None: the execution input).
    input_from: str | None
    # Bounds all attempts and waits of the step together, from its first start.
    deadline: float | None
    # Overrides the agent's: the longest silence between the agent's heartbeats.
    heartbeat_timeout: float | None
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
    levels: tuple[tuple[str, ...], ...]
    outputs_from: tuple[str, ...]

    def step(self, step_id: str) -> PlannedStep:
        return self._index()[step_id]

    def counted_level(self, step: PlannedStep) -> int | None:
        """The step's level if it shares it with other steps: then the level's last
        decided step moves the execution on (the level is counted down). None for a
        level of one step, which its chain moves on."""
        return step.level if len(self.levels[step.level]) > 1 else None

    @property
    def last_level(self) -> int:
        return len(self.levels) - 1

    def reads(self, step: PlannedStep) -> tuple[str, ...]:
        """The steps whose rows a delegation of ``step`` reads before it calls the agent.

        Only its direct dependencies (whether one failed; a pipeline's input), unless it
        has a condition (which may name any step it sees) or is on the last level (the
        execution's outcome is decided with its result): then every step it may see.
        Reading every earlier step made a long sequential team read a quadratic number
        of rows; the agent's view of upstream outputs is read when it first looks.
        """
        if step.when or step.level == self.last_level:
            return step.visible
        return step.deps

    def _index(self) -> dict[str, PlannedStep]:
        cached: dict[str, PlannedStep] | None = self.__dict__.get("_by_id")
        if cached is None:
            cached = {s.id: s for s in self.steps}
            object.__setattr__(self, "_by_id", cached)
        return cached


def build_plan(spec: TeamSpec) -> ExecutionPlan:
    workflow = spec.workflow
    order = [s.id for s in workflow.steps]
    deps = workflow.dependencies()
    levels = topological_levels(order, deps)
    level_of = {sid: i for i, level in enumerate(levels) for sid in level}
    position = {sid: i for i, sid in enumerate(order)}
    chain = workflow.strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE)
    graph = _Graph(deps=deps, position=position, chain=chain)
    planned = []
    for i, step in enumerate(workflow.steps):
        planned.append(
            PlannedStep(
                id=step.id,
                agent=step.agent,
                task=step.task,
                when=step.when,
                position=i,
                level=level_of[step.id],
                deps=deps[step.id],
                input_from=order[i - 1] if workflow.strategy is Strategy.PIPELINE and i else None,
                deadline=step.deadline,
                heartbeat_timeout=step.heartbeat_timeout,
                _graph=graph,
            )
        )
    return ExecutionPlan(
        team=spec.name,
        strategy=workflow.strategy,
        steps=tuple(planned),
        levels=levels,
        outputs_from=_output_steps(workflow.strategy, order, deps),
    )


def _output_steps(
    strategy: Strategy, order: list[str], deps: dict[str, tuple[str, ...]]
) -> tuple[str, ...]:
    if strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE):
        return (order[-1],)
    if strategy is Strategy.PARALLEL:
        return tuple(order)
    return sinks(order, deps)
