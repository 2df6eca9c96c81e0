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

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from orchestration.constants import APPROVAL_DUE_TASK, DELEGATE_TASK, FINALIZE_TASK
from workflows.plan import ExecutionPlan

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
    queue: str,
    attempt: int = 1,
    *,
    orphaned_by: str | None = None,
) -> TaskMessage:
    # Every message names its attempt: that is how a redelivered copy is recognised.
    kwargs: dict[str, Any] = {"attempt": attempt}
    if orphaned_by is not None:
        kwargs["orphaned_by"] = orphaned_by
    return TaskMessage(
        DELEGATE_TASK,
        (execution_id, step_id),
        kwargs,
        {
            "queue": queue,
            # Flower and the logs show the delegation under its agent's name.
            "shadow": f"agent:{agent}",
            # What Flower shows as args and kwargs, written here: Celery's own safe repr
            # of them was 7% of a publish's CPU.
            "argsrepr": repr((execution_id, step_id)),
            "kwargsrepr": repr(kwargs),
        },
    )


def approval_due_message(execution_id: str, step_id: str, queue: str) -> TaskMessage:
    """The timer of a step waiting for approval: sent with a countdown to its timeout."""
    return TaskMessage(
        APPROVAL_DUE_TASK,
        (execution_id, step_id),
        options={"queue": queue, "shadow": f"approval:{step_id}"},
    )


def finalize_message(execution_id: str, queue: str) -> TaskMessage:
    return TaskMessage(FINALIZE_TASK, (execution_id,), options={"queue": queue})


def first_messages(plan: ExecutionPlan, execution_id: str, queue: str) -> list[TaskMessage]:
    """What an execution starts with: one delegation per step that depends on nothing."""
    return [
        delegation_message(execution_id, sid, plan.step(sid).agent, queue) for sid in plan.roots
    ]


def publish(app: Any, messages: Iterable[TaskMessage]) -> None:
    """Send ``messages`` through one producer. No result is stored or subscribed to:
    status lives in Troupe's tables."""
    headers = {SENT_HEADER: time.time()}
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
                headers=headers,
                **message.options,
            )
