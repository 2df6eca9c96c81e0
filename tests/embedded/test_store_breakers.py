"""BreakerStore on SQLite and PostgreSQL: compare-and-set under real concurrency.

The concurrent tests fire from 8 OS processes (spawned, each with its own Store and
engine) released together by a barrier, so the database, not a Python lock, is what has
to keep admissions and counts exact.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from orchestration.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from orchestration.spec import BreakerPolicy
from orchestration.store.breakers import BreakerStore
from orchestration.store.repository import Store, now
from tests.support import barrier_pool, resilience_agents

pytestmark = pytest.mark.timeout(60)

PROCESSES = 8


@pytest.fixture
def breakers(url: str) -> BreakerStore:
    return BreakerStore(Store(url))


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    workers = context.Pool(PROCESSES, initializer=barrier_pool.pool_init, initargs=(barrier,))
    warmed: set[str] = set()

    class Runner:
        def run(self, url: str, function: Any, *args: Any) -> list[Any]:
            if url not in warmed:
                pids = workers.starmap_async(
                    resilience_agents.pool_warm, [(url,)] * PROCESSES, chunksize=1
                ).get(timeout=45)
                assert len(set(pids)) == PROCESSES
                warmed.add(url)
            results = workers.starmap_async(function, [(url, *args)] * PROCESSES, chunksize=1).get(
                timeout=30
            )
            # One call per process, all released together.
            assert len({result[0] for result in results}) == PROCESSES, results
            return list(results)

    try:
        yield Runner()
    finally:
        workers.terminate()
        workers.join()


def key() -> str:
    return f"agent-{uuid.uuid4().hex[:10]}"


def policy_dict(**fields: Any) -> dict[str, Any]:
    return BreakerPolicy(**fields).model_dump(mode="json")


# --- compare-and-set under 8 processes ---------------------------------------------------------


@pytest.mark.parametrize("max_calls", [1, 3])
@pytest.mark.parametrize("how", ["cool-down passed", "healthy probe"])
def test_half_open_admits_exactly_half_open_max_calls(
    breakers: BreakerStore, url: str, pool: Any, max_calls: int, how: str
) -> None:
    name = key()
    # A long cool-down, so no trial slot can go stale while the processes race.
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=10, half_open_max_calls=max_calls)
    # Opened 20 s ago with a 10 s cool-down: the first trial is due.
    opened_at = now() - timedelta(seconds=20)
    assert breakers.record_call(name, policy, failed=True, trial=False, at=opened_at) == OPEN
    if how == "healthy probe":
        state = breakers.record_probe(name, policy, healthy=True, failures_to_open=3)
        assert state == HALF_OPEN

    results = pool.run(url, resilience_agents.pool_admit, name, policy.model_dump(mode="json"))

    allowed = [r for r in results if r[1]]
    assert len(allowed) == max_calls, results
    assert all(trial for _, _, trial in allowed), results
    view = breakers.get(name)
    assert view is not None
    assert view.snapshot.state == HALF_OPEN
    assert view.snapshot.half_open_calls == max_calls
    # Late-comers keep being refused while the trials run.
    assert not breakers.admit(name, policy).allowed


@pytest.mark.parametrize("row", ["no row yet", "existing closed row"])
def test_concurrent_failures_are_all_counted(
    breakers: BreakerStore, url: str, pool: Any, row: str
) -> None:
    name = key()
    policy = BreakerPolicy(failure_threshold=100)
    if row == "existing closed row":
        breakers.record_call(name, policy, failed=True, trial=False, error="old")
        breakers.record_call(name, policy, failed=False, trial=False)
        existing = breakers.get(name)
        assert existing is not None and existing.snapshot.consecutive_failures == 0

    results = pool.run(
        url, resilience_agents.pool_record_failure, name, policy_dict(failure_threshold=100)
    )

    assert [state for _, state in results] == [CLOSED] * PROCESSES
    view = breakers.get(name)
    assert view is not None
    assert view.snapshot.state == CLOSED
    assert view.snapshot.consecutive_failures == PROCESSES
    assert view.snapshot.last_error == "boom"


def test_concurrent_failures_open_the_breaker_once_at_the_threshold(
    breakers: BreakerStore, url: str, pool: Any
) -> None:
    name = key()
    results = pool.run(
        url,
        resilience_agents.pool_record_failure,
        name,
        policy_dict(failure_threshold=3, reset_timeout=30),
    )
    states = sorted(state for _, state in results)
    # Two failures below the threshold, then the third opened it; the rest were late.
    assert states.count(CLOSED) == 2, results
    assert states.count(OPEN) == PROCESSES - 2, results
    view = breakers.get(name)
    assert view is not None
    assert view.snapshot.state == OPEN
    assert view.snapshot.consecutive_failures == 3


# --- single process: the rules the CAS protects --------------------------------------------------


def test_open_breaker_refuses_until_its_trial_time(breakers: BreakerStore) -> None:
    name = key()
    policy = BreakerPolicy(failure_threshold=2, reset_timeout=30)
    assert breakers.admit(name, policy).allowed  # no row: closed
    breakers.record_call(name, policy, failed=True, trial=False, error="E: one")
    assert breakers.admit(name, policy).allowed
    assert breakers.record_call(name, policy, failed=True, trial=False, error="E: two") == OPEN

    admission = breakers.admit(name, policy)
    view = breakers.get(name)
    assert view is not None
    assert admission.allowed is False
    assert admission.state == OPEN
    assert admission.retry_at == view.snapshot.next_trial_at
    assert admission.reason is not None and "circuit open" in admission.reason
    assert view.snapshot.last_error == "E: two"


def test_trial_success_closes_and_failure_reopens(breakers: BreakerStore) -> None:
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=0.2)
    for failed, expected in ((False, CLOSED), (True, OPEN)):
        name = key()
        breakers.record_call(name, policy, failed=True, trial=False)
        time.sleep(0.25)
        admission = breakers.admit(name, policy)
        assert admission.allowed and admission.trial
        assert breakers.record_call(name, policy, failed=failed, trial=True) == expected
        view = breakers.get(name)
        assert view is not None and view.snapshot.state == expected
        if expected == OPEN:
            assert view.snapshot.next_trial_at is not None
            assert view.snapshot.next_trial_at > now()
            assert not breakers.admit(name, policy).allowed
        else:
            second = breakers.admit(name, policy)
            assert second.allowed and not second.trial


def test_trial_slot_older_than_reset_timeout_is_reclaimed(breakers: BreakerStore) -> None:
    name = key()
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=0.2, half_open_max_calls=1)
    breakers.record_call(name, policy, failed=True, trial=False)
    time.sleep(0.25)
    first = breakers.admit(name, policy)
    assert first.allowed and first.trial

    refused = breakers.admit(name, policy)
    assert not refused.allowed
    assert refused.state == HALF_OPEN
    assert refused.reason is not None and "already running" in refused.reason
    assert refused.retry_at is not None

    # The first trial's worker died without reporting: its slot goes stale.
    time.sleep(0.3)
    reclaimed = breakers.admit(name, policy)
    assert reclaimed.allowed and reclaimed.trial
    assert not breakers.admit(name, policy).allowed


def test_reset_closes_an_open_breaker(breakers: BreakerStore) -> None:
    name = key()
    policy = BreakerPolicy(failure_threshold=1, reset_timeout=60)
    breakers.record_call(name, policy, failed=True, trial=False, error="E: down")
    assert not breakers.admit(name, policy).allowed

    assert breakers.reset(name) is True
    view = breakers.get(name)
    assert view is not None
    assert view.snapshot.state == CLOSED
    assert view.snapshot.consecutive_failures == 0
    assert view.snapshot.next_trial_at is None
    admission = breakers.admit(name, policy)
    assert admission.allowed and not admission.trial

    assert breakers.reset(key()) is False
