"""Plain Celery tasks around teams in a canvas, and a client that runs the canvases.

A worker loads the tasks with ``--include tests.support.canvas_tasks``. The client runs
as ``python -m tests.support.canvas_tasks SHOUT_TEAM FAILING_TEAM GATE_TEAM`` with a distributed
``TROUPE_*`` environment, and prints one JSON object: what each canvas gave.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from workers.app import app

TIMEOUT = 30


@app.task(name="tests.canvas.fetch")
def fetch(url: str) -> str:
    return f"text of {url}"


@app.task(name="tests.canvas.store")
def store(value: Any) -> dict[str, Any]:
    return {"stored": value}


@app.task(name="tests.canvas.collect")
def collect(values: list[Any]) -> list[Any]:
    return sorted(values)


@app.task(name="tests.canvas.note_failure")
def note_failure(task_id: str) -> str:
    """An error callback (it is given the failed task's id)."""
    return task_id


def run(shout_path: str, failing_path: str, gate_path: str) -> dict[str, Any]:
    from celery import chain, chord, group

    from orchestration import Team, execution
    from orchestration.errors import ExecutionNotFound

    shout = Team.load(shout_path)
    failing = Team.load(failing_path)
    gate = Team.load(gate_path)
    found: dict[str, Any] = {}

    piped = chain(fetch.s("u"), shout.s(), store.s()).apply_async()
    found["chain"] = piped.get(timeout=TIMEOUT)
    team_id = piped.parent.id
    found["chain_team"] = {
        "state": app.AsyncResult(team_id).state,
        "execution": execution(team_id).status(),
    }

    found["group"] = group(shout.s(x) for x in ("a", "b", "c")).apply_async().get(timeout=TIMEOUT)
    found["chord"] = (
        chord((shout.s(x) for x in ("b", "a")), collect.s()).apply_async().get(timeout=TIMEOUT)
    )
    found["immutable"] = (
        chain(fetch.s("u"), shout.si("given"), store.s()).apply_async().get(timeout=TIMEOUT)
    )

    errback = note_failure.s()
    errback.freeze()
    broken = chain(failing.s("x"), store.s()).on_error(errback).apply_async()
    failed_id = broken.parent.id
    failed = app.AsyncResult(failed_id)
    failed.get(timeout=TIMEOUT, propagate=False)
    found["failure"] = {
        "state": failed.state,
        "error": f"{type(failed.result).__name__}: {failed.result}",
        "errback_got": app.AsyncResult(errback.id).get(timeout=TIMEOUT),
        "team_id": failed_id,
        "execution": execution(failed_id).status(),
        "next_state": broken.state,
    }

    # Cancelled from here, while it waits for an approval: the reaper's sweep fails it.
    waiting = gate.s("x").apply_async()
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            handle = execution(waiting.id)
            break
        except ExecutionNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    handle.cancel()
    waiting.get(timeout=TIMEOUT, propagate=False)
    found["cancelled"] = {"state": waiting.state, "error": str(waiting.result)}
    return found


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:4])))
