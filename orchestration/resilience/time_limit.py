"""Run one agent attempt under its time limit, its heartbeat timeout and its lease.

Celery's soft time limits need signals and so only work in prefork children; an agent in
the embedded (threads) worker would hang forever. The call runs in a helper thread that is
abandoned at its limit: Python cannot kill a thread, but the attempt is recorded as timed
out and the delegation moves on. While it runs, the lease is renewed so that a redelivered
copy of the message can tell this live attempt from one whose worker died.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


def call_with_time_limit(
    function: Callable[[], T],
    seconds: float,
    *,
    heartbeat_timeout: float | None = None,
    monitor: HeartbeatMonitor | None = None,
    renew_lease: Callable[[Any], None] | None = None,
    lease_interval: float = 5.0,
) -> T:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, name="troupe-agent-call", daemon=True)
    thread.start()
    watch = monitor if heartbeat_timeout is not None else None
    while True:
        remaining = seconds - (time.monotonic() - started)
        step = min(remaining, lease_interval)
        if watch is not None and heartbeat_timeout is not None:
            step = min(step, max(0.01, heartbeat_timeout - watch.silence()))
        thread.join(max(0.0, step))
        if not thread.is_alive():
            break
        if time.monotonic() - started >= seconds:
            raise AttemptTimeout(seconds)
        if (
            watch is not None
            and heartbeat_timeout is not None
            and watch.silence() >= heartbeat_timeout
        ):
            raise HeartbeatTimeout(heartbeat_timeout)
        if renew_lease is not None:
            renew_lease(monitor.details if monitor else None)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
