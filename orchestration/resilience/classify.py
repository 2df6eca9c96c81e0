"""Which failures are worth retrying.

Transient: time-outs, connection errors, HTTP 408/429/5xx, TransientAgentError (with its
Retry-After), and by default anything unexpected. Permanent: PermanentAgentError, an agent
that cannot be loaded, validation errors, other HTTP 4xx. A policy's ``retry_on`` and
``no_retry_on`` name extra classes either way (plain or dotted names, matched on the MRO).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.constants import OUTCOME_ERROR, OUTCOME_TIMEOUT
from orchestration.errors import (
    AgentLoadError,
    AttemptTimeout,
    PermanentAgentError,
    TransientAgentError,
)
from orchestration.spec import RetryPolicy

_PERMANENT_NAMES = frozenset({"ValidationError", "pydantic_core._pydantic_core.ValidationError"})


@dataclass(frozen=True)
class Failure:
    type: str
    message: str
    outcome: str
    transient: bool
    retry_after: float | None = None
    # Counts against the agent's breaker (a bad request says nothing about its health).
    breaker_failure: bool = True


def _names(exc: BaseException) -> set[str]:
    names: set[str] = set()
    for cls in type(exc).__mro__:
        names.add(cls.__name__)
        names.add(f"{cls.__module__}.{cls.__qualname__}")
    return names


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    if isinstance(exc, TransientAgentError):
        return exc.retry_after
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare for agents; fall back to our own backoff


def classify(exc: BaseException, policy: RetryPolicy) -> Failure:
    names = _names(exc)
    message = (str(exc).strip() or type(exc).__name__)[:2000]
    timeout = isinstance(exc, AttemptTimeout | TimeoutError)
    outcome = OUTCOME_TIMEOUT if timeout else OUTCOME_ERROR
    status = _http_status(exc)
    if names & set(policy.no_retry_on):
        transient = False
    elif names & set(policy.retry_on):
        transient = True
    elif isinstance(exc, PermanentAgentError | AgentLoadError) or names & _PERMANENT_NAMES:
        transient = False
    elif status is not None:
        transient = status in (408, 429) or status >= 500
    else:
        transient = True
    breaker_failure = transient and not isinstance(exc, PermanentAgentError)
    return Failure(
        type=type(exc).__name__,
        message=message,
        outcome=outcome,
        transient=transient,
        retry_after=_retry_after(exc),
        breaker_failure=breaker_failure,
    )
