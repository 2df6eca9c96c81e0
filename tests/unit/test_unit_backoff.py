"""Retry delays: exponential cap, jitter kinds, sub-second delays, no overflow."""

import random
import statistics

import pytest

from orchestration.resilience.backoff import exponential_cap, next_delay
from orchestration.spec import RetryPolicy

SAMPLES = 2000


def policy(jitter, **fields):
    fields = {"initial_delay": 0.5, "backoff": 2.0, "max_delay": 5.0, **fields}
    return RetryPolicy(max_attempts=10, jitter=jitter, **fields)


@pytest.mark.parametrize(
    ("fields", "caps"),
    [
        ({}, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        ({"backoff": 3.0, "max_delay": 100.0}, [0.5, 1.5, 4.5, 13.5, 40.5, 100.0]),
        ({"backoff": 1.0}, [0.5] * 6),
        ({"initial_delay": 0.05, "max_delay": 0.3}, [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]),
    ],
)
def test_cap_grows_by_backoff_and_is_clamped(fields, caps):
    p = policy("none", **fields)
    assert [exponential_cap(p, n) for n in range(1, 7)] == pytest.approx(caps)


@pytest.mark.parametrize("retry_number", [10_000, 10**9])
def test_huge_retry_numbers_clamp_instead_of_overflowing(retry_number):
    p = policy("full")
    assert exponential_cap(p, retry_number) == 5.0
    assert 0 <= next_delay(p, retry_number, rng=random.Random(1)) <= 5.0


@pytest.mark.parametrize("retry_number", range(1, 7))
def test_no_jitter_is_exactly_the_cap(retry_number):
    p = policy("none")
    rng = random.Random(7)
    delays = {next_delay(p, retry_number, rng=rng) for _ in range(50)}
    assert delays == {exponential_cap(p, retry_number)}


@pytest.mark.parametrize("retry_number", range(1, 7))
def test_full_jitter_spreads_over_zero_to_cap(retry_number):
    p = policy("full")
    cap = exponential_cap(p, retry_number)
    rng = random.Random(retry_number)
    delays = [next_delay(p, retry_number, rng=rng) for _ in range(SAMPLES)]
    assert all(0 <= d <= cap for d in delays)
    assert statistics.mean(delays) == pytest.approx(cap / 2, rel=0.1)
    assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


@pytest.mark.parametrize("retry_number", range(1, 7))
def test_equal_jitter_never_waits_less_than_half_the_cap(retry_number):
    p = policy("equal")
    cap = exponential_cap(p, retry_number)
    rng = random.Random(100 + retry_number)
    delays = [next_delay(p, retry_number, rng=rng) for _ in range(SAMPLES)]
    assert all(cap / 2 <= d <= cap for d in delays)
    assert statistics.mean(delays) == pytest.approx(cap * 0.75, rel=0.05)


@pytest.mark.parametrize("previous", [None, 0.5, 1.0, 1.7, 4.0, 5.0])
def test_decorrelated_grows_from_the_previous_wait(previous):
    p = policy("decorrelated")
    upper = min(p.max_delay, 3 * (previous if previous is not None else p.initial_delay))
    rng = random.Random(3)
    delays = [next_delay(p, 2, previous_delay=previous, rng=rng) for _ in range(SAMPLES)]
    assert all(p.initial_delay <= d <= upper for d in delays)
    assert max(delays) > p.initial_delay + 0.9 * (upper - p.initial_delay)


def test_decorrelated_sequence_stays_within_bounds():
    p = policy("decorrelated")
    rng = random.Random(11)
    for _ in range(200):
        previous = None
        for retry_number in range(1, 10):
            delay = next_delay(p, retry_number, previous_delay=previous, rng=rng)
            prior = previous if previous is not None else p.initial_delay
            assert p.initial_delay <= delay <= min(p.max_delay, 3 * prior)
            previous = delay


@pytest.mark.parametrize("jitter", ["none", "full", "equal", "decorrelated"])
def test_sub_second_delays_are_kept(jitter):
    p = policy(jitter, initial_delay=0.05, max_delay=0.2)
    rng = random.Random(5)
    delays = [next_delay(p, 1, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 0.15 for d in delays)
    assert any(0 < d < 1 for d in delays)  # not rounded to whole seconds


def test_seeded_rng_makes_delays_reproducible():
    p = policy("full")
    first = [next_delay(p, n, rng=random.Random(9)) for n in range(1, 6)]
    again = [next_delay(p, n, rng=random.Random(9)) for n in range(1, 6)]
    assert first == again
