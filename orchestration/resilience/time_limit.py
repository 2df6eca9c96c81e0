"""Run one agent attempt under its time limit, its heartbeat timeout and its lease.

Celery's soft time limits need signals and a prefork pool; Troupe's limits hold in any
worker. In the main thread of a process (a prefork pool process) the call runs right
there and a SIGALRM timer cuts it off (``alarm_call``); in any other thread (the
embedded worker's) it runs in a helper thread that is abandoned at its limit
(``helper_threads``). Either way, while it runs, the attempt's start marker is written
and its lease renewed, so that a redelivered copy of the message can tell this live
attempt from one whose worker died (``call_watch``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from orchestration.resilience import alarm_call
from orchestration.resilience.call_watch import CallWatch, HeartbeatMonitor
from orchestration.resilience.helper_threads import call_in_helper

__all__ = ["HeartbeatMonitor", "call_with_time_limit"]

T = TypeVar("T")


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
    """``function()``, cut off after ``seconds`` (``AttemptTimeout``) or after
    ``heartbeat_timeout`` without a beat on ``monitor`` (``HeartbeatTimeout``).

    ``still_running`` is called once if the call has not returned after
    ``still_running_after`` seconds (Troupe writes the attempt's start marker then, so
    fast calls are recorded once, at their end); ``renew_lease`` every
    ``lease_interval`` after that. Whatever either raises ends the call.
    """
    watch = CallWatch(
        seconds,
        heartbeat_timeout=heartbeat_timeout,
        monitor=monitor,
        renew_lease=renew_lease,
        lease_interval=lease_interval,
        still_running=still_running,
        still_running_after=still_running_after,
    )
    if alarm_call.usable():
        return alarm_call.call_with_alarm(function, watch)
    return call_in_helper(function, watch)
