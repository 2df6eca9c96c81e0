"""A handle on one execution: its status, waiting for it, cancelling it."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestration.errors import WaitTimeout
from orchestration.report import ExecutionReport, build_report
from orchestration.store.repository import Store

ProgressCallback = Callable[[ExecutionReport], None]


class ExecutionHandle:
    def __init__(self, execution_id: str, store: Store, poll_interval: float = 0.1) -> None:
        self.execution_id = execution_id
        self._store = store
        self._poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.execution_id!r})"

    def report(self) -> ExecutionReport:
        return build_report(
            self._store.execution(self.execution_id), self._store.steps(self.execution_id)
        )

    def status(self) -> str:
        return self._store.execution_status(self.execution_id)

    def wait(
        self, timeout: float | None = None, on_progress: ProgressCallback | None = None
    ) -> ExecutionReport:
        """Block until the execution finishes; raise WaitTimeout after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            report = self.report()
            if on_progress is not None:
                on_progress(report)
            if report.finished:
                return report
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(self.execution_id, timeout or 0.0)
            time.sleep(self._poll_interval)

    def result(self, timeout: float | None = None) -> object:
        """Wait and return the execution's output."""
        return self.wait(timeout).output

    def cancel(self, reason: str = "cancelled by user") -> bool:
        """Record the cancellation first, so no later delegation calls its agent."""
        return self._store.cancel_execution(self.execution_id, reason)
