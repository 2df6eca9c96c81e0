"""ExecutionPlan → Celery canvas. Pure: builds signatures by task name, publishes nothing.

Each level of the plan becomes one delegation (a single step) or a chord of delegations
whose body is a join. The last level finalises the execution itself (its delegation or its
join carries ``finalize=True``), which saves a whole hop per execution; a separate
finalize task is used only when nothing is left to run. Every signature is immutable
(``si``) except the join, which receives the level's envelopes: state flows through the
database, not through task results.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import chain, chord, group, signature
from celery.canvas import Signature

from orchestration.constants import DELEGATE_TASK, FINALIZE_TASK, JOIN_TASK
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
        # Flower and the logs show the delegation under its agent's name.
        options={"queue": queue, "shadow": f"agent:{step.agent}"},
    )


def compile_canvas(
    plan: ExecutionPlan,
    execution_id: str,
    queue: str,
    app: Any = None,
    *,
    from_level: int = 0,
    attempts: Mapping[str, int] | None = None,
) -> Signature:
    """The whole execution, or (resuming) its levels from ``from_level`` on, with each
    step's next attempt number taken from ``attempts`` (default 1)."""
    parts: list[Signature] = []
    next_attempt = attempts or {}
    last = len(plan.levels) - 1
    for index, level in enumerate(plan.levels):
        if index < from_level:
            continue
        members = [
            delegation_signature(execution_id, plan.step(sid), queue, app, next_attempt.get(sid, 1))
            for sid in level
        ]
        if len(members) == 1:
            if index == last:
                members[0].kwargs["finalize"] = True
            parts.append(members[0])
            continue
        join = signature(
            JOIN_TASK,
            args=(execution_id, index),
            kwargs={"finalize": index == last},
            app=app,
            options={"queue": queue},
        )
        parts.append(chord(group(members, app=app), join, app=app))
    if not parts:
        parts.append(
            signature(
                FINALIZE_TASK,
                args=(execution_id,),
                immutable=True,
                app=app,
                options={"queue": queue},
            )
        )
    return chain(*parts, app=app) if len(parts) > 1 else parts[0]
