"""Run one agent attempt under its time limit, its heartbeat timeout and its lease.

Celery's soft time limits need signals and a prefork pool; Troupe's limits hold in any
worker. In the main thread of a process (a prefork pool process) the call runs right
there and a SIGALRM timer cuts it off (``alarm_call``); in any other thread (the
embedded worker's) it runs in a helper thread that is abandoned at its limit
(``helper_threads``). A coroutine already running on the shared event loop is waited
for where it is (``wait_with_time_limit``), and cancelled at its limit. Either way,
while it runs, the attempt's start marker is written and its lease renewed, so that a
redelivered copy of the message can tell this live attempt from one whose worker died
(``call_watch``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from orchestration.resilience import alarm_call
from orchestration.resilience.call_watch import CallWatch, HeartbeatMonitor
from orchestration.resilience.helper_threads import call_in_helper

__all__ = ["CallWatch", "HeartbeatMonitor", "call_with_time_limit", "wait_with_time_limit"]

T = TypeVar("T")


def wait_with_time_limit(future: Future[T], watch: CallWatch) -> T:
    """The result of a call already running elsewhere (a coroutine on the shared event
    loop), waited for here under ``watch``; cancelled if the watch ends it."""
    try:
        while True:
            try:
                return future.result(timeout=watch.due_in())
            except FutureTimeout:
                watch.check()
    except BaseException:
        future.cancel()
        raise


def call_with_time_limit(function: Callable[[], T], limit: float | CallWatch) -> T:
    """``function()``, cut off after ``limit`` seconds (``AttemptTimeout``); a
    ``CallWatch`` adds a heartbeat timeout, the start marker and lease renewals."""
    watch = limit if isinstance(limit, CallWatch) else CallWatch(limit)
    if alarm_call.usable():
        return alarm_call.call_with_alarm(function, watch)
    return call_in_helper(function, watch)
