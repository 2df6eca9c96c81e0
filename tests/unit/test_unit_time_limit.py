"""call_with_time_limit: value through, the agent's own error through, a cut-off past the limit."""

import time

import pytest

from orchestration.errors import AgentError, AttemptTimeout
from orchestration.resilience.time_limit import call_with_time_limit


class AgentBroke(RuntimeError):
    pass


def test_returns_the_value():
    assert call_with_time_limit(lambda: {"answer": 42}, 0.2) == {"answer": 42}


def test_returns_none_results():
    assert call_with_time_limit(lambda: None, 0.2) is None


@pytest.mark.parametrize("error", [AgentBroke("bad input"), KeyError("k"), SystemExit(3)])
def test_reraises_the_function_own_exception(error):
    def agent():
        raise error

    with pytest.raises(type(error)) as info:
        call_with_time_limit(agent, 0.2)
    assert info.value is error


@pytest.mark.parametrize("limit", [0.05, 0.1])
def test_slow_call_is_cut_off_near_the_limit(limit):
    started = time.monotonic()
    with pytest.raises(AttemptTimeout) as info:
        call_with_time_limit(lambda: time.sleep(limit + 0.5), limit)
    elapsed = time.monotonic() - started
    assert limit <= elapsed < limit + 0.25  # not the 0.5s the function wanted
    assert info.value.seconds == limit
    assert isinstance(info.value, AgentError)
    assert f"time limit of {limit:g}s" in str(info.value)


def test_call_finishing_inside_the_limit_is_not_cut_off():
    def agent():
        time.sleep(0.02)
        return "done"

    assert call_with_time_limit(agent, 0.2) == "done"
