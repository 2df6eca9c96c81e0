"""ExecutionPlan → what to publish. Pure: builds signatures by task name, publishes nothing.

An execution is published one level at a time. A level of one step is one delegation; a
level of several steps is a Celery group whose members count the level down in the
database as each is decided (``troupe_levels``). The delegation that decides a level's
last step publishes the next level, compiled here from the plan; after the last level it
finishes the execution itself.

Celery's own canvas would do this with chains and chords, at a cost measured in
``bench/``: a chain carries every remaining step inside each message (a 100-step
sequential team's first message holds 99 signatures, so the bytes published grow with
the square of the length), and a chord keeps a counter and every member's result in
Redis and needs a join task. Here every message is two ids and an attempt number, no
delegation stores a result, and state flows through the database. Every signature is
immutable (``si``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from celery import group, signature
from celery.canvas import Signature

from orchestration.constants import DELEGATE_TASK, FINALIZE_TASK
from workflows.plan import ExecutionPlan, PlannedStep


def delegation_signature(
    execution_id: str, step: PlannedStep, queue: str, app: Any = None, attempt: int = 1
) -> Signature:
    return signature(
        DELEGATE_TASK,
        args=(execution_id, step.id),
        # Every message names its attempt: that is how a redelivered copy is recognised.
        kwargs={"attempt": attempt},
        immutable=True,
        app=app,
        options={
            "queue": queue,
            # Flower and the logs show the delegation under its agent's name.
            "shadow": f"agent:{step.agent}",
            # What Flower shows as args and kwargs, written here: Celery's own safe repr
            # of them was 7% of a publish's CPU.
            "argsrepr": repr((execution_id, step.id)),
            "kwargsrepr": repr({"attempt": attempt}),
        },
    )


def compile_level(
    plan: ExecutionPlan,
    execution_id: str,
    queue: str,
    app: Any = None,
    *,
    level: int = 0,
    attempts: Mapping[str, int] | None = None,
    done: Collection[str] = (),
) -> Signature:
    """The delegations of ``level``: one signature, or a group. Resuming, each step
    carries its next attempt number from ``attempts`` (default 1), steps in ``done`` are
    left out, and a level with nothing left gives way to the next. Past the last level,
    the task that finishes the execution."""
    next_attempt = attempts or {}
    for index in range(level, len(plan.levels)):
        members = [
            delegation_signature(execution_id, plan.step(sid), queue, app, next_attempt.get(sid, 1))
            for sid in plan.levels[index]
            if sid not in done
        ]
        if members:
            return members[0] if len(members) == 1 else group(members, app=app)
    return signature(
        FINALIZE_TASK, args=(execution_id,), immutable=True, app=app, options={"queue": queue}
    )
