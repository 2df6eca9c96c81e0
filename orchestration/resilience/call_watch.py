"""What falls due while one agent call runs: its time limit, its heartbeat timeout, the
attempt's start marker and the renewals of its lease.

Both ways of running a call (``helper_threads`` and ``alarm_call``) ask a watch when to
look next (``due_in``) and let it act then (``check``): it raises what ends the call, or
does the bookkeeping that is due.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from orchestration.errors import AttemptTimeout, HeartbeatTimeout


class HeartbeatMonitor:
    """Where an agent's ``call.heartbeat(details)`` lands."""

    def __init__(self) -> None:
        self.last_beat = time.monotonic()
        self.details: Any = None
        self._lock = threading.Lock()

    def beat(self, details: Any = None) -> None:
        with self._lock:
            self.last_beat = time.monotonic()
            self.details = details

    def silence(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_beat


class CallWatch:
    """``still_running`` is called once if the call has not returned after
    ``still_running_after`` seconds (Troupe writes the attempt's start marker then, so
    fast calls are recorded once, at their end); ``renew_lease`` every ``lease_interval``
    after that (from the start without a marker). Whatever either raises ends the call."""

    def __init__(
        self,
        seconds: float,
        *,
        heartbeat_timeout: float | None = None,
        monitor: HeartbeatMonitor | None = None,
        renew_lease: Callable[[Any], None] | None = None,
        lease_interval: float = 5.0,
        still_running: Callable[[], None] | None = None,
        still_running_after: float = 0.0,
    ) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self._monitor = monitor
        self._heartbeat_timeout = heartbeat_timeout if monitor is not None else None
        self._renew_lease = renew_lease
        self._lease_interval = lease_interval
        self._still_running = still_running
        if still_running is not None:
            self._next_duty = self.started + still_running_after
        elif renew_lease is not None:
            self._next_duty = self.started + lease_interval
        else:
            self._next_duty = math.inf

    def due_in(self) -> float:
        """Seconds until ``check`` has something to do."""
        now = time.monotonic()
        due = min(self.deadline, self._next_duty)
        if self._heartbeat_timeout is not None and self._monitor is not None:
            due = min(due, now + max(0.01, self._heartbeat_timeout - self._monitor.silence()))
        return max(0.0, due - now)

    def check(self) -> None:
        """Raise what ends the call (its limit, a silent heartbeat); else do what is due."""
        now = time.monotonic()
        if now >= self.deadline:
            raise AttemptTimeout(self.seconds)
        if (
            self._heartbeat_timeout is not None
            and self._monitor is not None
            and self._monitor.silence() >= self._heartbeat_timeout
        ):
            raise HeartbeatTimeout(self._heartbeat_timeout)
        if now < self._next_duty:
            return
        still_running, self._still_running = self._still_running, None
        renew = self._renew_lease
        self._next_duty = now + self._lease_interval if renew is not None else math.inf
        if still_running is not None:
            still_running()
        elif renew is not None:
            renew(self._monitor.details if self._monitor else None)
