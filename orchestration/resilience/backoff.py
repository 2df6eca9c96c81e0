"""Retry delays: exponential backoff with jitter, computed by us, sub-second allowed.

Celery's own ``retry_backoff`` rounds to whole seconds and its jitter can be zero, so the
countdown is computed here and passed to ``self.retry(countdown=...)``.
"""

from __future__ import annotations

import random

from orchestration.spec import Jitter, RetryPolicy


def exponential_cap(policy: RetryPolicy, retry_number: int) -> float:
    """The un-jittered delay before retry ``retry_number`` (1 = first retry)."""
    exponent = max(0, retry_number - 1)
    try:
        raw = policy.initial_delay * policy.backoff**exponent
    except OverflowError:
        raw = policy.max_delay
    return min(policy.max_delay, raw)


def next_delay(
    policy: RetryPolicy,
    retry_number: int,
    previous_delay: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry ``retry_number``.

    full:         uniform(0, cap)                     spreads a thundering herd the most
    equal:        cap/2 + uniform(0, cap/2)           never waits less than half the cap
    decorrelated: min(max, uniform(initial, 3*prev))  grows from the previous wait
    none:         cap
    """
    rand = rng or random
    cap = exponential_cap(policy, retry_number)
    if policy.jitter is Jitter.NONE:
        return cap
    if policy.jitter is Jitter.FULL:
        return rand.uniform(0, cap)
    if policy.jitter is Jitter.EQUAL:
        return cap / 2 + rand.uniform(0, cap / 2)
    previous = previous_delay if previous_delay is not None else policy.initial_delay
    upper = max(policy.initial_delay, previous * 3)
    return min(policy.max_delay, rand.uniform(policy.initial_delay, upper))
