"""Functions the dependency-countdown tests run in spawned processes, released together."""

from __future__ import annotations

import os
from typing import Any

from tests.support.barrier_pool import all_together

_stores: dict[str, Any] = {}


def _store(url: str) -> Any:
    from orchestration.store.repository import Store

    if url not in _stores:
        _stores[url] = Store(url)
    return _stores[url]


def pool_warm(url: str) -> int:
    _store(url).engine.connect().close()
    all_together()
    return os.getpid()


def pool_decide(
    url: str, execution_id: str, step_id: str, how: str
) -> tuple[str, tuple[str, ...] | None]:
    """Wait for every process, then decide one parent of the join "after" the way
    ``how`` says: (step id, the steps this write made ready; None if the step was
    decided already)."""
    from orchestration.constants import SKIP_CONDITION, SKIPPED
    from orchestration.store.repository import AttemptEnd, AttemptError, Countdown, now

    countdown = Countdown(dependents=("after",))

    from orchestration.store.delegations import DelegationRecords

    store = DelegationRecords(_store(url))
    end = AttemptEnd(
        execution_id=execution_id,
        step_id=step_id,
        attempt=1,
        agent="a",
        task_id=None,
        worker=f"pid-{os.getpid()}",
        started_at=now(),
        duration_ms=1,
    )
    all_together()
    if how == "success":
        decided = store.record_success(end, {"step": step_id}, countdown)
    elif how == "failure":
        error = AttemptError(type="Boom", message="boom", outcome="error")
        decided = store.record_failure(
            AttemptEnd(**{**end.__dict__, "outcome": "error", "error": error}), countdown
        )
    elif how == "rejection":
        error = AttemptError(type="CircuitOpen", message="open", outcome="rejected")
        decided = store.record_failure(
            AttemptEnd(**{**end.__dict__, "outcome": "rejected", "error": error}), countdown
        )
    else:
        decided = store.decide_without_call(
            execution_id,
            step_id,
            SKIPPED,
            countdown,
            cause=SKIP_CONDITION,
            reason="condition false",
        )
    return step_id, None if decided is None else decided.ready
