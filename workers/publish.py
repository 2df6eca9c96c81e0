"""Messages to publish, and how they are sent.

Every message is two ids and an attempt number: a step is sent the moment it is ready
(``workflows.scheduling``), nothing travels with it, no delegation stores a result, and
state flows through the database. Celery's own canvas would carry every remaining step
inside each message of a chain, and keep a chord's counter and every member's result in
Redis with a join task, at a cost measured in ``bench/``.

Messages go out through ``app.send_task`` with ``ignore_result``, not as signatures: a
signature's ``apply_async`` goes through the task's own ``apply_async`` first, and
without ``ignore_result`` a publisher subscribes to every task's result channel in Redis.
A publish from a worker child cost 1.08 ms of CPU that way and 0.82 ms this way
(``send_task``'s before/after-publish signals still fire, so tracing hooks still see it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestration.constants import APPROVAL_DUE_TASK, DELEGATE_TASK, FINALIZE_TASK
from orchestration.priorities import PRIORITIES, Priority
from orchestration.settings import Settings
from orchestration.spec import AgentSpec
from workflows.plan import ExecutionPlan

log = logging.getLogger("troupe.worker")

# What a message can be sent at, most urgent first: above every execution's priority,
# a step the reaper sends again because it waited too long (workers/reaper.py), and
# Troupe's own short tasks (resuming, promoting, probing, reaping), which must never wait
# behind a backlog of delegations; then the executions' priorities.
PROMOTED = "promoted"
LEVELS: tuple[str, ...] = (PROMOTED, *PRIORITIES)
# RabbitMQ serves the highest number first and fixes a queue's levels when it is
# declared (its x-max-priority argument); kombu's Redis transport keeps one list per
# number and serves 0 first (its priority_steps). Both from LEVELS, in opposite order.
AMQP_MAX_PRIORITY = len(LEVELS) - 1
REDIS_PRIORITY_STEPS: tuple[int, ...] = tuple(range(len(LEVELS)))


@dataclass(frozen=True)
class Route:
    """The queue a message goes to and the broker's priority number it carries (None:
    the broker has no priorities)."""

    queue: str
    priority: int | None


@dataclass(frozen=True)
class Routing:
    """Where each message goes, and at which priority number, on this broker."""

    # Troupe's own queue (TROUPE_QUEUE): agents that name none, and Troupe's tasks.
    queue: str
    # Level → priority number; None on the in-memory transport, which has no
    # priorities.
    numbers: Mapping[str, int] | None = None
    # The embedded worker consumes one queue: every agent's delegations go there.
    agent_queues: bool = True

    @classmethod
    def for_settings(cls, settings: Settings) -> Routing:
        if settings.embedded:
            return cls(settings.queue, None, agent_queues=False)
        if settings.broker_is_rabbitmq:
            numbers = {level: AMQP_MAX_PRIORITY - rank for rank, level in enumerate(LEVELS)}
        else:
            numbers = {level: REDIS_PRIORITY_STEPS[rank] for rank, level in enumerate(LEVELS)}
        return cls(settings.queue, numbers)

    def queue_of(self, agent: AgentSpec | None) -> str:
        if self.agent_queues and agent is not None and agent.queue is not None:
            return agent.queue
        return self.queue

    def number(self, level: str) -> int | None:
        return None if self.numbers is None else self.numbers[level]

    def step(self, agent: AgentSpec | None, level: Priority | str) -> Route:
        """Where a delegation of ``agent`` goes, at ``level``."""
        return Route(self.queue_of(agent), self.number(level))

    @property
    def own(self) -> Route:
        """Where Troupe's own tasks go: its queue, above every execution."""
        return Route(self.queue, self.number(PROMOTED))


def route_options(route: Route) -> dict[str, Any]:
    """Celery's send options for ``route``."""
    if route.priority is None:
        return {"queue": route.queue}
    return {"queue": route.queue, "priority": route.priority}


# Every message's header: when it was sent (seconds since the epoch), for the metrics'
# queue wait (workers/metrics.py). A retry keeps it, and its ETA counts instead.
SENT_HEADER = "troupe_sent"


@dataclass(frozen=True)
class TaskMessage:
    """One task to publish, by name: its arguments and Celery's send options."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def delegation_message(
    execution_id: str,
    step_id: str,
    agent: str,
    route: Route,
    attempt: int = 1,
    *,
    orphaned_by: str | None = None,
    previous_delay: float | None = None,
) -> TaskMessage:
    # Every message names its attempt: that is how a redelivered copy is recognised.
    kwargs: dict[str, Any] = {"attempt": attempt}
    if orphaned_by is not None:
        kwargs["orphaned_by"] = orphaned_by
    # The backoff's last delay, for a decorrelated jitter's next one.
    if previous_delay is not None:
        kwargs["previous_delay"] = previous_delay
    options = {
        # Flower and the logs show the delegation under its agent's name.
        "shadow": f"agent:{agent}",
        # What Flower shows as args and kwargs, written here: Celery's own safe repr
        # of them was 7% of a publish's CPU.
        "argsrepr": repr((execution_id, step_id)),
        "kwargsrepr": repr(kwargs),
        **route_options(route),
    }
    return TaskMessage(DELEGATE_TASK, (execution_id, step_id), kwargs, options)


def approval_due_message(execution_id: str, step_id: str, route: Route) -> TaskMessage:
    """The timer of a step waiting for approval: sent with a countdown to its timeout
    (to Troupe's own queue, above every execution: see ``Routing.own``)."""
    return TaskMessage(
        APPROVAL_DUE_TASK,
        (execution_id, step_id),
        options={**route_options(route), "shadow": f"approval:{step_id}"},
    )


def finalize_message(execution_id: str, route: Route) -> TaskMessage:
    return TaskMessage(FINALIZE_TASK, (execution_id,), options=route_options(route))


def first_messages(
    plan: ExecutionPlan,
    execution_id: str,
    routing: Routing,
    agents: Mapping[str, AgentSpec],
    priority: Priority,
) -> list[TaskMessage]:
    """What an execution starts with: one delegation per step that depends on nothing,
    each to its agent's queue at the execution's priority."""
    messages = []
    for sid in plan.roots:
        agent = plan.step(sid).agent
        route = routing.step(agents.get(agent), priority)
        messages.append(delegation_message(execution_id, sid, agent, route))
    return messages


# Messages sent in one Redis pipeline at most (kombu's Producer.batch): a thousand ready
# steps went out in 0.33 s one by one.
PUBLISH_BATCH = 100


def publish(app: Any, messages: Iterable[TaskMessage]) -> None:
    """Send ``messages`` through one producer. No result is stored or subscribed to:
    status lives in Troupe's tables.

    Several messages go out in batches where the broker's transport can (kombu's Redis
    transport): one round trip each. A batch is sent once, without kombu's retries, so if
    it fails every message is sent again one by one, with them; a copy that did get
    through first is a redelivery, which the delegation recognises."""
    batch = list(messages)
    headers = {SENT_HEADER: time.time()}
    with app.producer_or_acquire() as producer:
        if len(batch) > 1:
            try:
                with producer.batch(max_size=PUBLISH_BATCH):
                    _send(app, producer, batch, headers)
                return
            except Exception as exc:
                log.warning(
                    "publishing %d messages in a batch failed (%s): one by one", len(batch), exc
                )
        _send(app, producer, batch, headers)


def _send(app: Any, producer: Any, messages: list[TaskMessage], headers: dict[str, Any]) -> None:
    for message in messages:
        app.send_task(
            message.task,
            args=message.args,
            kwargs=message.kwargs,
            producer=producer,
            ignore_result=True,
            # Nothing collects a delegation's children: keep them off the parent.
            add_to_parent=False,
            headers=headers,
            **message.options,
        )
