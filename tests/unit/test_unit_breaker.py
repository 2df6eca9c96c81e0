"""Circuit-breaker transitions as pure functions, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestration.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSnapshot,
    after_call,
    after_probe,
    is_failure,
    should_open,
)
from orchestration.spec import BreakerPolicy

pytestmark = pytest.mark.timeout(5)

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def calls(
    policy: BreakerPolicy,
    failures: str,
    snapshot: BreakerSnapshot | None = None,
    start: float = 0.0,
) -> BreakerSnapshot:
    """Feed a sequence of non-trial calls ("1" failed, "0" succeeded), one per second."""
    state = snapshot or BreakerSnapshot()
    for i, flag in enumerate(failures):
        state = after_call(
            state, policy, failed=flag == "1", trial=False, now=at(start + i), error=f"e{i}"
        )
    return state


# --- consecutive failures --------------------------------------------------------------------


def test_n_consecutive_failures_open_the_breaker() -> None:
    policy = BreakerPolicy(failure_threshold=3, reset_timeout=10)
    two = calls(policy, "11")
    assert two.state == CLOSED
    assert two.consecutive_failures == 2
    assert not should_open(two, policy)

    three = after_call(two, policy, failed=True, trial=False, now=at(5), error="E: down")
    assert three.state == OPEN
    assert three.consecutive_failures == 3
    assert three.opened_at == at(5)
    assert three.next_trial_at == at(15)
    assert three.last_error == "E: down"


def test_a_success_resets_the_consecutive_count() -> None:
    policy = BreakerPolicy(failure_threshold=3)
    state = calls(policy, "110")
    assert state.state == CLOSED
    assert state.consecutive_failures == 0
    # Two more failures are not three in a row.
    state = calls(policy, "11", state, start=10)
    assert state.state == CLOSED
    assert state.consecutive_failures == 2
    assert calls(policy, "1", state, start=20).state == OPEN


def test_last_error_is_kept_from_the_last_failure() -> None:
    policy = BreakerPolicy(failure_threshold=5)
    state = after_call(BreakerSnapshot(), policy, failed=True, trial=False, now=T0, error="first")
    state = after_call(state, policy, failed=False, trial=False, now=at(1))
    assert state.last_error == "first"


# --- failure rate over a window ---------------------------------------------------------------


def test_failure_rate_opens_only_once_min_calls_were_seen() -> None:
    policy = BreakerPolicy(
        failure_threshold=100, failure_rate=0.5, window=6, min_calls=4, reset_timeout=7
    )
    # 2 of 3 failed (67 %), but only three calls: not enough to judge.
    three = calls(policy, "101")
    assert three.state == CLOSED
    assert three.outcomes == "101"
    assert not should_open(three, policy)
    # The fourth call, a success, makes 2 of 4 = 50 %: open.
    four = calls(policy, "0", three, start=3)
    assert four.outcomes == "1010"
    assert four.state == OPEN
    assert four.next_trial_at == at(3 + 7)


def test_failure_rate_below_the_threshold_stays_closed_and_the_window_slides() -> None:
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, window=4, min_calls=4)
    state = calls(policy, "100000")
    assert state.state == CLOSED
    # Only the last four calls are remembered.
    assert state.outcomes == "0000"
    # 1 of 4 = 25 %, then 2 of 4 = 50 %.
    state = calls(policy, "1", state, start=10)
    assert (state.state, state.outcomes) == (CLOSED, "0001")
    state = calls(policy, "1", state, start=11)
    assert (state.state, state.outcomes) == (OPEN, "0011")


def test_without_a_failure_rate_no_window_is_kept() -> None:
    policy = BreakerPolicy(failure_threshold=10)
    assert calls(policy, "1010").outcomes == ""


# --- slow calls ---------------------------------------------------------------------------------


def test_slow_calls_count_as_failures() -> None:
    policy = BreakerPolicy(failure_threshold=2, slow_call_seconds=1.0)
    assert is_failure(policy, False, 1.5) is True
    assert is_failure(policy, False, 1.0) is True
    assert is_failure(policy, False, 0.4) is False
    assert is_failure(policy, True, 0.01) is True
    # Without slow_call_seconds a slow success is a success.
    assert is_failure(BreakerPolicy(), False, 3600.0) is False

    state = BreakerSnapshot()
    for i, seconds in enumerate((2.0, 3.0)):
        state = after_call(
            state, policy, failed=is_failure(policy, False, seconds), trial=False, now=at(i)
        )
    assert state.state == OPEN


# --- open and half-open -----------------------------------------------------------------------


def test_open_breaker_ignores_late_results() -> None:
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=10)
    opened = calls(policy, "1")
    assert opened.state == OPEN
    for failed in (False, True):
        for trial in (False, True):
            late = after_call(opened, policy, failed=failed, trial=trial, now=at(3))
            assert late == opened


def half_open(policy: BreakerPolicy) -> BreakerSnapshot:
    opened = calls(policy, "1" * policy.failure_threshold)
    assert opened.state == OPEN
    # What the store's admission does once the cool-down passed.
    return BreakerSnapshot(
        state=HALF_OPEN,
        consecutive_failures=opened.consecutive_failures,
        opened_at=opened.opened_at,
        next_trial_at=opened.next_trial_at,
        half_open_calls=1,
        last_error=opened.last_error,
    )


def test_half_open_trial_success_closes() -> None:
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=5)
    state = after_call(half_open(policy), policy, failed=False, trial=True, now=at(30))
    assert state.state == CLOSED
    assert state.consecutive_failures == 0
    assert state.half_open_calls == 0
    assert state.next_trial_at is None


def test_half_open_trial_failure_reopens_with_a_new_trial_time() -> None:
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=5)
    before = half_open(policy)
    state = after_call(before, policy, failed=True, trial=True, now=at(30), error="E: again")
    assert state.state == OPEN
    assert state.opened_at == at(30)
    assert state.next_trial_at == at(35)
    assert state.next_trial_at != before.next_trial_at
    assert state.half_open_calls == 0
    assert state.last_error == "E: again"


def test_half_open_ignores_a_call_admitted_before_it_opened() -> None:
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=5)
    before = half_open(policy)
    for failed in (False, True):
        assert after_call(before, policy, failed=failed, trial=False, now=at(30)) == before


# --- heartbeat probes ----------------------------------------------------------------------------


def probe(
    state: BreakerSnapshot, policy: BreakerPolicy, healthy: bool, when: float, to_open: int = 3
) -> BreakerSnapshot:
    return after_probe(
        state, policy, healthy=healthy, failures_to_open=to_open, now=at(when), detail="HTTP 503"
    )


def test_consecutive_failed_probes_open_the_breaker() -> None:
    policy = BreakerPolicy(reset_timeout=10)
    state = BreakerSnapshot()
    state = probe(state, policy, False, 0)
    state = probe(state, policy, False, 1)
    assert state.state == CLOSED
    assert state.probe_failures == 2
    state = probe(state, policy, False, 2)
    assert state.state == OPEN
    assert state.opened_at == at(2)
    assert state.next_trial_at == at(12)
    assert state.last_error is not None
    assert "3 failed health probes" in state.last_error
    assert "HTTP 503" in state.last_error


def test_a_healthy_probe_resets_the_probe_failures() -> None:
    policy = BreakerPolicy()
    state = BreakerSnapshot()
    for when, healthy in enumerate([False, False, True, False, False]):
        state = probe(state, policy, healthy, when)
    assert state.state == CLOSED
    assert state.probe_failures == 2


def test_healthy_probe_half_opens_only_after_the_cool_down() -> None:
    policy = BreakerPolicy(reset_timeout=10)
    state = BreakerSnapshot()
    for when in range(3):
        state = probe(state, policy, False, when)
    assert state.state == OPEN and state.next_trial_at == at(12)

    early = probe(state, policy, True, 11.9)
    assert early.state == OPEN
    assert early.next_trial_at == at(12)

    cooled = probe(early, policy, True, 12)
    assert cooled.state == HALF_OPEN
    assert cooled.half_open_calls == 0
    assert cooled.probe_failures == 0


def test_healthy_probe_does_not_close_an_open_breaker() -> None:
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=10)
    opened = calls(policy, "1")
    assert probe(opened, policy, True, 100).state == HALF_OPEN
    assert probe(opened, policy, True, 5).state == OPEN
