"""Teams inside Celery's canvas: ``Team.s(input)`` is a signature that runs the team as
a durable Troupe execution, and gives its output to whatever the canvas does next.

    chain(fetch.s(url), team.s(), store.s())       # the team's output goes to store
    group(team.s(x) for x in xs)                   # one execution per x
    chord((team.s(x) for x in xs), summarize.s())  # summarize gets the list of outputs

The signature's task, ``troupe.run_team``, records the execution (its id is the task's
id) and publishes its first steps, and then returns without waiting: no worker slot is
held while the team runs. Before it returns it asks Celery's own ``Task.replace`` for
the task that is to stand in for it: ``troupe.team_result``, frozen with the same task
id and carrying the request's callbacks, error callbacks, the rest of its chain, its
group and its chord. ``replace`` would send it at once; here ``on_replace`` hands it
back instead, and it is kept with the execution (``troupe_canvas``) while
``run_team`` ends with ``Ignore`` (no result stored, nothing of the chain sent).

Whoever records the execution's end sends that task, once (a compare-and-set in the
database; every worker's reaper sends one whose sender died, or whose execution was
cancelled). ``team_result`` reads the execution and returns its output, or raises
``ExecutionFailed``; from there Celery's own tracer does what it does for any task: it
stores the result under the original id, sends the chain's next task and the
callbacks, counts the chord down, or calls the error callbacks. Nothing of Celery's
result or chord protocol is re-implemented, so any result backend Celery supports
works as it does for Celery's own tasks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, Signature, Task, signature

from orchestration.constants import EXECUTION_FINAL, RUN_TEAM_TASK, TEAM_RESULT_TASK
from orchestration.errors import ExecutionError
from orchestration.spec import TeamSpec
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.canvas import CanvasRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.repository import Store, spec_digest
from workflows.plan import ExecutionPlan, build_plan

log = logging.getLogger("troupe.canvas")

# What a Celery signature is, for the client's annotations (it imports no Celery).
TeamSignature = Signature

# The longest execution id (troupe_executions.id): Celery's ids are 36-character uuids.
MAX_ID = 36


def team_signature(
    app: Celery,
    spec: Mapping[str, Any],
    args: tuple[Any, ...],
    *,
    queue: str,
    immutable: bool,
    options: Mapping[str, Any],
) -> Signature:
    """A signature of ``troupe.run_team`` for this validated spec (as JSON, with the
    budget it runs under). ``args``: the input, or nothing to take the previous task's
    result in a chain."""
    name = str(spec.get("name", "team"))
    return app.signature(
        RUN_TEAM_TASK,
        args=args,
        kwargs={"spec": dict(spec)},
        immutable=immutable,
        # Flower and the logs show it under the team's name.
        **{"queue": queue, "shadow": f"team:{name}", **options},
    )


class RunTeamTask(Task):  # type: ignore[misc]  # Celery is untyped
    """``troupe.run_team``'s class: ``replace`` prepares the stand-in task and hands it
    back, unsent (see the module's docstring)."""

    def on_replace(self, sig: Signature) -> Signature:
        return sig


def completion(task: Task, execution_id: str, queue: str, team: str) -> dict[str, Any]:
    """The task that completes ``task``'s signature once its execution ends, as JSON:
    ``troupe.team_result`` replacing ``task`` (same id, callbacks, chain, chord)."""
    stand_in = task.app.signature(
        TEAM_RESULT_TASK, args=(execution_id,), queue=queue, shadow=f"team:{team}"
    )
    prepared = task.replace(stand_in)
    # A signature is a dict of JSON values (nested signatures are dicts too); fail
    # here, in the task that can still report it, rather than when the team has run.
    found: dict[str, Any] = json.loads(json.dumps(prepared))
    return found


def start(
    store: Store,
    execution_id: str,
    spec: dict[str, Any],
    input_value: Any,
    held: dict[str, Any],
) -> tuple[TeamSpec, ExecutionPlan] | None:
    """Record the execution (unless a first delivery of this message did) and keep its
    completion. Returns the team and the plan whose first steps are to be sent, None if
    the execution has ended already (a late copy of the message)."""
    if len(execution_id) > MAX_ID:
        raise ExecutionError(
            f"a team's task id is its execution's id, at most {MAX_ID} characters: "
            f"{execution_id[:50]!r}"
        )
    team = TeamSpec.model_validate(spec)
    plan = build_plan(team)
    canvas = CanvasRecords(store)
    status = canvas.exists(execution_id)
    if status is None:
        AgentRegistry(store).register_agents(team.name, spec["agents"])
        try:
            ExecutionRecords(store).create_execution(
                execution_id, spec, plan, input_value, spec_digest(spec), budget=team.budget
            )
        except Exception:
            # Another copy of the message recorded it first (a duplicate key), or not.
            status = canvas.exists(execution_id)
            if status is None:
                raise
    # Kept before any step is sent: the execution cannot end before it is there.
    canvas.hold(execution_id, held)
    if status in EXECUTION_FINAL:
        return None
    # Sent again by a second copy: a copy of a step's message changes nothing.
    return team, plan


def complete(app: Celery, canvas: CanvasRecords, execution_id: str) -> bool:
    """Send the completion of an execution that has ended, if it has one and nobody
    sent it. On failure it is left for the reaper's sweep."""
    found = canvas.claim(execution_id)
    if found is None:
        return False
    try:
        signature(found, app=app).apply_async()
    except Exception:
        canvas.release(execution_id)
        raise
    return True


def sweep(app: Celery, canvas: CanvasRecords, older_than: float) -> list[str]:
    """Send the completions still unsent ``older_than`` seconds after their execution
    ended (a cancelled execution's, or one whose sender died)."""
    sent = []
    for execution_id in canvas.unsent(older_than):
        try:
            if complete(app, canvas, execution_id):
                sent.append(execution_id)
        except Exception as exc:
            log.warning("team signature %s: completion not sent (%s)", execution_id, exc)
    return sent
