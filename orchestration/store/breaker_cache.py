"""A per-process cache in front of the shared breakers, for the hot path.

A CLOSED breaker is cached for ``ttl`` seconds: while it is closed, a delegation needs no
database read to pass the gate, and a success with no failures to forget needs no write.
An OPEN breaker's rejection is cached too, for ``ttl`` and never past the moment it may
admit a trial: a dispatch it rejects costs no read either. Every transition this process
makes invalidates the entry; transitions made by other workers (a reset, a healthy probe)
are seen within ``ttl``. HALF_OPEN always goes to the database, so trial admissions stay
exact.

Keys are identities (orchestration.agents.identity), as in BreakerStore.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from orchestration.resilience.breaker import CLOSED, OPEN, BreakerSnapshot
from orchestration.spec import BreakerPolicy
from orchestration.store.breakers import Admission, BreakerStore
from orchestration.store.repository import now


class CachedBreakers:
    def __init__(self, breakers: BreakerStore, ttl: float) -> None:
        self.store = breakers
        self.ttl = ttl
        self._closed: dict[str, tuple[float, BreakerSnapshot]] = {}
        self._open: dict[str, tuple[float, Admission]] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str) -> BreakerSnapshot | None:
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._closed.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def _remember(self, key: str, snapshot: BreakerSnapshot) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._closed[key] = (time.monotonic(), snapshot)

    def forget(self, key: str) -> None:
        with self._lock:
            self._closed.pop(key, None)
            self._open.pop(key, None)

    def admit(self, key: str, policy: BreakerPolicy) -> Admission:
        if self._cached(key) is not None:
            return Admission(allowed=True)
        rejection = self._cached_rejection(key)
        if rejection is not None:
            return rejection
        admission = self.store.admit(key, policy)
        if admission.closed is not None:
            self._remember(key, admission.closed)
        elif not admission.allowed:
            self._remember_rejection(key, admission)
        return admission

    def peek(self, key: str) -> Admission:
        """Would a call be admitted, without claiming a half-open trial? Allowed (closed,
        or ``trial``: one is due, and ``admit`` claims it), or the rejection. Routing
        among an agent's endpoints asks each this before choosing one."""
        if self._cached(key) is not None:
            return Admission(allowed=True)
        rejection = self._cached_rejection(key)
        if rejection is not None:
            return rejection
        view = self.store.get(key)
        if view is None or view.snapshot.state == CLOSED:
            self._remember(key, view.snapshot if view is not None else BreakerSnapshot())
            return Admission(allowed=True)
        trial_at = view.snapshot.next_trial_at
        if view.snapshot.state == OPEN and trial_at is not None and now() < trial_at:
            admission = Admission.open_until(key, trial_at)
            self._remember_rejection(key, admission)
            return admission
        return Admission(allowed=True, trial=True, state=view.snapshot.state)

    def _remember_rejection(self, key: str, admission: Admission) -> None:
        if self.ttl <= 0 or admission.retry_at is None:
            return
        # Never past the moment the breaker may admit a trial: then it must be asked.
        wall_left = (admission.retry_at - now()).total_seconds()
        until = time.monotonic() + min(self.ttl, wall_left)
        with self._lock:
            self._open[key] = (until, admission)

    def _cached_rejection(self, key: str) -> Admission | None:
        with self._lock:
            entry = self._open.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return entry[1]

    def record_call(
        self,
        key: str,
        policy: BreakerPolicy,
        *,
        failed: bool,
        trial: bool,
        error: str | None = None,
        at: datetime | None = None,
    ) -> str:
        cached = self._cached(key)
        quiet = (
            cached is not None
            and not failed
            and not trial
            and cached.consecutive_failures == 0
            and policy.failure_rate is None
        )
        if quiet:
            return CLOSED  # a success on a clean closed breaker changes nothing
        self.forget(key)
        state = self.store.record_call(key, policy, failed=failed, trial=trial, error=error, at=at)
        if state == CLOSED and not failed and policy.failure_rate is None:
            # Right after a success is recorded, the breaker is closed with no failures
            # in a row: the successes that follow within the TTL change nothing. (A burst
            # of slow calls admitted together ends together, long after their admissions
            # refreshed the cache: without this, each of them wrote.)
            self._remember(key, BreakerSnapshot())
        return state
