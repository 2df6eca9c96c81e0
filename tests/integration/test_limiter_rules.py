"""The limiter's rules, held by both limiters alike: the Redis one (Lua, on the real
Redis) and the in-process one (embedded mode without Redis).

Each case drives a limiter directly with small intervals (tens of milliseconds), so the
rules are checked in well under a second each, without workers.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from orchestration.limits.demand import (
    Candidate,
    Demand,
    FairSlot,
    Grant,
    Limiter,
    Settlement,
    Wait,
)
from orchestration.limits.local_limiter import LocalLimiter

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


@pytest.fixture(params=["redis", "local"])
def limiter(request: pytest.FixtureRequest) -> Iterator[Limiter]:
    if request.param == "local":
        yield LocalLimiter()
        return
    from orchestration.limits.redis_limiter import RedisLimiter

    url = request.getfixturevalue("redis_url")
    # A prefix of the test's own: nothing it counts is seen by any other.
    redis_limiter = RedisLimiter(url, prefix=f"troupe:test:{uuid.uuid4().hex}:")
    yield redis_limiter
    redis_limiter.close()


def endpoints(*names: str, **limits: float) -> tuple[Candidate, ...]:
    return tuple(
        Candidate(
            index=i,
            identity=f"http:{name}",
            max_concurrency=int(limits.get("max_concurrency", 0)),
            ms_per_request=limits.get("ms_per_request", 0.0),
            ms_per_token=limits.get("ms_per_token", 0.0),
        )
        for i, name in enumerate(names)
    )


def demand(candidates: tuple[Candidate, ...], attempt: str = "", **fields: object) -> Demand:
    holder = attempt or uuid.uuid4().hex
    base = Demand(
        holder=holder,
        step=holder.rpartition(":")[0] or holder,
        token=f"{holder}:{uuid.uuid4().hex[:6]}",
        lease_ms=10_000,
        routing="least_in_flight",
        candidates=candidates,
        group=f"group:{'|'.join(c.identity for c in candidates)}",
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def granted(answer: Grant | Wait) -> Grant:
    assert isinstance(answer, Grant), answer
    return answer


def waited(answer: Grant | Wait) -> Wait:
    assert isinstance(answer, Wait), answer
    return answer


def name() -> str:
    return uuid.uuid4().hex[:8]


def test_at_most_max_concurrency_in_flight_and_a_release_makes_room(limiter: Limiter) -> None:
    only = endpoints(name())
    first = granted(limiter.acquire(demand(only, group_max_concurrency=2)))
    granted(limiter.acquire(demand(only, group_max_concurrency=2)))
    third = demand(only, group_max_concurrency=2)
    wait = waited(limiter.acquire(third))
    assert wait.cause == "concurrency"
    assert 10 <= wait.ms <= 1000
    limiter.release(first, Settlement(seconds=0.01))
    granted(limiter.acquire(third))


def test_a_release_wakes_the_first_waiter_for_the_slot_once(limiter: Limiter) -> None:
    only = endpoints(name())
    capped = {"group_max_concurrency": 1}
    running = granted(limiter.acquire(demand(only, **capped)))
    first, second = demand(only, wake="first", **capped), demand(only, wake="second", **capped)
    assert waited(limiter.acquire(first)).cause == "concurrency"
    assert waited(limiter.acquire(second)).cause == "concurrency"
    # The slot's first waiter, in queue order, is handed to the call that frees it.
    assert limiter.release(running, Settlement(seconds=0.01)) == "first"
    # Someone else took the slot before it came: the next release wakes the next
    # waiter, not the one already woken (it still has its own timer).
    taker = granted(limiter.acquire(demand(only, **capped)))
    assert limiter.release(taker, Settlement(seconds=0.01)) == "second"
    admitted = granted(limiter.acquire(second))
    # Admitted: no longer a waiter; nobody is left to wake.
    assert limiter.release(admitted, Settlement(seconds=0.01)) is None
    # An agent without a cap has no slots to wake anyone for.
    free = granted(limiter.acquire(demand(endpoints(name()), wake="unused")))
    assert limiter.release(free, Settlement(seconds=0.01)) is None


def test_a_second_delivery_of_an_admitted_attempt_is_told_duplicate(limiter: Limiter) -> None:
    only = endpoints(name(), max_concurrency=2)
    attempt = f"{uuid.uuid4().hex}:s:1"
    call = granted(limiter.acquire(demand(only, attempt, lease_ms=200)))
    again = waited(limiter.acquire(demand(only, attempt, lease_ms=200)))
    assert again.cause == "duplicate"
    assert 0 < again.ms <= 200
    # Released, the attempt stays marked until its lease lapses, by when its outcome
    # is recorded; the next attempt of the step is a new holder.
    limiter.release(call, Settlement(seconds=0.01))
    assert waited(limiter.acquire(demand(only, attempt, lease_ms=200))).cause == "duplicate"
    granted(limiter.acquire(demand(only, attempt.replace(":1", ":2"), lease_ms=200)))
    time.sleep(0.25)
    retaken = granted(limiter.acquire(demand(only, attempt, lease_ms=200)))
    # A call never made (its breaker trial went elsewhere) leaves no mark.
    limiter.release(retaken, Settlement())
    granted(limiter.acquire(demand(only, attempt, lease_ms=200)))


def test_a_dead_workers_calls_stop_counting_when_their_lease_lapses(limiter: Limiter) -> None:
    only = endpoints(name(), max_concurrency=1)
    granted(limiter.acquire(demand(only, lease_ms=150)))  # never released: its worker died
    late = demand(only, lease_ms=150)
    assert waited(limiter.acquire(late)).cause == "concurrency"
    time.sleep(0.2)
    granted(limiter.acquire(late))


def test_a_rate_spaces_calls_and_a_waiter_keeps_the_slot_it_reserved(limiter: Limiter) -> None:
    only = endpoints(name(), ms_per_request=80.0)
    granted(limiter.acquire(demand(only)))
    second = demand(only, attempt="e:s:1")
    third = demand(only, attempt="e:t:1")
    wait = waited(limiter.acquire(second))
    assert wait.cause == "rate" and 40 <= wait.ms <= 80
    later = waited(limiter.acquire(third))
    assert later.ms >= wait.ms + 60  # the next slot, not the same one
    # Back too early: still waiting, for what is left of its own slot.
    assert waited(limiter.acquire(second)).ms <= wait.ms
    time.sleep(wait.ms / 1000 + 0.01)
    granted(limiter.acquire(second))
    # Its slot was reserved: going took no other slot, the third's stands.
    left = later.ms - wait.ms - 10
    time.sleep(max(0.0, left / 1000) + 0.02)
    granted(limiter.acquire(third))


def test_tokens_are_held_from_max_tokens_then_settled(limiter: Limiter) -> None:
    only = endpoints(name(), ms_per_token=1.0)  # 60,000 tokens a minute
    first = granted(limiter.acquire(demand(only, tokens=300)))
    # The first holds 300 tokens' worth of the minute: 300 ms.
    assert 200 <= waited(limiter.acquire(demand(only, tokens=300))).ms <= 300
    other = endpoints(name(), ms_per_token=1.0)
    used = granted(limiter.acquire(demand(other, tokens=300)))
    limiter.release(used, Settlement(seconds=0.01, tokens=20))
    # It used 20 of them: the rest is given back (the wait is for the 20, less the
    # time since, and the slot the waiter above reserved does not apply here).
    assert waited(limiter.acquire(demand(other, tokens=300))).ms <= 40
    limiter.release(first, Settlement(seconds=0.01, tokens=300))


def test_retry_after_pauses_the_endpoint_for_every_caller(limiter: Limiter) -> None:
    both = endpoints(name(), name())
    first = granted(limiter.acquire(demand(both)))
    limiter.release(first, Settlement(seconds=0.01, pause_seconds=0.3))
    paused = first.identity
    # Every other call goes to the other endpoint while it is paused...
    for _ in range(4):
        grant = granted(limiter.acquire(demand(both)))
        assert grant.identity != paused
        limiter.release(grant, Settlement(seconds=0.01))
    # ...and an agent with that endpoint only waits for the pause to end.
    alone = tuple(c for c in both if c.identity == paused)
    wait = waited(limiter.acquire(demand(alone)))
    assert wait.cause == "paused" and 200 <= wait.ms <= 300


def test_least_in_flight_shares_calls_evenly_and_avoids_busy_endpoints(limiter: Limiter) -> None:
    three = endpoints(name(), name(), name())
    seen: Counter[str] = Counter()
    for _ in range(30):
        grant = granted(limiter.acquire(demand(three)))
        seen[grant.identity] += 1
        limiter.release(grant, Settlement(seconds=0.01))
    assert sorted(seen.values()) == [10, 10, 10]
    busy = granted(limiter.acquire(demand(three)))
    other = granted(limiter.acquire(demand(three)))
    third = granted(limiter.acquire(demand(three)))
    assert len({busy.identity, other.identity, third.identity}) == 3


def test_weighted_routing_follows_the_weights(limiter: Limiter) -> None:
    a, b = endpoints(name(), name())
    weighted = (replace(a, weight=2.0), b)
    seen: Counter[str] = Counter()
    for _ in range(30):
        grant = granted(limiter.acquire(demand(weighted, routing="weighted")))
        seen[grant.identity] += 1
        limiter.release(grant, Settlement(seconds=0.01))
    assert seen[a.identity] == 20 and seen[b.identity] == 10


def test_latency_routing_prefers_the_endpoint_with_the_faster_recent_calls(
    limiter: Limiter,
) -> None:
    slow, fast = endpoints(name(), name())
    pair = (slow, fast)
    # Latency is how long a call held its place: admission to release.
    for candidate, seconds in ((slow, 0.12), (fast, 0.0)):
        grant = granted(limiter.acquire(demand((candidate,), group=f"g:{candidate.identity}")))
        time.sleep(seconds)
        limiter.release(grant, Settlement(seconds=seconds))
    stats = limiter.stats([slow.identity, fast.identity])
    slow_ms, fast_ms = stats[slow.identity].latency_ms, stats[fast.identity].latency_ms
    assert slow_ms is not None and fast_ms is not None
    assert 100 <= slow_ms <= 300 and fast_ms < 50
    picks = Counter(
        granted(limiter.acquire(demand(pair, routing="latency"))).identity for _ in range(2)
    )
    # The fast one (its calls in flight weigh on it: EWMA × (in flight + 1)).
    assert picks[fast.identity] == 2
    assert limiter.stats([fast.identity])[fast.identity].in_flight == 2


def test_the_next_attempt_avoids_the_endpoint_the_last_one_failed_on(limiter: Limiter) -> None:
    pair = endpoints(name(), name())
    for step in range(4):
        first = granted(limiter.acquire(demand(pair, attempt=f"x:{step}:1")))
        limiter.release(first, Settlement(seconds=0.01, avoid=True))
        second = granted(limiter.acquire(demand(pair, attempt=f"x:{step}:2")))
        assert second.identity != first.identity
        limiter.release(second, Settlement(seconds=0.01))


def test_keyed_fairness_holds_executions_of_a_key_to_its_slots(limiter: Limiter) -> None:
    only = endpoints(name())
    key = f"team:{name()}"

    def slot(execution: str) -> FairSlot:
        return FairSlot(key=key, max=1, execution_id=execution, lease_ms=10_000, poll_ms=50)

    first = granted(limiter.acquire(demand(only, fair=slot("e1"))))
    limiter.release(first, Settlement(seconds=0.01))
    # e1 holds its key's slot between its calls; e2 waits for it; e1 goes on.
    wait = waited(limiter.acquire(demand(only, fair=slot("e2"))))
    assert wait.cause == "fair" and wait.ms == 50
    granted(limiter.acquire(demand(only, fair=slot("e1"))))
    other_key = replace(slot("e3"), key=f"team:{name()}")
    granted(limiter.acquire(demand(only, fair=other_key)))
    limiter.end_execution("e1")
    granted(limiter.acquire(demand(only, fair=slot("e2"))))
