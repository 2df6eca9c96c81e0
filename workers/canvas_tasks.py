"""The Celery tasks of a team run as a signature (``Team.s``): ``troupe.run_team``
starts the execution and returns at once; ``troupe.team_result`` stands in for it once
the execution has ended (see workers/canvas.py)."""

from __future__ import annotations

import random
from typing import Any

from celery import Task
from celery.exceptions import Ignore

from orchestration.constants import COMPLETED, EXECUTION_FINAL, RUN_TEAM_TASK, TEAM_RESULT_TASK
from orchestration.errors import ExecutionFailed
from orchestration.store.canvas import CanvasRecords
from orchestration.store.repository import is_transient
from workers import canvas
from workers.app import app
from workers.publish import first_messages, publish
from workers.tasks import context, store


def _backoff(retries: int) -> float:
    return min(60.0, random.uniform(0, 0.5 * 2.0 ** min(retries, 7)))


@app.task(name=RUN_TEAM_TASK, bind=True, base=canvas.RunTeamTask, acks_late=True, max_retries=None)
def run_team(self: Task, input: Any = None, *, spec: dict[str, Any]) -> None:
    """Record the execution and send its first steps; its result comes later, from
    ``team_result`` under this task's id."""
    shared = context()
    queue = shared.settings.queue
    execution_id = str(self.request.id)
    held = canvas.completion(self, execution_id, queue, str(spec.get("name", "team")))
    try:
        started = canvas.start(shared.store, execution_id, spec, input, held)
        if started is not None:
            team, plan = started
            messages = first_messages(
                plan, execution_id, shared.routing, team.agents, team.priority
            )
            publish(app, messages)
    except Exception as exc:
        if not is_transient(exc):
            raise  # an invalid spec or input: the signature fails, its errbacks run
        # Troupe's own outage: this message goes out again (same id, same callbacks).
        raise self.retry(countdown=_backoff(self.request.retries), max_retries=None) from None
    # No result now and nothing of the chain sent: team_result stands in for this task.
    raise Ignore()


@app.task(
    name=TEAM_RESULT_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,
    ignore_result=False,
    throws=(ExecutionFailed,),
)
def team_result(self: Task, execution_id: str) -> Any:
    """The ended execution's output; ExecutionFailed if it failed or was cancelled."""
    try:
        found = CanvasRecords(store()).outcome(execution_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise self.retry(countdown=_backoff(self.request.retries), max_retries=None) from None
    if found is None:
        raise ExecutionFailed(f"execution {execution_id} was not found")
    status, output, error = found
    if status not in EXECUTION_FINAL:  # pragma: no cover - sent only once it ended
        raise self.retry(countdown=1.0, max_retries=None)
    if status != COMPLETED:
        raise ExecutionFailed(f"execution {execution_id} {status}: {error or 'no error recorded'}")
    return output


__all__ = ["run_team", "team_result"]
