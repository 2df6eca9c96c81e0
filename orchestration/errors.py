"""One root exception with subtrees, so callers can catch as broadly as they mean to."""

from __future__ import annotations


class TroupeError(Exception):
    """Root of every error Troupe raises on purpose."""


# --- team files -------------------------------------------------------------------------


class TeamFileError(TroupeError):
    """A team file cannot be used. ``str()`` is one line naming file, field and problem."""

    # Whatever the file holds, the line stays short: a field path keeps its two ends.
    FIELD_CHARS = 60
    PROBLEM_CHARS = 240

    def __init__(self, source: str, field: str | None, problem: str) -> None:
        self.source = source
        self.field = _clip(field, self.FIELD_CHARS, middle=True) if field else field
        self.problem = _clip(problem, self.PROBLEM_CHARS)
        where = f"{source}: {self.field}" if self.field else source
        super().__init__(f"{where}: {self.problem}")


def _clip(text: str, limit: int, *, middle: bool = False) -> str:
    line = " ".join(text.splitlines())
    if len(line) <= limit:
        return line
    if middle:
        half = (limit - 1) // 2
        return f"{line[:half]}…{line[len(line) - (limit - 1 - half) :]}"
    return line[: limit - 1] + "…"


# --- executions -------------------------------------------------------------------------


class ExecutionError(TroupeError):
    """Something about an execution as a whole."""


class ExecutionNotFound(ExecutionError):
    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"no execution with id {execution_id!r}")


class WaitTimeout(ExecutionError):
    def __init__(self, execution_id: str, seconds: float) -> None:
        self.execution_id = execution_id
        self.seconds = seconds
        super().__init__(f"execution {execution_id} did not finish within {seconds:g}s")


class NoWorkerError(ExecutionError):
    """Distributed mode, and no worker answers on the broker."""


class BrokerUnavailable(NoWorkerError):
    """Distributed mode, and the broker itself does not answer: no worker can."""


class ApprovalRefused(ExecutionError):
    """A decision on a step's approval was not recorded: the step does not wait for one
    (decided already, not reached yet, no approval), or the decider is not an approver."""


class StepNotFound(ExecutionError):
    def __init__(self, execution_id: str, step_id: str) -> None:
        self.execution_id = execution_id
        self.step_id = step_id
        super().__init__(f"execution {execution_id} has no step {step_id!r}")


class ExecutionFailed(ExecutionError):
    """A team run as a Celery signature (``Team.s``) failed or was cancelled: its task
    ends with this error, so a chain stops there and its error callbacks run. One
    message argument, so that Celery rebuilds it from JSON where the result is read."""


class DelegationFailed(TroupeError):
    """Raised by a delegation's Celery task once its attempt's failure or refusal is
    recorded, so that the task ends in Celery's FAILURE state (Flower shows it with this
    message). It is never retried: the retry policy already ran."""


# --- agents -----------------------------------------------------------------------------


class AgentError(TroupeError):
    """Raised by or about an agent call."""


class PermanentAgentError(AgentError):
    """Raise this from an agent to fail the step at once: retrying cannot help."""


class TransientAgentError(AgentError):
    """Raise this from an agent to ask for a retry under its policy.

    ``retry_after`` (seconds) is honoured as the shortest wait, like HTTP's Retry-After.
    """

    def __init__(self, message: str = "", retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class AttemptTimeout(AgentError):
    """An attempt ran past its agent's time limit and was cut off."""

    def __init__(self, seconds: float, message: str | None = None) -> None:
        self.seconds = seconds
        super().__init__(message or f"attempt exceeded its time limit of {seconds:g}s")


class HeartbeatTimeout(AttemptTimeout):
    """A long-running agent stopped reporting progress (call.heartbeat)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds, f"agent sent no heartbeat for {seconds:g}s")


class AgentExited(AgentError):
    """The agent's code raised SystemExit or KeyboardInterrupt: that attempt failed (and
    may be retried), the worker process carries on."""


class CircuitOpen(AgentError):
    """The agent's breaker is open: the call was not made."""


class DeadlineExceeded(AgentError):
    """The step's deadline passed before it could succeed."""


class WorkerLost(AgentError):
    """The step's attempts kept ending with their worker process: none is left."""


class ForEachError(AgentError):
    """A map step's ``for_each`` did not give a list."""


class ApprovalRejected(AgentError):
    """The step's approval was rejected (by a person, or by its timeout): its agent was
    not called."""


class InternalError(TroupeError):
    """Troupe itself failed while deciding or recording a step (not the agent)."""


class AgentLoadError(AgentError):
    """An agent's target cannot be imported or is not callable."""


class BudgetExceeded(PermanentAgentError):
    """A call did not fit in what is left of its execution's budget: it was not made."""


class AgentProtocolError(PermanentAgentError):
    """A remote agent or model answered with something Troupe cannot use (not JSON, no
    choices, a reply that breaks its output schema after every repair)."""


class SecretMissing(PermanentAgentError):
    """An environment variable an agent's key or header names is not set in the worker."""


class HandoffRefused(PermanentAgentError):
    """An agent asked to hand its step off where it may not go: a loop, past the
    team's max_handoff_depth, or to an agent the team does not have."""


class AskFailed(PermanentAgentError):
    """An agent asked another (``call.ask``), which did not answer: its step failed."""


class InvalidTeamWrite(PermanentAgentError):
    """A shared-memory write or a message an agent cannot make: a key or recipient that
    is not one, a value that is not JSON, or one its key's rule cannot take."""


class CapacityUnavailable(AgentError):
    """The step waited for capacity (its agent's limits, its endpoints, its key's
    executions) and its deadline would pass before any is expected: it was not called."""


class LimitsUnavailable(PermanentAgentError):
    """The agent declares endpoints or limits, which are counted in Redis, and the
    deployment has none (its broker is not Redis and TROUPE_REDIS_URL is not set)."""
