"""Celery tasks: thin wrappers that turn delegation decisions into Celery actions."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import worker_process_init

from orchestration.constants import (
    DELEGATE_TASK,
    FINALIZE_TASK,
    HEARTBEAT_TASK,
    REAP_TASK,
    START_TASK,
    STEP_FINAL,
)
from orchestration.envelope import Envelope, record_of
from orchestration.settings import get_settings
from orchestration.store.breaker_cache import CachedBreakers
from orchestration.store.breakers import BreakerStore
from orchestration.store.database import dispose_engines
from orchestration.store.repository import Store
from workers.app import app
from workers.delegation import Delegation, Delivery, Limits, RetryLater, team_of
from workers.health import run_heartbeat
from workers.reaper import reap as reap_lost_work
from workers.reaper import resume_attempts
from workflows.canvas import TaskMessage, compile_level, publish
from workflows.outcome import decide_outcome

log = logging.getLogger("troupe.worker")


@lru_cache(maxsize=1)
def store() -> Store:
    return Store(get_settings().effective_database_url)


@lru_cache(maxsize=1)
def delegation() -> Delegation:
    settings = get_settings()
    state = store()
    limits = Limits(
        lease_interval=settings.lease_interval,
        lease_after=settings.lease_after,
        max_countdown=float("inf") if settings.embedded else 0.9 * settings.visibility_timeout,
    )
    return Delegation(
        state, CachedBreakers(BreakerStore(state), settings.breaker_cache_ttl), limits
    )


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool child must not share its parent's database sockets.
    dispose_engines()


@app.task(name=START_TASK, ignore_result=True)
def start(execution_id: str, resume: bool = False) -> str:
    """Publish the execution's first level from its recorded plan.

    Resuming (the reaper found it stalled), the unfinished steps of its first unfinished
    level are published, each carrying the number of its next attempt.
    """
    state = store()
    plan = team_of(state, execution_id).plan
    from_level, attempts, done = 0, None, frozenset[str]()
    if resume:
        steps = state.steps(execution_id)
        unfinished = [row for row in steps if row.status not in STEP_FINAL]
        from_level = min((row.level for row in unfinished), default=len(plan.levels))
        attempts = resume_attempts(steps)
        done = frozenset(row.step_id for row in steps if row.status in STEP_FINAL)
    publish(
        app,
        compile_level(
            plan,
            execution_id,
            get_settings().queue,
            level=from_level,
            attempts=attempts,
            done=done,
        ),
    )
    return execution_id


# No result is stored: the database holds every step's state, and nothing reads a
# delegation's result from the backend (storing it cost a Redis round trip each).
@app.task(name=DELEGATE_TASK, bind=True, max_retries=None, acks_late=True, ignore_result=True)
def delegate(
    self: Task,
    execution_id: str,
    step_id: str,
    attempt: int = 1,
    previous_delay: float | None = None,
) -> Envelope:
    decision = delegation().run(
        Delivery(
            execution_id=execution_id,
            step_id=step_id,
            attempt=attempt,
            task_id=self.request.id,
            worker=self.request.hostname,
            previous_delay=previous_delay,
        )
    )
    if decision is None:
        # Stale copy of an attempt whose successor is already queued: nothing may move,
        # so tell Celery to forget this message.
        raise Ignore()
    if isinstance(decision, RetryLater):
        raise self.retry(
            countdown=decision.countdown,
            kwargs={"attempt": decision.attempt, "previous_delay": decision.previous_delay},
            max_retries=None,
        )
    if decision["finalized"]:
        log.info("execution %s finalized: with its last step", execution_id)
    elif decision["closes_level"]:
        move_on(execution_id, step_id)
    return decision


def move_on(execution_id: str, step_id: str) -> None:
    """The step just decided was its level's last: publish the next level, or finish
    the execution after its last level.

    A worker that dies between the decision's commit and this publish leaves the
    execution stalled (a redelivered copy finds the step decided and moves nothing, so
    that copies never publish a level twice); the reaper resumes it from its first
    unfinished level once ``stall_timeout`` has passed."""
    plan = team_of(store(), execution_id).plan
    level = plan.step(step_id).level
    if level == plan.last_level:
        finish_execution(execution_id)
        return
    publish(app, compile_level(plan, execution_id, get_settings().queue, level=level + 1))


@app.task(name=FINALIZE_TASK, ignore_result=True)
def finalize(execution_id: str) -> dict[str, Any]:
    return finish_execution(execution_id)


def finish_execution(execution_id: str) -> dict[str, Any]:
    """Decide and record the execution's status and output (once; later calls no-op)."""
    state = store()
    plan = team_of(state, execution_id).plan
    records = {row.step_id: record_of(row) for row in state.step_results(execution_id)}
    outcome = decide_outcome(plan, records)
    first = state.finish_execution(execution_id, outcome.status, outcome.output, outcome.error)
    # Operators (and the fault tests) read this line to see an execution end, and to see
    # a redelivered canvas end again without changing anything.
    log.info(
        "execution %s finalized: %s%s",
        execution_id,
        outcome.status,
        "" if first else " (already recorded)",
    )
    return {"execution_id": execution_id, "status": outcome.status}


@app.task(name=HEARTBEAT_TASK)
def heartbeat() -> list[dict[str, Any]]:
    """Beat: probe every agent with a health check and feed its breaker."""
    state = store()
    return [
        {"agent": r.agent, "healthy": r.healthy, "latency_ms": r.latency_ms, "breaker": r.breaker}
        for r in run_heartbeat(state, BreakerStore(state))
    ]


@app.task(name=REAP_TASK)
def reap() -> dict[str, Any]:
    """Beat: mark attempts of dead workers lost, resume stalled executions."""
    settings = get_settings()
    report = reap_lost_work(
        store(),
        lease_ttl=settings.lease_ttl,
        stall_timeout=settings.stall_timeout,
        resume=lambda execution_id: publish(
            app,
            [TaskMessage(START_TASK, (execution_id,), {"resume": True}, {"queue": settings.queue})],
        ),
    )
    if report.lost_attempts or report.resumed:
        log.warning("reaper: lost attempts %s; resumed %s", report.lost_attempts, report.resumed)
    return {"lost_attempts": len(report.lost_attempts), "resumed": report.resumed}
