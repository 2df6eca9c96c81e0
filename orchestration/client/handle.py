"""A handle on one execution: its status, its context and messages, waiting for it,
cancelling it."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestration.client.context import (
    ContextReport,
    MemoryWriteReport,
    MessageReport,
    memory_history,
    messages,
    read_context,
)
from orchestration.client.report import (
    AttemptReport,
    ExecutionReport,
    attempt_reports,
    build_report,
)
from orchestration.constants import EXECUTION_FINAL
from orchestration.errors import WaitTimeout
from orchestration.store.executions import ExecutionRecords
from orchestration.store.memory import MemoryRecords

ProgressCallback = Callable[[ExecutionReport], None]


Revoker = Callable[[list[str]], None]


class ExecutionHandle:
    def __init__(
        self,
        execution_id: str,
        store: ExecutionRecords,
        poll_interval: float = 0.1,
        revoke: Revoker | None = None,
        *,
        memory: MemoryRecords,
    ) -> None:
        self.execution_id = execution_id
        self._store = store
        self._memory = memory
        self._poll_interval = poll_interval
        self._revoke = revoke

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.execution_id!r})"

    def report(self, *, usage: bool = True) -> ExecutionReport:
        """The execution as it stands. ``usage=False`` leaves out tokens and cost (a
        read of every attempt), as a progress display polling it does."""
        return build_report(
            self._store.execution(self.execution_id),
            self._store.steps(self.execution_id),
            self._store.usage(self.execution_id) if usage else None,
        )

    def attempts(self) -> list[AttemptReport]:
        """The audit trail: every attempt of every step, in the order they began, with
        its outcome, usage and tool calls."""
        return attempt_reports(self._store.attempts(self.execution_id))

    def context(self, at: str | None = None) -> ContextReport:
        """The input, the outputs of finished steps and the shared memory, now; or, with
        ``at`` (a step id), as that step's last attempt saw them: the memory at the
        version it read and the outputs it could see. StepNotFound for an unknown step."""
        return read_context(self._store, self._memory, self.execution_id, at)

    def memory_history(self, key: str) -> list[MemoryWriteReport]:
        """Every write of a shared-memory key: version, writer, time, rule, the value
        after it and the one it replaced."""
        return memory_history(self._memory, self.execution_id, key)

    def messages(self) -> list[MessageReport]:
        """Every message the execution's agents sent (delivered: their attempts
        succeeded), oldest first."""
        return messages(self._memory, self.execution_id)

    def status(self) -> str:
        return self._store.execution_status(self.execution_id)

    def wait(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> ExecutionReport:
        """Block until the execution finishes; raise WaitTimeout after ``timeout`` seconds.

        Without a progress callback only the status is polled, starting at 2 ms and
        backing off to the poll interval: short runs are seen at once, long ones cost
        one small query per interval, whatever their size.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002 if on_progress is None else self._poll_interval
        while True:
            if on_progress is not None:
                report = self.report(usage=False)
                on_progress(report)
                if report.finished:
                    return self.report()
            elif self._store.execution_status(self.execution_id) in EXECUTION_FINAL:
                return self.report()
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(self.execution_id, timeout or 0.0)
            time.sleep(
                pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
            )
            pause = min(self._poll_interval, pause * 1.5)

    def result(self, timeout: float | None = None) -> object:
        """Wait and return the execution's output."""
        return self.wait(timeout).output

    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Cancel durably: record it first, so every later delegation sees it before calling
        its agent (even on a worker restarted later), then revoke what is queued.
        False if the execution had already finished."""
        if not self._store.cancel_execution(self.execution_id, reason):
            return False
        if self._revoke is not None:
            task_ids = self._store.pending_task_ids(self.execution_id)
            if task_ids:
                self._revoke(task_ids)
        return True
