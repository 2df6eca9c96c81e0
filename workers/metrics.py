"""Prometheus metrics of a worker: ``manage.py worker --metrics-port N``.

Every metric is defined here, in :class:`Metrics`. A worker that serves metrics runs
``prometheus_client`` in multiprocess mode, whatever its pool: before the pool forks,
:func:`enable` points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its own (made empty),
each pool process writes its values to files there, and the main process's HTTP server
adds them up with ``MultiProcessCollector`` on every scrape. A prefork child's
live gauges (in flight) are dropped with ``mark_process_dead`` when it exits, and at each
scrape for any process that died without saying so (killed). A threads pool is one
process writing the same files.

What is recorded, and where, so the hot path pays only when metrics are on:

- an attempt's end (count by agent and outcome, duration, retries, tokens and cost) by
  :class:`MeteredRecords`, the delegation's records with each attempt-ending write
  observed after it is made;
- breaker states by :class:`MeteredBreakers` (what this worker admits and records) and
  from the heartbeat's probes;
- in flight and queue wait by Celery's ``task_prerun``/``task_postrun`` signals around
  each ``troupe.delegate`` message; the wait is measured from the ``troupe_sent`` header
  that :func:`workers.publish.publish` stamps on every message (or from the message's
  ETA, for one sent with a countdown).

Without ``--metrics-port`` nothing here is imported by the hot path's objects: the
delegation uses the plain records and breakers.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestration.constants import DELEGATE_TASK, HEARTBEAT_TASK, OUTCOME_SUCCESS
from orchestration.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from orchestration.spec import BreakerPolicy
from orchestration.store.breaker_cache import CachedBreakers
from orchestration.store.breakers import Admission, BreakerStore
from orchestration.store.delegations import DelegationRecords
from orchestration.store.repository import AttemptEnd, Decided, Store
from workers.publish import SENT_HEADER

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A breaker's state as a number, for one gauge per identity.
BREAKER_VALUES = {CLOSED: 0.0, HALF_OPEN: 1.0, OPEN: 2.0}
# An attempt that passed its step to another agent.
OUTCOME_HANDOFF = "handoff"

# Agent calls take milliseconds (a Python agent) to minutes (a model).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A message waits from nothing (an idle worker) to minutes (a backlog).
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Every metric a worker exposes. Made once per process by :func:`enable`, after
    multiprocess mode is set, and inherited by forked pool processes (each writes its
    own files: prometheus_client notices the new pid)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: in multiprocess mode the values live in files, and the scrape
        # reads them through MultiProcessCollector, not through a registry.
        self.delegations = Counter(
            "troupe_delegations",
            "Attempts of delegations that ended, by agent and outcome "
            "(success, error, timeout, rejected, handoff).",
            ["agent", "outcome"],
            registry=None,
        )
        self.duration = Histogram(
            "troupe_delegation_duration_seconds",
            "How long an attempt's agent call took, by agent.",
            ["agent"],
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self.in_flight = Gauge(
            "troupe_delegations_in_flight",
            "Delegation messages being run now, by the agent they were sent for.",
            ["agent"],
            multiprocess_mode="livesum",
            registry=None,
        )
        self.breaker_state = Gauge(
            "troupe_breaker_state",
            "A breaker's state as this worker last saw it: 0 closed, 1 half-open, 2 open.",
            ["identity"],
            multiprocess_mode="mostrecent",
            registry=None,
        )
        self.retries = Counter(
            "troupe_delegation_retries",
            "Attempts that failed and will be retried, by agent.",
            ["agent"],
            registry=None,
        )
        self.tokens = Counter(
            "troupe_tokens",
            "Tokens that attempts reported, by agent, model and kind (in, out).",
            ["agent", "model", "kind"],
            registry=None,
        )
        self.cost = Counter(
            "troupe_cost_usd",
            "Cost in USD of attempts whose model has a price, by agent and model.",
            ["agent", "model"],
            registry=None,
        )
        self.queue_wait = Histogram(
            "troupe_queue_wait_seconds",
            "From a delegation message's publish (or its ETA) to its start, by agent.",
            ["agent"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )

    def attempt_ended(self, end: AttemptEnd, outcome: str, *, retried: bool = False) -> None:
        agent = end.agent
        self.delegations.labels(agent, outcome).inc()
        self.duration.labels(agent).observe(end.duration_ms / 1000.0)
        if retried:
            self.retries.labels(agent).inc()
        usage = end.usage
        if usage:
            model = str(usage.get("model") or "")
            tokens_in, tokens_out = usage.get("tokens_in") or 0, usage.get("tokens_out") or 0
            if tokens_in:
                self.tokens.labels(agent, model, "in").inc(tokens_in)
            if tokens_out:
                self.tokens.labels(agent, model, "out").inc(tokens_out)
            cost = usage.get("cost_usd")
            if cost:
                self.cost.labels(agent, model).inc(cost)

    def breaker_seen(self, identity: str, state: str) -> None:
        value = BREAKER_VALUES.get(state)
        if value is not None:
            self.breaker_state.labels(identity).set(value)


class MeteredRecords(DelegationRecords):
    """The delegation's records, observing each attempt's end once it is written."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        super().__init__(store)
        self._metrics = metrics

    def record_success(self, end: AttemptEnd, *args: Any, **kwargs: Any) -> Decided | None:
        decided = super().record_success(end, *args, **kwargs)
        self._metrics.attempt_ended(end, OUTCOME_SUCCESS)
        return decided

    def record_failure(self, end: AttemptEnd, *args: Any, **kwargs: Any) -> Decided | None:
        decided = super().record_failure(end, *args, **kwargs)
        self._metrics.attempt_ended(end, str(end.outcome))
        return decided

    def record_retry(self, end: AttemptEnd, *args: Any, **kwargs: Any) -> None:
        super().record_retry(end, *args, **kwargs)
        self._metrics.attempt_ended(end, str(end.outcome), retried=True)

    def hand_off(self, *args: Any, **kwargs: Any) -> bool:
        handed = super().hand_off(*args, **kwargs)
        end = kwargs.get("attempt", args[4] if len(args) > 4 else None)
        if isinstance(end, AttemptEnd):
            self._metrics.attempt_ended(end, OUTCOME_HANDOFF)
        return handed


class MeteredBreakers(CachedBreakers):
    """The per-process breaker cache, reporting each state it reads from or writes to
    the database (a cached answer changes nothing, so it reports nothing)."""

    def __init__(self, breakers: BreakerStore, ttl: float, metrics: Metrics) -> None:
        super().__init__(breakers, ttl)
        self._metrics = metrics

    def admit(self, key: str, policy: BreakerPolicy) -> Admission:
        admission = super().admit(key, policy)
        if not admission.allowed or admission.trial or admission.closed is not None:
            self._metrics.breaker_seen(key, admission.state)
        return admission

    def record_call(self, key: str, policy: BreakerPolicy, **kwargs: Any) -> str:
        state = super().record_call(key, policy, **kwargs)
        self._metrics.breaker_seen(key, state)
        return state


_metrics: Metrics | None = None
_directory: Path | None = None


def active() -> Metrics | None:
    """This process's metrics, if its worker serves them."""
    return _metrics


def delegation_records(store: Store) -> DelegationRecords:
    metrics = _metrics
    return DelegationRecords(store) if metrics is None else MeteredRecords(store, metrics)


def cached_breakers(breakers: BreakerStore, ttl: float) -> CachedBreakers:
    metrics = _metrics
    if metrics is None:
        return CachedBreakers(breakers, ttl)
    return MeteredBreakers(breakers, ttl, metrics)


def enable(directory: Path | None = None) -> Metrics:
    """Multiprocess mode in a directory of this worker's own (made, or emptied), and
    the metrics; before the pool forks, so that every pool process writes there."""
    global _metrics, _directory
    if _metrics is not None:
        return _metrics
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="troupe-metrics-"))
    else:
        # Files of an earlier run would be added to this one's.
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    from prometheus_client import values

    # prometheus_client picks its value class when first imported: this process may
    # have imported it before the variable was set.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _directory = directory
    _metrics = Metrics()
    _connect_signals()
    return _metrics


def serve(port: int, address: str) -> Path:
    """:func:`enable`, then expose the sum of every process's values over HTTP on
    ``address:port`` from this (the main) process. OSError if the port is taken."""
    from prometheus_client import CollectorRegistry, start_http_server

    enable()
    assert _directory is not None
    registry = CollectorRegistry()
    registry.register(_AllProcesses(_directory))
    start_http_server(port, addr=address, registry=registry)
    return _directory


def disable() -> None:
    """Remove this worker's metric files (at its exit)."""
    global _metrics, _directory
    directory = _directory
    _metrics = None
    _directory = None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class _AllProcesses:
    """MultiProcessCollector, after forgetting the live gauges of processes that died
    without ``worker_process_shutdown`` (killed): their in-flight count is gone."""

    def __init__(self, directory: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._directory = directory
        self._inner = MultiProcessCollector(None, str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Any]:
        for pid in _live_gauge_pids(self._directory):
            if not _alive(pid):
                _process_dead(pid)
        found: Iterable[Any] = self._inner.collect()  # type: ignore[no-untyped-call]
        return found


_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def _live_gauge_pids(directory: Path) -> set[int]:
    pids = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            match = _LIVE_FILE.match(name)
            if match:
                pids.add(int(match.group(1)))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    if _directory is not None:
        multiprocess.mark_process_dead(pid, str(_directory))  # type: ignore[no-untyped-call]


# --- Celery signals -------------------------------------------------------------------


def _connect_signals() -> None:
    # Connected before the pool starts: prefork children inherit the receivers, and
    # Celery's tracer, built in each pool process, sees them.
    from celery.signals import task_postrun, task_prerun, worker_process_shutdown

    task_prerun.connect(_prerun, weak=False)
    task_postrun.connect(_postrun, weak=False)
    worker_process_shutdown.connect(_pool_process_exits, weak=False)


def _agent(task: Any) -> str:
    shadow = str(getattr(task.request, "shadow", None) or "")
    return shadow.removeprefix("agent:")


def _prerun(task: Any = None, **_: Any) -> None:
    metrics = _metrics
    if metrics is None or task is None or task.name != DELEGATE_TASK:
        return
    request = task.request
    agent = _agent(task)
    metrics.in_flight.labels(agent).inc()
    due = queued_since(getattr(request, SENT_HEADER, None), request.eta)
    if due is not None:
        metrics.queue_wait.labels(agent).observe(max(0.0, time.time() - due))


def _postrun(task: Any = None, retval: Any = None, **_: Any) -> None:
    metrics = _metrics
    if metrics is None or task is None:
        return
    if task.name == DELEGATE_TASK:
        metrics.in_flight.labels(_agent(task)).dec()
    elif task.name == HEARTBEAT_TASK and isinstance(retval, list):
        # The heartbeat's probes move breakers too (a healthy probe half-opens one).
        for probe in retval:
            if isinstance(probe, dict) and probe.get("breaker"):
                metrics.breaker_seen(str(probe["identity"]), str(probe["breaker"]))


def _pool_process_exits(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        _process_dead(pid)


def queued_since(sent: Any, eta: Any) -> float | None:
    """When a message became due: its send time, or its ETA if that is later (a
    countdown is not waiting in a queue). None for a message without the header."""
    if not isinstance(sent, int | float):
        return None
    due = float(sent)
    if eta:
        with contextlib.suppress(ValueError, TypeError):
            due = max(due, datetime.fromisoformat(str(eta)).timestamp())
    return due
