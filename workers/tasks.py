"""Celery tasks: thin wrappers that turn delegation decisions into Celery actions."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from orchestration.agents.secrets import RedactingFilter
from orchestration.constants import (
    APPROVAL_DUE_TASK,
    DELEGATE_TASK,
    FINALIZE_TASK,
    HEARTBEAT_TASK,
    REAP_TASK,
    START_TASK,
)
from orchestration.errors import DelegationFailed
from orchestration.limits.connect import limiter_for
from orchestration.limits.demand import LimiterOutage
from orchestration.limits.gate import CapacityGate
from orchestration.settings import Settings
from orchestration.step_state import record_of
from orchestration.store.approvals import ApprovalRecords
from orchestration.store.breakers import BreakerStore
from orchestration.store.budgets import BudgetRecords
from orchestration.store.canvas import CanvasRecords
from orchestration.store.database import dispose_engines
from orchestration.store.delegations import DelegationRecords
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.memory import MemoryRecords
from orchestration.store.repository import Store, is_transient, now
from workers import canvas, metrics
from workers.app import app, app_settings
from workers.approval_timer import run_timer
from workers.delegation import (
    Delegation,
    Delivery,
    Ledgers,
    Limits,
    RetryLater,
    TeamContext,
    team_of,
)
from workers.health import run_heartbeat
from workers.publish import (
    PROMOTED,
    Route,
    Routing,
    TaskMessage,
    approval_due_message,
    delegation_message,
    first_messages,
    publish,
    route_options,
)
from workers.reaper import ReaperThread, promotable_steps
from workers.reaper import reap as reap_lost_work
from workflows.outcome import decide_outcome
from workflows.runtime_steps import planned_for
from workflows.scheduling import resumption

log = logging.getLogger("troupe.worker")


@dataclass(frozen=True)
class TaskContext:
    """What the tasks of this process share: made once, on first use, from the settings
    Troupe's app was configured with (workers/app.py), never read in a task body."""

    settings: Settings
    store: Store
    records: DelegationRecords
    delegation: Delegation
    # Which queue and priority number each message gets on this broker.
    routing: Routing

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskContext:
        state = Store(settings.effective_database_url, connections=settings.db_connections)
        # Metered when this worker serves metrics (workers/metrics.py), else plain.
        records = metrics.delegation_records(state)
        breakers = metrics.cached_breakers(BreakerStore(state), settings.breaker_cache_ttl)
        capacity = CapacityGate(breakers, limiter_for(settings), lease_seconds=settings.lease_ttl)
        runner = Delegation(
            records,
            breakers,
            _limits(settings),
            Ledgers(BudgetRecords(state), ApprovalRecords(state), MemoryRecords(state)),
            prices=settings.prices,
            wake_later=_wake_later,
            wake_now=_wake_now,
            capacity=capacity,
        )
        return cls(settings, state, records, runner, Routing.for_settings(settings))


def _limits(settings: Settings) -> Limits:
    return Limits(
        lease_interval=settings.lease_interval,
        lease_after=settings.lease_after,
        # A message held past the broker's redelivery bound would run twice.
        max_countdown=(
            float("inf")
            if settings.embedded
            else 0.9
            * (
                settings.consumer_timeout
                if settings.broker_is_rabbitmq
                else settings.visibility_timeout
            )
        ),
    )


_context: TaskContext | None = None
_context_lock = threading.Lock()


def context() -> TaskContext:
    """This process's task context (a forked pool child inherits it; its database
    sockets are disposed of in ``_fresh_connections``)."""
    global _context
    current = _context
    if current is None:
        with _context_lock:
            current = _context
            if current is None:
                current = _context = TaskContext.from_settings(app_settings())
    return current


def store() -> Store:
    return context().store


def records() -> DelegationRecords:
    return context().records


def delegation() -> Delegation:
    return context().delegation


def approval_records() -> ApprovalRecords:
    return ApprovalRecords(context().store)


def _wake_later(execution_id: str, step_id: str, countdown: float) -> None:
    """A join's deadline timer: its message, held by the broker until the deadline (a
    countdown holds no worker slot)."""
    _send_later(_message(team_of(records(), execution_id), execution_id, step_id, 1), countdown)


def _wake_now(wake: str) -> None:
    """A waiter for the slot a call has just freed (``wake_of``): its message now. It
    still has its own timer, so a failure here costs only time."""
    try:
        execution_id, step_id, attempt, previous_delay = json.loads(wake)
        team = team_of(records(), execution_id)
        publish(
            app,
            [_message(team, execution_id, step_id, attempt, previous_delay=previous_delay)],
        )
    except Exception as exc:
        log.warning("a waiter for a freed slot was not woken (%s); it comes at its time", exc)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_secrets(logger: logging.Logger, **_: Any) -> None:
    # An agent's key or header value read from the environment never reaches the log,
    # whoever logs it (an HTTP library quoting a request, an agent's own print).
    for handler in logger.handlers:
        handler.addFilter(RedactingFilter())


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked pool child must not share its parent's database sockets.
    dispose_engines()


@app.task(name=START_TASK, ignore_result=True)
def start(execution_id: str, resume: bool = False, promote: bool = False) -> str:
    """Publish the execution's first steps from its recorded plan.

    Resuming (the reaper found it stalled), every undecided step whose count is zero
    is sent again with its next attempt, and an execution whose sinks are all decided
    is finished. Promoting (its steps waited longer than max_wait), the same steps
    except those running or waiting for a retry not yet due are sent above every
    priority.
    """
    shared = context()
    state = shared.records
    team = team_of(state, execution_id)
    plan = team.plan
    if not resume:
        publish(
            app,
            first_messages(plan, execution_id, shared.routing, team.agents, team.priority),
        )
        return execution_id
    rows = state.steps(execution_id)
    found = resumption(plan, rows, now())
    if found.finish:
        finish_execution(execution_id)
        return execution_id
    by_id = {row.step_id: row for row in rows}
    send = found.send
    if promote:
        send = promotable_steps([by_id[sid] for sid in send])
    publish(
        app,
        [
            _message(
                team,
                execution_id,
                sid,
                by_id[sid].attempts + 1,
                level=PROMOTED if promote else None,
            )
            for sid in send
        ],
    )
    if promote and send:
        log.info("execution %s: steps %s sent again above every priority", execution_id, list(send))
    return execution_id


# No result is stored: the database holds every step's state, and nothing reads a
# delegation's result from the backend (storing it cost a Redis round trip each).
# DelegationFailed is expected: logged without a traceback, and its message acked.
@app.task(
    name=DELEGATE_TASK,
    bind=True,
    max_retries=None,
    acks_late=True,
    ignore_result=True,
    throws=(DelegationFailed,),
)
def delegate(
    self: Task,
    execution_id: str,
    step_id: str,
    attempt: int = 1,
    previous_delay: float | None = None,
    orphaned_by: str | None = None,
    infra_retries: int = 0,
) -> None:
    request = self.request
    settings = context().settings
    # A redelivered message's earlier run died: the attempts it ran (its own, and any
    # it ran eagerly after it) may be taken over at once.
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    delivery = Delivery(
        execution_id=execution_id,
        step_id=step_id,
        attempt=attempt,
        task_id=request.id,
        worker=request.hostname,
        previous_delay=previous_delay,
        # Redelivered: this message's earlier run died, and its attempt with it.
        orphaned_by=orphaned_by or (request.id if redelivered else None),
    )
    # The queue this message came from, and its priority: what a message sent again in
    # its place gets. (Embedded, the in-memory transport names no priority.)
    info = request.delivery_info or {}
    delivered = Route(str(info.get("routing_key") or settings.queue), info.get("priority"))
    try:
        retry = run_eagerly(
            delivery,
            settings,
            orphaned_by=request.id if redelivered else None,
            queue=delivered.queue,
        )
    except DelegationFailed:
        raise  # recorded and sent on already: only the task's state is left to set
    except Exception as exc:
        if not _is_outage(exc):
            raise
        # Troupe's own outage (database unreachable or out of connections, broker
        # hiccup), not the agent's: nothing is dropped. This message goes out again
        # with a backoff, and not as an attempt of the agent.
        delay = min(60.0, random.uniform(0, 0.5 * 2.0 ** min(infra_retries, 7)))
        log.warning("delegation %s/%s: %s; again in %.1fs", execution_id, step_id, exc, delay)
        again = delegation_message(
            execution_id,
            step_id,
            _shadowed_agent(request),
            delivered,
            attempt,
            orphaned_by=request.id,
            previous_delay=previous_delay,
        )
        again.kwargs["infra_retries"] = infra_retries + 1
        try:
            _send_later(again, delay)
        except Exception:
            # The broker is down too: give the message back to it.
            raise Reject(str(exc), requeue=True) from None
        return
    if retry is not None:
        # Celery's own retry: the same task id, shown as RETRY in Flower, to the same
        # queue at the same priority (Celery keeps both from the delivered message).
        raise self.retry(
            countdown=retry.countdown,
            kwargs={"attempt": retry.attempt, "previous_delay": retry.previous_delay},
            max_retries=None,
        )


def run_eagerly(
    delivery: Delivery, settings: Settings, *, orphaned_by: str | None, queue: str | None = None
) -> RetryLater | None:
    """Run the delivered step; then, while the bound allows, one of the steps its
    decision made ready, here, without a broker round trip. Everything else is sent.
    Only a step whose agent's queue is ``queue`` (the one the message came from, which
    this worker serves) runs here: another's runs where its queue is served.
    Returns the delivered step's own retry, for Celery's ``self.retry``; raises
    DelegationFailed, once all that is done, if the delivered step's attempt failed for
    good or was refused (the task then ends in FAILURE, as Flower shows it)."""
    failure: str | None = None
    runner = delegation()
    queue = queue or settings.queue
    held_since = time.monotonic()
    # With task events on from the start (TROUPE_TASK_EVENTS), every delegation is
    # published, so Flower lists each as a task of its own.
    eager_left = 0 if settings.task_events else settings.eager_steps
    first = delivery
    while True:
        try:
            outcome = runner.run(delivery)
        except Exception as exc:
            if _is_outage(exc):
                raise
            # Troupe's own error while deciding the step (a bug, a value it cannot
            # handle): that attempt's failure, retried under the policy, then the
            # step fails saying so, rather than a message dropped or redelivered forever.
            log.exception(
                "delegation %s/%s failed inside Troupe", delivery.execution_id, delivery.step_id
            )
            outcome = runner.internal_error(delivery, exc)
        if outcome.wake_in is not None:
            # The step waits for a person, holding nothing: this timer wakes it at the
            # approval's timeout (in hops, if that is beyond the broker's bound).
            _send_later(
                approval_due_message(
                    delivery.execution_id, delivery.step_id, context().routing.own
                ),
                outcome.wake_in,
            )
        if outcome.ended and not outcome.finalized:
            finish_execution(delivery.execution_id)
        elif outcome.finalized:
            log.info("execution %s finalized: with its last step", delivery.execution_id)
            runner.ended(delivery.execution_id)
            complete_signature(delivery.execution_id)
        if delivery is first:
            failure = outcome.failure
        if outcome.retry is not None:
            retry = outcome.retry
            if delivery is first:
                return retry
            team = team_of(records(), delivery.execution_id)
            message = _message(
                team,
                delivery.execution_id,
                delivery.step_id,
                retry.attempt,
                previous_delay=retry.previous_delay,
            )
            _send_later(message, retry.countdown)
        send = list(outcome.send)
        eager = None
        if (
            send
            and eager_left > 0
            and time.monotonic() - held_since < settings.eager_window
            and outcome.retry is None
        ):
            eager = _take_eager(send, delivery.execution_id, queue)
            if eager is not None:
                eager_left -= 1
        if send:
            publish(app, _messages(delivery.execution_id, send, orphaned_by))
        if eager is None:
            if failure is not None:
                raise DelegationFailed(f"{first.step_id}: {failure}")
            return None
        delivery = Delivery(
            execution_id=delivery.execution_id,
            step_id=eager[0],
            attempt=eager[1],
            task_id=delivery.task_id,
            worker=delivery.worker,
            orphaned_by=orphaned_by,
        )


def _messages(
    execution_id: str, send: list[tuple[str, int]], orphaned_by: str | None
) -> list[TaskMessage]:
    team = team_of(records(), execution_id)
    return [
        _message(team, execution_id, sid, attempt, orphaned_by=orphaned_by) for sid, attempt in send
    ]


def _message(
    team: TeamContext,
    execution_id: str,
    step_id: str,
    attempt: int,
    *,
    level: str | None = None,
    orphaned_by: str | None = None,
    previous_delay: float | None = None,
) -> TaskMessage:
    """A step's delegation: to its agent's queue, at the execution's priority (or
    ``level``)."""
    agent = planned_for(team.plan, step_id).agent
    route = context().routing.step(team.agents.get(agent), level or team.priority)
    return delegation_message(
        execution_id,
        step_id,
        agent,
        route,
        attempt,
        orphaned_by=orphaned_by,
        previous_delay=previous_delay,
    )


def _take_eager(
    send: list[tuple[str, int]], execution_id: str, queue: str
) -> tuple[str, int] | None:
    """Remove from ``send`` the last step whose agent's queue is ``queue``, to run it
    here; None if every one belongs to another queue."""
    team = team_of(records(), execution_id)
    routing = context().routing
    for index in range(len(send) - 1, -1, -1):
        agent = planned_for(team.plan, send[index][0]).agent
        if routing.queue_of(team.agents.get(agent)) == queue:
            return send.pop(index)
    return None


def _shadowed_agent(request: Any) -> str:
    """The agent name a message was sent under (its shadow name is "agent:<name>")."""
    shadow = str(getattr(request, "shadow", None) or "")
    return shadow.removeprefix("agent:")


def _send_later(message: TaskMessage, countdown: float) -> None:
    options = {**message.options, "countdown": countdown}
    publish(app, [TaskMessage(message.task, message.args, message.kwargs, options)])


def _is_outage(exc: BaseException) -> bool:
    """Troupe's own infrastructure failed (database, broker, the limits' Redis), not the
    agent: the message is sent again later, never dropped."""
    return is_transient(exc) or isinstance(exc, LimiterOutage) or _is_broker_error(exc)


def _is_broker_error(exc: BaseException) -> bool:
    errors = tuple(app.connection_for_write().connection_errors)
    return isinstance(exc, errors)


@app.task(name=APPROVAL_DUE_TASK, bind=True, max_retries=None, acks_late=True, ignore_result=True)
def approval_due(self: Task, execution_id: str, step_id: str) -> None:
    """A waiting approval's timer: not due yet, it goes out again (a countdown is bounded
    by the broker's redelivery bound); due and still undecided, its ``on_timeout`` is
    recorded (decided by "timeout") and the step is sent on. Decided already: nothing,
    its decider sent the step on."""
    try:
        outcome = run_timer(
            records(),
            approval_records(),
            execution_id,
            step_id,
            delegation().limits.max_countdown,
        )
        if outcome.rearm is not None:
            own = context().routing.own
            _send_later(approval_due_message(execution_id, step_id, own), outcome.rearm)
        if outcome.send is not None:
            _, attempt = outcome.send
            team = team_of(records(), execution_id)
            publish(app, [_message(team, execution_id, step_id, attempt)])
    except Exception as exc:
        if not is_transient(exc) and not _is_broker_error(exc):
            raise
        # Troupe's own outage: the timer is not dropped (the stall check is the last
        # resort, minutes later).
        log.warning("approval timer %s/%s: %s; again in 5s", execution_id, step_id, exc)
        raise self.retry(countdown=5.0, max_retries=None) from None


@app.task(name=FINALIZE_TASK, ignore_result=True)
def finalize(execution_id: str) -> dict[str, Any]:
    return finish_execution(execution_id)


def finish_execution(execution_id: str) -> dict[str, Any]:
    """Decide and record the execution's status and output (once; later calls no-op)."""
    state = records()
    plan = team_of(state, execution_id).plan
    results = {row.step_id: record_of(row) for row in state.step_results(execution_id)}
    outcome = decide_outcome(plan, results)
    first = state.finish_execution(execution_id, outcome.status, outcome.output, outcome.error)
    delegation().ended(execution_id)
    complete_signature(execution_id)
    # Operators (and the fault tests) read this line to see an execution end, and to see
    # a redelivered message end it again without changing anything.
    log.info(
        "execution %s finalized: %s%s",
        execution_id,
        outcome.status,
        "" if first else " (already recorded)",
    )
    return {"execution_id": execution_id, "status": outcome.status}


def complete_signature(execution_id: str) -> None:
    """An execution started by a Celery signature (Team.s) has ended: send the task
    that completes the signature (workers/canvas.py). Any other costs one round trip."""
    try:
        canvas.complete(app, CanvasRecords(store()), execution_id)
    except Exception:
        # The execution's end stands; the reaper's sweep sends it again later.
        log.exception("execution %s: its signature's completion was not sent", execution_id)


# Ended executions whose signature's completion is unsent this long after their end
# are swept by the reaper: cancelled by a client, or their ender died in between.
CANVAS_SWEEP_AFTER = 5.0


@app.task(name=HEARTBEAT_TASK)
def heartbeat() -> list[dict[str, Any]]:
    """Beat: probe every agent with a health check and feed its breaker."""
    state = store()
    return [
        {
            "identity": r.identity,
            "healthy": r.healthy,
            "latency_ms": r.latency_ms,
            "breaker": r.breaker,
        }
        for r in run_heartbeat(state, BreakerStore(state))
    ]


_reaper: ReaperThread | None = None


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    """Every worker reaps (in its main process): recovery needs no beat."""
    global _reaper
    if _reaper is None:
        _reaper = ReaperThread(reap_once, context().settings.reap_interval)
        _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()


@app.task(name=REAP_TASK)
def reap() -> dict[str, Any]:
    """Beat: mark attempts of dead workers lost, resume stalled executions (every worker
    also does this itself; beat's schedule is a second, optional trigger)."""
    return reap_once()


def reap_once() -> dict[str, Any]:
    shared = context()
    settings = shared.settings
    # Resuming and promoting are Troupe's own tasks: sent above every delegation, so a
    # backlog does not hold them back.
    own = route_options(shared.routing.own)

    def resume(execution_id: str, promote: bool = False) -> None:
        kwargs = {"resume": True, "promote": True} if promote else {"resume": True}
        publish(app, [TaskMessage(START_TASK, (execution_id,), kwargs, own)])

    report = reap_lost_work(
        MaintenanceRecords(shared.store),
        lease_ttl=settings.lease_ttl,
        stall_timeout=settings.stall_timeout,
        resume=resume,
        max_wait=settings.max_wait,
        promote=lambda execution_id: resume(execution_id, promote=True),
    )
    if report.lost_attempts or report.resumed:
        log.warning("reaper: lost attempts %s; resumed %s", report.lost_attempts, report.resumed)
    if report.promoted:
        log.warning(
            "reaper: promoted %s (their steps waited %gs)", report.promoted, settings.max_wait
        )
    completed = canvas.sweep(app, CanvasRecords(shared.store), CANVAS_SWEEP_AFTER)
    if completed:
        log.info("reaper: completed team signatures %s", completed)
    return {
        "lost_attempts": len(report.lost_attempts),
        "resumed": report.resumed,
        "promoted": report.promoted,
        "signatures": len(completed),
    }


__all__ = ["approval_due", "delegate", "finalize", "finish_execution", "heartbeat", "reap", "start"]
