"""Run an agent call in a helper thread while the calling thread watches it.

The way for any thread that cannot take signals (the embedded worker's threads, a
caller's own threads). Python cannot kill a thread: a call past its limit is abandoned,
recorded as timed out, and runs on unobserved until it returns.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from orchestration.resilience.call_watch import CallWatch

T = TypeVar("T")


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


def call_in_helper(function: Callable[[], T], watch: CallWatch) -> T:
    """``function()`` in a helper thread; this thread waits and does what ``watch`` says."""
    future = _helpers.submit(function)
    while True:
        try:
            return future.result(timeout=watch.due_in())
        except FutureTimeout:
            watch.check()
