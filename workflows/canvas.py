"""ExecutionPlan → Celery canvas. Pure: builds signatures by task name, publishes nothing.

Levels of one step become a chain of delegations. A level of several steps becomes a
group, and ends the canvas: its members count the level down in the database as each is
decided (``troupe_levels``), and the delegation that decides the last one publishes the
rest of the execution, compiled from the next level. That replaces Celery's chord, whose
counter and result list live in Redis and which needs every member's result stored and a
join task; here no delegation stores a result, since state flows through the database.

The last level finalizes the execution itself: its delegation carries ``finalize=True``,
or, for a level of several steps, the delegation that closes it finishes the execution.
A separate finalize task is used only when nothing is left to run. Every signature is
immutable (``si``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from celery import chain, group, signature
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
    done: Collection[str] = (),
) -> Signature:
    """The execution from ``from_level`` up to its next level of several steps, which
    its closing delegation continues. Resuming, each step carries its next attempt
    number from ``attempts`` (default 1), and steps in ``done`` are left out."""
    parts: list[Signature] = []
    next_attempt = attempts or {}
    for index in range(from_level, len(plan.levels)):
        members = [
            delegation_signature(execution_id, plan.step(sid), queue, app, next_attempt.get(sid, 1))
            for sid in plan.levels[index]
            if sid not in done
        ]
        if len(plan.levels[index]) == 1:
            if members and index == plan.last_level:
                members[0].kwargs["finalize"] = True
            parts.extend(members)
            continue
        if members:
            parts.append(group(members, app=app) if len(members) > 1 else members[0])
            break
        # Every step of this level is decided already: its closer moved on, or died
        # before it could (then the reaper resumes here), so carry on with the next.
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
