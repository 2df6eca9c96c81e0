"""Run one agent attempt under its time limit, its heartbeat timeout and its lease.

Celery's soft time limits need signals and so only work in prefork children; an agent in
the embedded (threads) worker would hang forever. The call runs in a helper thread that is
abandoned at its limit: Python cannot kill a thread, but the attempt is recorded as timed
out and the delegation moves on. While it runs, the lease is renewed so that a redelivered
copy of the message can tell this live attempt from one whose worker died.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from orchestration.errors import AttemptTimeout, HeartbeatTimeout

T = TypeVar("T")


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


class _HelperThreads:
    """Threads that run agent calls, kept for reuse: starting a thread costs ~0.7 ms,
    more than Troupe's whole bookkeeping of a fast delegation. A helper whose call
    outlived its limit is simply not idle until that call returns; a new one is started
    meanwhile."""

    def __init__(self) -> None:
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]] = []
        self._lock = threading.Lock()
        # A forked worker process inherits the list but not the threads behind it.
        os.register_at_fork(after_in_child=self._idle.clear)

    def submit(self, function: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(inbox,), name="troupe-agent-call", daemon=True
            ).start()
        inbox.put((function, future))
        return future

    def _serve(self, inbox: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            function, future = inbox.get()
            try:
                value = function()
            except BaseException as exc:
                with self._lock:
                    self._idle.append(inbox)
                future.set_exception(exc)
            else:
                with self._lock:
                    self._idle.append(inbox)
                future.set_result(value)
            del function, future


_helpers = _HelperThreads()


def call_with_time_limit(
    function: Callable[[], T],
    seconds: float,
    *,
    heartbeat_timeout: float | None = None,
    monitor: HeartbeatMonitor | None = None,
    renew_lease: Callable[[Any], None] | None = None,
    lease_interval: float = 5.0,
    still_running: Callable[[], None] | None = None,
    still_running_after: float = 0.0,
) -> T:
    """``function()`` in a helper thread, cut off after ``seconds``.

    ``still_running`` is called once, from this thread, if the call has not returned
    after ``still_running_after`` seconds (Troupe writes the attempt's start marker
    then, so fast calls are recorded once, at their end); whatever it raises ends the
    wait. ``renew_lease`` is called every ``lease_interval`` after that.
    """
    started = time.monotonic()
    future = _helpers.submit(function)
    watch = monitor if heartbeat_timeout is not None else None
    marker_due = still_running is not None
    while True:
        elapsed = time.monotonic() - started
        step = min(seconds - elapsed, lease_interval)
        if marker_due:
            step = min(step, still_running_after - elapsed)
        if watch is not None and heartbeat_timeout is not None:
            step = min(step, max(0.01, heartbeat_timeout - watch.silence()))
        try:
            return future.result(timeout=max(0.0, step))
        except FutureTimeout:
            pass
        if time.monotonic() - started >= seconds:
            raise AttemptTimeout(seconds)
        if (
            watch is not None
            and heartbeat_timeout is not None
            and watch.silence() >= heartbeat_timeout
        ):
            raise HeartbeatTimeout(heartbeat_timeout)
        if marker_due:
            if time.monotonic() - started >= still_running_after:
                marker_due = False
                assert still_running is not None
                still_running()
            continue
        if renew_lease is not None:
            renew_lease(monitor.details if monitor else None)
