"""One event loop per process, in a thread of its own, that runs every ``async def``
agent of the process.

``asyncio.run`` per call made a new loop for each one: a fifth of a busy worker's CPU
with 1,000 async agents in flight, and no loop outlived its call, so nothing bound to a
loop (a pooled HTTP client) could be kept. Here the caller's thread waits on the
coroutine's future; if the wait is cut off (the time limit's interrupt lands in it), the
coroutine is cancelled on the loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class SharedLoop:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        # A forked process inherits the loop object but not the thread running it.
        os.register_at_fork(after_in_child=self._forget)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """The coroutine, scheduled on the shared loop; cancelling the future cancels it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """The coroutine's result, computed on the shared loop; this thread waits."""
        future = self.submit(coroutine)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="troupe-async-agents", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def _forget(self) -> None:
        self._loop = None
        self._lock = threading.Lock()


shared_loop = SharedLoop()
