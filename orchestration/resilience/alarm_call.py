"""Run an agent call in the calling main thread, cut off by SIGALRM.

A prefork pool process runs each task in its main thread, where signals land. There the
call needs no helper thread: handing every call to one and waiting for it cost two
thread switches per delegation (0.15 ms of CPU unloaded, more under load, 6% of a busy
pool process's time). A timer (``setitimer``) fires when the first duty falls due:

- at the time limit, the handler raises into the agent's code and the call ends there,
  as Celery's own soft time limit does in the same processes; an agent that swallows
  it gets it again every ``_AGAIN`` seconds, and a call that returns past its limit
  counts as timed out anyway;
- earlier, for a call still running after ``lease_after`` (50 ms), the handler hands the
  call's bookkeeping (start marker, lease renewals, heartbeat checks) to one watchdog
  thread. Those writes never run inside a signal handler, which could interrupt code
  holding the very locks they need. What ends the call from there (a silent
  heartbeat, another copy holding the attempt) reaches the main thread as a signal too,
  sent again every 10 ms until the call ends: a signal that lands just before a system
  call begins does not cut that call short.

A call that returns before its first duty, the usual delegation, costs two
``setitimer`` calls. The helper thread remains the way for every other thread, and for
a process where something else owns SIGALRM or the real-time timer.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from orchestration.resilience.call_watch import CallWatch

T = TypeVar("T")

# The timer repeats this often once due, until re-armed or disarmed: an agent that caught
# the interrupt gets it again, and a signal that was lost (it landed just before a system
# call began, so did not cut it short) is sent again.
_AGAIN = 0.05
# How often the watchdog re-sends an interrupt until the call ends.
_RESEND = 0.01
# setitimer(…, 0) disarms the timer: a duty due now is armed this far ahead instead.
_SOON = 1e-6


class _Interrupt(BaseException):
    """Raised into the agent's code to end its call. Not an Exception, so that an
    agent's ``except Exception`` does not swallow it; ``reason`` is what the caller
    gets."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(reason)
        self.reason = reason


class _Call:
    def __init__(self, watch: CallWatch) -> None:
        self.watch = watch
        # True while the agent's code runs: the handler interrupts nothing else.
        self.running = True
        self.reason: BaseException | None = None
        self.handed_over = False
        # Held by the watchdog while it acts for this call, so that the main thread
        # records nothing until a start marker being written has been written.
        self.lock = threading.Lock()
        self.ended = threading.Event()

    def on_alarm(self) -> None:
        if self.reason is None and time.monotonic() >= self.watch.deadline:
            try:
                self.watch.check()
            except BaseException as reason:
                self.reason = reason
        if self.reason is not None:
            signal.setitimer(signal.ITIMER_REAL, _AGAIN, _AGAIN)
            raise _Interrupt(self.reason)
        if not self.handed_over:
            self.handed_over = True
            _watchdog.put(self)  # SimpleQueue.put is safe in a signal handler
        remaining = self.watch.deadline - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(_SOON, remaining), _AGAIN)


_current: _Call | None = None


def _on_alarm(signum: int, frame: object) -> None:
    call = _current
    if call is not None and call.running:
        call.on_alarm()


def usable() -> bool:
    """Whether this thread can run a call here: the main thread of a process whose
    SIGALRM and real-time timer nobody else uses, not already inside such a call."""
    if not hasattr(signal, "setitimer") or _current is not None:
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, _on_alarm):
        return False
    return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def call_with_alarm(function: Callable[[], T], watch: CallWatch) -> T:
    """``function()`` here, in the main thread, under ``watch``. Check ``usable()`` first."""
    global _current
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    _watchdog.start()
    call = _current = _Call(watch)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(_SOON, watch.due_in()), _AGAIN)
        try:
            value = function()
        finally:
            # First, before anything can be interrupted again: the handler does nothing
            # once this is False.
            call.running = False
    except BaseException as error:
        # Ours, or what the agent made of ours: the call ended for our reason.
        if call.reason is not None:
            raise call.reason from (None if isinstance(error, _Interrupt) else error)
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _current = None
        if call.handed_over:
            with call.lock:
                call.ended.set()
    if call.reason is not None:  # the agent swallowed the interrupt and returned
        raise call.reason
    return value


class _Watchdog:
    """One thread per process that does the bookkeeping of calls still running after
    their first duty (at most one at a time: the main thread runs one call)."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        # A forked process inherits neither the thread nor anything to watch.
        self._inbox = queue.SimpleQueue()
        self._thread = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="troupe-call-watchdog", daemon=True
                )
                self._thread.start()

    def put(self, call: _Call) -> None:
        self._inbox.put(call)

    def _serve(self) -> None:
        # The timer's signals are for the main thread: none must land here.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        while True:
            self._watch(self._inbox.get())

    @staticmethod
    def _watch(call: _Call) -> None:
        while not call.ended.wait(call.watch.due_in()):
            with call.lock:
                if not call.running:
                    return
                try:
                    call.watch.check()
                except BaseException as reason:
                    call.reason = reason
                    break
        else:
            return
        # A signal that lands while the main thread is between two system calls (or in
        # the handler) does not cut the next one short: send it until the call ends.
        main = threading.main_thread().ident
        while main is not None and call.running:
            signal.pthread_kill(main, signal.SIGALRM)
            if call.ended.wait(_RESEND):
                return


_watchdog = _Watchdog()
