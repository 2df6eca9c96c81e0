"""The reaper: nothing stays RUNNING or PENDING forever.

The database is the source of truth and the broker a delivery mechanism that may lose or
hold messages. Attempts whose lease expired belong to dead workers: they are marked lost,
and their executions resumed at once (the next attempt of each ready step is sent).
Executions with nothing running, waiting or recently active for ``stall_timeout`` are
resumed too: their messages were lost with a broker or a worker. So are executions with
a join still pending a lease past its deadline: its timer was lost (a hung parent keeps
the execution from looking stalled).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from orchestration.store.breakers import aware
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.repository import now

log = logging.getLogger("troupe.reaper")


@dataclass
class ReapReport:
    lost_attempts: list[tuple[str, str, int]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def reap(
    store: MaintenanceRecords,
    *,
    lease_ttl: float,
    stall_timeout: float,
    resume: Callable[[str], None],
    at: datetime | None = None,
) -> ReapReport:
    stamp = at or now()
    report = ReapReport()
    for attempt in store.open_attempts(older_than=stamp - timedelta(seconds=lease_ttl)):
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
        running, latest_attempt = store.attempt_activity(execution.id)
        if running:
            continue
        activity = store.step_activity(execution.id, due_after=stamp - timedelta(seconds=lease_ttl))
        if activity.retry_due:
            continue  # a step waits for its retry, due soon or just now
        last = aware(execution.created_at) or stamp
        if activity.latest is not None:
            last = max(last, activity.latest)
        if latest_attempt is not None:
            last = max(last, latest_attempt)
        resumed = aware(execution.resumed_at)
        if resumed is not None:
            last = max(last, resumed)
        if (stamp - last).total_seconds() >= stall_timeout and store.claim_resume(
            execution.id, stamp - timedelta(seconds=stall_timeout)
        ):
            resume(execution.id)
            report.resumed.append(execution.id)
    return report


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
