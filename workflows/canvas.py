"""ExecutionPlan → the messages of one level, and how they are sent.

An execution is published one level at a time. A level of one step is one delegation; a
level of several steps is one message per step, and its members count the level down in
the database as each is decided (``troupe_levels``). The delegation that decides a level's
last step publishes the next level, compiled here from the plan; after the last level it
finishes the execution itself.

Celery's own canvas would do this with chains and chords, at a cost measured in
``bench/``: a chain carries every remaining step inside each message (a 100-step
sequential team's first message holds 99 signatures, so the bytes published grow with
the square of the length), and a chord keeps a counter and every member's result in
Redis and needs a join task. Here every message is two ids and an attempt number, no
delegation stores a result, and state flows through the database.

Messages go out through ``app.send_task`` with ``ignore_result``, not as signatures: a
signature's ``apply_async`` goes through the task's own ``apply_async`` first, and
without ``ignore_result`` a publisher subscribes to every task's result channel in Redis.
A publish from a worker child cost 1.08 ms of CPU that way and 0.82 ms this way
(``send_task``'s before/after-publish signals still fire, so tracing hooks still see it).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestration.constants import DELEGATE_TASK, FINALIZE_TASK
from workflows.plan import ExecutionPlan, PlannedStep


@dataclass(frozen=True)
class TaskMessage:
    """One task to publish, by name: its arguments and Celery's send options."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def delegation_message(
    execution_id: str, step: PlannedStep, queue: str, attempt: int = 1
) -> TaskMessage:
    # Every message names its attempt: that is how a redelivered copy is recognised.
    kwargs = {"attempt": attempt}
    return TaskMessage(
        DELEGATE_TASK,
        (execution_id, step.id),
        kwargs,
        {
            "queue": queue,
            # Flower and the logs show the delegation under its agent's name.
            "shadow": f"agent:{step.agent}",
            # What Flower shows as args and kwargs, written here: Celery's own safe repr
            # of them was 7% of a publish's CPU.
            "argsrepr": repr((execution_id, step.id)),
            "kwargsrepr": repr(kwargs),
        },
    )


def compile_level(
    plan: ExecutionPlan,
    execution_id: str,
    queue: str,
    *,
    level: int = 0,
    attempts: Mapping[str, int] | None = None,
    done: Collection[str] = (),
) -> list[TaskMessage]:
    """The delegations of ``level``. Resuming, each step carries its next attempt number
    from ``attempts`` (default 1), steps in ``done`` are left out, and a level with
    nothing left gives way to the next. Past the last level, the task that finishes the
    execution."""
    next_attempt = attempts or {}
    for index in range(level, len(plan.levels)):
        members = [
            delegation_message(execution_id, plan.step(sid), queue, next_attempt.get(sid, 1))
            for sid in plan.levels[index]
            if sid not in done
        ]
        if members:
            return members
    return [TaskMessage(FINALIZE_TASK, (execution_id,), options={"queue": queue})]


def publish(app: Any, messages: Iterable[TaskMessage]) -> None:
    """Send ``messages`` through one producer. No result is stored or subscribed to:
    status lives in Troupe's tables."""
    with app.producer_or_acquire() as producer:
        for message in messages:
            app.send_task(
                message.task,
                args=message.args,
                kwargs=message.kwargs,
                producer=producer,
                ignore_result=True,
                # Nothing collects a delegation's children: keep them off the parent.
                add_to_parent=False,
                **message.options,
            )
