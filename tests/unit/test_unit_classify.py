"""classify(): which failures are retried, how they are recorded, what feeds the breaker."""

from __future__ import annotations

from typing import Any

import httpx
import pydantic
import pytest

from orchestration.errors import (
    AgentLoadError,
    AttemptTimeout,
    HeartbeatTimeout,
    PermanentAgentError,
    TransientAgentError,
)
from orchestration.resilience.classify import classify
from orchestration.spec import RetryPolicy
from tests.support.resilience_agents import QuotaExhausted

pytestmark = pytest.mark.timeout(5)

DEFAULT = RetryPolicy()


class Model(pydantic.BaseModel):
    count: int


def validation_error() -> pydantic.ValidationError:
    try:
        Model.model_validate({"count": "many"})
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("no validation error")


def http_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://agent.invalid/v1/run")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


class ResponseLike:
    def __init__(self, status_code: Any, headers: Any = None) -> None:
        self.status_code = status_code
        self.headers = headers


class ClientError(Exception):
    """Any exception carrying a ``response`` with a ``status_code``."""

    def __init__(self, response: ResponseLike) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


# --- permanent ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        PermanentAgentError("bad request"),
        AgentLoadError("cannot import 'nowhere'"),
        validation_error(),
    ],
    ids=["PermanentAgentError", "AgentLoadError", "ValidationError"],
)
def test_permanent_errors_are_not_retried(error: BaseException) -> None:
    failure = classify(error, DEFAULT)
    assert failure.transient is False
    assert failure.outcome == "error"
    assert failure.type == type(error).__name__
    assert failure.retry_after is None


def test_permanent_agent_error_keeps_its_message() -> None:
    failure = classify(PermanentAgentError("input is not a repository"), DEFAULT)
    assert failure.message == "input is not a repository"


def test_permanent_agent_errors_do_not_count_as_breaker_failures() -> None:
    assert classify(PermanentAgentError("bad request"), DEFAULT).breaker_failure is False
    assert classify(QuotaExhausted("no quota"), DEFAULT).breaker_failure is False
    # An unexpected error says something about the agent's health.
    assert classify(RuntimeError("crashed"), DEFAULT).breaker_failure is True
    assert classify(AttemptTimeout(1.0), DEFAULT).breaker_failure is True


# --- transient ---------------------------------------------------------------------------------


def test_transient_agent_error_carries_its_retry_after() -> None:
    failure = classify(TransientAgentError("busy", retry_after=2.5), DEFAULT)
    assert failure.transient is True
    assert failure.retry_after == 2.5
    assert failure.outcome == "error"
    assert failure.type == "TransientAgentError"
    assert failure.message == "busy"
    assert failure.breaker_failure is True

    assert classify(TransientAgentError("busy"), DEFAULT).retry_after is None


@pytest.mark.parametrize("error", [AttemptTimeout(0.2), HeartbeatTimeout(0.3), TimeoutError()])
def test_timeouts_are_transient_with_outcome_timeout(error: BaseException) -> None:
    failure = classify(error, DEFAULT)
    assert failure.outcome == "timeout"
    assert failure.transient is True
    assert failure.type == type(error).__name__
    assert failure.message  # never empty, even for a bare TimeoutError()


@pytest.mark.parametrize("error", [RuntimeError("x"), KeyError("k"), ConnectionResetError()])
def test_unexpected_errors_are_transient(error: BaseException) -> None:
    failure = classify(error, DEFAULT)
    assert failure.transient is True
    assert failure.outcome == "error"


# --- HTTP status codes -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 502, 429, 408])
def test_http_status_retried(status: int) -> None:
    assert classify(http_error(status), DEFAULT).transient is True
    assert classify(ClientError(ResponseLike(status)), DEFAULT).transient is True


@pytest.mark.parametrize("status", [404, 400, 401, 403, 422])
def test_http_status_not_retried(status: int) -> None:
    failure = classify(http_error(status), DEFAULT)
    assert failure.transient is False
    # A bad request says nothing about the agent's health.
    assert failure.breaker_failure is False
    assert classify(ClientError(ResponseLike(status)), DEFAULT).transient is False


def test_retry_after_header_is_parsed() -> None:
    failure = classify(http_error(429, {"Retry-After": "7"}), DEFAULT)
    assert failure.transient is True
    assert failure.retry_after == 7.0
    assert classify(http_error(503, {"retry-after": "0.5"}), DEFAULT).retry_after == 0.5
    # A plain mapping works too (lower-case, as HTTP libraries normalise it).
    like = ClientError(ResponseLike(503, {"retry-after": "3"}))
    assert classify(like, DEFAULT).retry_after == 3.0


def test_retry_after_that_is_not_seconds_is_ignored() -> None:
    date = classify(http_error(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), DEFAULT)
    assert date.transient is True
    assert date.retry_after is None
    assert classify(http_error(503), DEFAULT).retry_after is None
    assert classify(http_error(503, {"Retry-After": "-4"}), DEFAULT).retry_after == 0.0


def test_a_non_integer_status_code_is_not_an_http_status() -> None:
    assert classify(ClientError(ResponseLike("404")), DEFAULT).transient is True


# --- the policy's own lists ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ConnectionError", "builtins.ConnectionError"])
def test_no_retry_on_by_plain_or_dotted_name_beats_the_default(name: str) -> None:
    policy = RetryPolicy(no_retry_on=(name,))
    # A subclass matches through the MRO.
    assert classify(ConnectionResetError("reset"), policy).transient is False
    assert classify(ConnectionError("refused"), policy).transient is False
    # Other transient errors stay transient.
    assert classify(RuntimeError("x"), policy).transient is True


def test_no_retry_on_beats_transient_agent_error_and_http_5xx() -> None:
    policy = RetryPolicy(no_retry_on=("TransientAgentError", "HTTPStatusError"))
    assert classify(TransientAgentError("busy", retry_after=1), policy).transient is False
    assert classify(http_error(503), policy).transient is False


def test_no_retry_on_wins_over_retry_on() -> None:
    policy = RetryPolicy(retry_on=("ValueError",), no_retry_on=("ValueError",))
    assert classify(ValueError("v"), policy).transient is False


@pytest.mark.parametrize(
    "name", ["QuotaExhausted", "tests.support.resilience_agents.QuotaExhausted"]
)
def test_retry_on_makes_a_normally_permanent_error_transient(name: str) -> None:
    error = QuotaExhausted("quota exhausted, refilled soon")
    assert classify(error, DEFAULT).transient is False
    assert classify(error, RetryPolicy(retry_on=(name,))).transient is True
    # Naming a different class changes nothing.
    assert classify(error, RetryPolicy(retry_on=("OtherError",))).transient is False


def test_retry_on_makes_an_http_4xx_transient() -> None:
    policy = RetryPolicy(retry_on=("HTTPStatusError",))
    assert classify(http_error(404), policy).transient is True


def test_message_is_bounded() -> None:
    failure = classify(RuntimeError("x" * 10_000), DEFAULT)
    assert len(failure.message) <= 2000
