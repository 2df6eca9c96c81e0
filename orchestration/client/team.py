"""A team: a validated spec you can enqueue with an input."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from orchestration.agents.identity import endpoint_identities
from orchestration.client.handle import ExecutionHandle
from orchestration.client.report import ExecutionReport
from orchestration.client.runtime import Runtime, default_settings, get_runtime
from orchestration.priorities import Priority
from orchestration.resilience.breaker import CLOSED
from orchestration.settings import Settings
from orchestration.spec import Budget, TeamSpec
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.breakers import BreakerStore
from orchestration.store.repository import spec_digest
from orchestration.team_file import load_team, parse_team
from workflows.plan import ExecutionPlan, build_plan


class Team:
    def __init__(self, spec: TeamSpec) -> None:
        self.spec = spec
        self.plan: ExecutionPlan = build_plan(spec)
        self._spec_cache: tuple[dict[str, Any], str] | None = None

    @classmethod
    def load(cls, path: str | Path, *, settings: Settings | None = None) -> Team:
        """Read and validate a team file. ``settings``: those it will run with (by
        default the process's: runtime.default_settings), whose broker's redelivery
        bound every agent's time limit must fit."""
        visibility_timeout, consumer_timeout = _redelivery_bounds(settings)
        return cls(
            load_team(
                path, visibility_timeout=visibility_timeout, consumer_timeout=consumer_timeout
            )
        )

    @classmethod
    def from_yaml(
        cls, text: str, source: str = "<team>", *, settings: Settings | None = None
    ) -> Team:
        """The same, from YAML text."""
        visibility_timeout, consumer_timeout = _redelivery_bounds(settings)
        return cls(
            parse_team(
                text,
                source=source,
                visibility_timeout=visibility_timeout,
                consumer_timeout=consumer_timeout,
            )
        )

    @property
    def name(self) -> str:
        return self.spec.name

    def enqueue(
        self,
        input: Any = None,
        *,
        check_worker: bool = True,
        budget: Budget | None = None,
        priority: Priority | str | None = None,
        runtime: Runtime | None = None,
    ) -> ExecutionHandle:
        """Record the execution, then publish its first steps. Returns at once.

        ``budget`` replaces the team's limits it gives (each of cost and tokens);
        ``priority`` (critical, high, normal, low) replaces the team's for this run;
        ``runtime``: where to run it, by default the process's (``get_runtime``)."""
        runtime = runtime or get_runtime()
        level = self.spec.priority if priority is None else Priority(priority)
        if check_worker:
            runtime.ensure_worker(self.queues)
        execution_id = str(uuid.uuid4())
        spec, digest = self._spec_json()
        AgentRegistry(runtime.store).register_agents(self.name, spec["agents"])
        # Workers read an execution's budget and priority (which every message of the
        # execution carries) from its stored spec.
        changes: dict[str, Any] = {}
        effective = (self.spec.budget or Budget()).merged(budget)
        if effective != self.spec.budget and effective != Budget():
            changes["budget"] = effective.model_dump(mode="json")
        if level is not self.spec.priority:
            changes["priority"] = level.value
        if changes:
            spec = {**spec, **changes}
            digest = spec_digest(spec)
        runtime.executions.create_execution(
            execution_id, spec, self.plan, input, digest, budget=effective
        )
        from workers.publish import Routing, first_messages, publish

        routing = Routing.for_settings(runtime.settings)
        publish(
            runtime.app,
            first_messages(self.plan, execution_id, routing, self.spec.agents, level),
        )
        return runtime.handle(execution_id)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues its agents name (those of agents naming none: the runtime's)."""
        return tuple(
            sorted({agent.queue for agent in self.spec.agents.values() if agent.queue is not None})
        )

    def _spec_json(self) -> tuple[dict[str, Any], str]:
        # The spec never changes: serialise and digest it once per Team.
        cached = self._spec_cache
        if cached is None:
            spec = self.spec.model_dump(mode="json")
            cached = (spec, spec_digest(spec))
            self._spec_cache = cached
        return cached

    def open_breakers(self, runtime: Runtime | None = None) -> dict[str, str]:
        """Agents of this team whose breaker (that of what they call) is not closed,
        with why."""
        breakers = BreakerStore((runtime or get_runtime()).store)
        found = {}
        for name, agent in self.spec.agents.items():
            identities = endpoint_identities(agent)
            for identity in identities:
                view = breakers.get(identity)
                if view is not None and view.snapshot.state != CLOSED:
                    detail = view.snapshot.last_error or "no detail"
                    where = f"{identity}: " if len(identities) > 1 else ""
                    found[name] = f"{where}{view.snapshot.state} ({detail})"
        return found

    def run(
        self,
        input: Any = None,
        timeout: float | None = None,
        *,
        budget: Budget | None = None,
        priority: Priority | str | None = None,
        runtime: Runtime | None = None,
    ) -> ExecutionReport:
        """Enqueue and wait for the result."""
        return self.enqueue(input, budget=budget, priority=priority, runtime=runtime).wait(timeout)


def execution(execution_id: str, *, runtime: Runtime | None = None) -> ExecutionHandle:
    """A handle on an execution started earlier, from any process."""
    runtime = runtime or get_runtime()
    runtime.executions.execution_status(execution_id)  # raises ExecutionNotFound
    return runtime.handle(execution_id)


def _redelivery_bounds(settings: Settings | None) -> tuple[float | None, float | None]:
    """(visibility timeout, consumer timeout): the one that bounds how long this broker
    lets a worker hold a message before it delivers it again, the other None."""
    settings = settings or default_settings()
    if settings.embedded:
        return None, None  # the in-memory transport never redelivers
    if settings.broker_is_rabbitmq:
        # No visibility timeout: RabbitMQ redelivers when the worker's connection drops,
        # or when it closes a channel that held a message past its consumer_timeout.
        return None, settings.consumer_timeout
    return settings.visibility_timeout, None
