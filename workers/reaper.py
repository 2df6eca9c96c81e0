"""The reaper: nothing stays RUNNING or PENDING forever, nor waits in a queue forever.

The database is the source of truth and the broker a delivery mechanism that may lose or
hold messages. Attempts whose lease expired belong to dead workers: they are marked lost,
and their executions resumed at once (the next attempt of each ready step is sent).
Executions with nothing running, waiting or recently active for ``stall_timeout`` are
resumed too: their messages were lost with a broker or a worker. So are executions with
a join still pending a lease past its deadline: its timer was lost (a hung parent keeps
the execution from looking stalled).

Starvation is bounded the same way. A broker serves higher priorities first, so a step
of a lower one waits as long as higher ones keep coming, and a message waiting in a
queue cannot be given another priority there (neither Redis nor RabbitMQ can reorder it
in place). So once nothing of a below-critical execution has started or ended for
``max_wait`` (lease renewals of a step still running do not count), its ready steps
that are not running are sent again above every priority. Each step keeps its attempt
number, so the two messages are copies of one delegation: whichever comes second finds
the step decided (``Stale``) or under way (it looks again once the lease would have
expired), and runs nothing. An execution is promoted at most once per ``max_wait``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestration.priorities import Priority
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.repository import aware, now
from workflows.status import StepStatus

log = logging.getLogger("troupe.reaper")


@dataclass
class ReapReport:
    lost_attempts: list[tuple[str, str, int]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)


def reap(
    store: MaintenanceRecords,
    *,
    lease_ttl: float,
    stall_timeout: float,
    resume: Callable[[str], None],
    max_wait: float | None = None,
    promote: Callable[[str], None] | None = None,
    at: datetime | None = None,
) -> ReapReport:
    stamp = at or now()
    lease = timedelta(seconds=lease_ttl)
    report = ReapReport()
    for attempt in store.open_attempts(older_than=stamp - lease):
        if store.mark_attempt_lost(attempt.execution_id, attempt.step_id, attempt.attempt):
            report.lost_attempts.append((attempt.execution_id, attempt.step_id, attempt.attempt))
    orphaned = {execution_id for execution_id, _, _ in report.lost_attempts}
    overdue = store.overdue_joins(due_before=stamp - timedelta(seconds=lease_ttl))
    for execution in store.unfinished_executions():
        if execution.id in orphaned:
            # Its attempt's worker died: nothing else will send the step again. (Another
            # reaper that marked a different attempt lost a moment ago resumes it once.)
            if store.claim_resume(execution.id, stamp - timedelta(seconds=1)):
                resume(execution.id)
                report.resumed.append(execution.id)
            continue
        if execution.id in overdue:
            # Resuming sends every join whose deadline has passed; at most once a lease.
            if store.claim_resume(execution.id, stamp - timedelta(seconds=lease_ttl)):
                resume(execution.id)
                report.resumed.append(execution.id)
            continue
        # Attempts still open now hold a live lease (expired ones were just marked lost).
        attempts = store.attempt_activity(execution.id)
        created = aware(execution.created_at) or stamp
        promoted = aware(execution.promoted_at)
        activity = None
        if (
            promote is not None
            and max_wait is not None
            and Priority.of((execution.spec or {}).get("priority")).promotable
        ):
            # Every ready step became ready when something of its execution ended (or
            # when it was created, or a retry came due), so it has waited at least as
            # long as nothing has started or ended. Its steps are read only once its
            # attempts have been quiet that long.
            quiet_since = _latest(created, attempts.latest_event, promoted)
            if (stamp - quiet_since).total_seconds() >= max_wait:
                activity = store.step_activity(execution.id, due_after=stamp - lease)
                quiet_since = _latest(quiet_since, activity.latest)
                if (stamp - quiet_since).total_seconds() >= max_wait and store.claim_promotion(
                    execution.id, stamp - timedelta(seconds=max_wait)
                ):
                    promote(execution.id)
                    report.promoted.append(execution.id)
                    continue
        if attempts.running:
            continue
        if activity is None:
            activity = store.step_activity(execution.id, due_after=stamp - lease)
        if activity.retry_due:
            continue  # a step waits for its retry, due soon or just now
        last = _latest(
            created, activity.latest, attempts.latest, aware(execution.resumed_at), promoted
        )
        if (stamp - last).total_seconds() >= stall_timeout and store.claim_resume(
            execution.id, stamp - timedelta(seconds=stall_timeout)
        ):
            resume(execution.id)
            report.resumed.append(execution.id)
    return report


def _latest(first: datetime, *others: datetime | None) -> datetime:
    return max([first, *(moment for moment in others if moment is not None)])


def promotable_steps(rows: Sequence[Any], at: datetime | None = None) -> tuple[str, ...]:
    """Of the ready steps ``rows`` (a resumption's), those a promotion sends again: not
    one that runs (its worker holds its message), nor one whose retry is not due yet
    (a copy would run it before its backoff ends)."""
    stamp = at or now()
    send = []
    for row in rows:
        if row.status == StepStatus.RUNNING:
            continue
        due = aware(row.next_attempt_at)
        if due is not None and due > stamp:
            continue
        send.append(row.step_id)
    return tuple(send)


class ReaperThread:
    """The reaper in every worker process that consumes delegations: recovery does not
    depend on beat being alive. Runs every ``interval`` seconds (with jitter, so that
    workers started together do not reap in step); ``run`` is one reap."""

    def __init__(self, run: Callable[[], object], interval: float) -> None:
        self._run = run
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="troupe-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval * random.uniform(0.8, 1.2)):
            try:
                self._run()
            except Exception:
                # A reap that failed (the database restarting, say) is tried again at
                # the next interval; the thread must outlive it.
                log.exception("reaper: this round failed; next in %.0fs", self._interval)
