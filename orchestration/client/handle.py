"""A handle on one execution: its status, its context and messages, waiting for it,
deciding its approvals, cancelling it."""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from typing import Protocol

from orchestration.client.context import (
    ContextReport,
    MemoryWriteReport,
    MessageReport,
    memory_history,
    messages,
    read_context,
)
from orchestration.client.report import (
    ApprovalReport,
    AttemptReport,
    ExecutionReport,
    approval_report,
    attempt_reports,
    build_report,
)
from orchestration.constants import EXECUTION_FINAL
from orchestration.engine import approvals
from orchestration.errors import ApprovalRefused, ExecutionError, WaitTimeout
from orchestration.store.executions import ExecutionRecords
from orchestration.store.memory import MemoryRecords

ProgressCallback = Callable[[ExecutionReport], None]


Revoker = Callable[[list[str]], None]


class StepSender(Protocol):
    """Sends a step's delegation to the workers (the runtime does)."""

    def cannot_send_steps(self) -> str | None:
        """Why a step sent from this process would reach no worker, if so."""
        ...

    def send_step(self, execution_id: str, step_id: str, agent: str, attempt: int) -> None: ...


class ExecutionHandle:
    def __init__(
        self,
        execution_id: str,
        store: ExecutionRecords,
        poll_interval: float = 0.1,
        revoke: Revoker | None = None,
        sender: StepSender | None = None,
        *,
        memory: MemoryRecords,
    ) -> None:
        self.execution_id = execution_id
        self._store = store
        self._memory = memory
        self._poll_interval = poll_interval
        self._revoke = revoke
        self._sender = sender

    def __repr__(self) -> str:
        return f"ExecutionHandle({self.execution_id!r})"

    def report(self, *, usage: bool = True) -> ExecutionReport:
        """The execution as it stands. ``usage=False`` leaves out tokens and cost (a
        read of every attempt) and handoffs, as a progress display polling it does."""
        return build_report(
            self._store.execution(self.execution_id),
            self._store.steps(self.execution_id),
            self._store.usage(self.execution_id) if usage else None,
            self._store.handoffs(self.execution_id) if usage else None,
            self._store.approvals.of_execution(self.execution_id),
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

    def approve(
        self,
        step: str,
        *,
        reject: bool = False,
        comment: str | None = None,
        by: str | None = None,
    ) -> ApprovalReport:
        """Decide the approval ``step`` waits for, then send the step on: approved, its
        agent is called (a gate without an agent completes, its output the decision);
        rejected, it fails with ``ApprovalRejected`` and what depends on it is skipped.

        ``by`` (default: the operating-system user) is recorded with the decision, its
        time and ``comment``; if the step lists ``approvers``, it must be one of them.
        Raises ``ApprovalRefused`` (nothing recorded) if the step is not waiting for
        approval (decided already, not reached yet, or it has none) or ``by`` may not
        decide it. In embedded mode, only the process that runs the execution can send
        the step on, so only it can decide."""
        who = by if by is not None else _os_user()
        spec = approvals.approval_of(self._store.execution(self.execution_id).spec, step)
        if spec is None:
            raise ApprovalRefused(f"step {step!r} of execution {self.execution_id} has no approval")
        problem = approvals.check_decision(spec, who, comment)
        if problem is None and self._sender is None:
            problem = "this handle cannot send steps to a worker"
        if problem is None and self._sender is not None:
            problem = self._sender.cannot_send_steps()
        if problem is not None:
            raise ApprovalRefused(problem)
        records = self._store.approvals
        decision = approvals.REJECTED if reject else approvals.APPROVED
        decided = records.decide(self.execution_id, step, decision, who, comment)
        if decided is None:
            raise ApprovalRefused(
                approvals.not_waiting(
                    step,
                    records.step_status(self.execution_id, step),
                    records.get(self.execution_id, step),
                )
            )
        assert self._sender is not None
        try:
            self._sender.send_step(self.execution_id, step, decided.agent, decided.attempts + 1)
        except Exception as exc:
            raise ExecutionError(
                f"step {step!r} was {decision}, but could not be sent on ({exc}); a "
                "worker's stall check resumes it (TROUPE_STALL_TIMEOUT)"
            ) from exc
        return approval_report(decided.approval, spec)

    def cancel(self, reason: str = "cancelled by user", *, abandon_running: bool = False) -> bool:
        """Cancel durably: record it first, so every later delegation sees it before calling
        its agent (even on a worker restarted later), then revoke what is queued.
        False if the execution had already finished.

        A step already running goes on, and its result is kept. With ``abandon_running``
        (for a caller whose embedded worker stops with it) it is cancelled too, and a
        result that still comes changes only its attempt's audit row."""
        if not self._store.cancel_execution(
            self.execution_id, reason, abandon_running=abandon_running
        ):
            return False
        if self._revoke is not None:
            task_ids = self._store.pending_task_ids(self.execution_id)
            if task_ids:
                self._revoke(task_ids)
        return True


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name, and no entry in the password database
        return "unknown"
