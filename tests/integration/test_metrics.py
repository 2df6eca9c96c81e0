"""Prometheus metrics of a real worker (`manage.py worker --metrics-port`), scraped over
HTTP while it runs a team, under the prefork pool (two processes added up) and the
threads pool."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.metrics_agents import MODEL, TOKENS_IN, TOKENS_OUT
from tests.support.services import WorkerProcess, describe, run_manage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PRICE_IN, PRICE_OUT = 2.0, 8.0  # USD per million tokens
FAILING = "python:tests.support.metrics_agents:always_fails"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def team_file(tmp_path: Path, name: str) -> Path:
    retry = {"initial_delay": 0.01, "backoff": 1.0, "max_delay": 0.01, "jitter": "none"}
    data = {
        "name": name,
        "agents": {
            "counter": {
                "kind": "python",
                "target": "tests.support.metrics_agents:uses_tokens",
                "retry": {"max_attempts": 1},
            },
            "breaks": {
                "kind": "python",
                "target": "tests.support.metrics_agents:always_fails",
                "retry": {"max_attempts": 2, **retry},
                # Two failures open it: its state shows as 2.
                "breaker": {"failure_threshold": 2, "reset_timeout": 1},
            },
        },
        "prices": {MODEL: {"input": PRICE_IN, "output": PRICE_OUT}},
        "workflow": {
            "strategy": "parallel",
            "steps": [{"id": "count", "agent": "counter"}, {"id": "fail", "agent": "breaks"}],
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(params=["prefork", "threads"])
def metrics_worker(
    request: pytest.FixtureRequest, distributed: Any, tmp_path: Path
) -> Iterator[tuple[dict[str, str], int]]:
    pool = str(request.param)
    port = free_port()
    env = {**distributed.env, "TROUPE_QUEUE": f"metrics-{pool}-{os.getpid()}"}
    worker = WorkerProcess(
        env=env,
        hostname=f"metrics-{pool}-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path / "worker.log",
        pool=pool,
        extra_args=("--metrics-port", str(port)),
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env, port
    finally:
        worker.stop()


def test_a_scrape_counts_what_a_team_did(
    metrics_worker: tuple[dict[str, str], int], tmp_path: Path
) -> None:
    env, port = metrics_worker
    # The breaker lives in the session's database: the other pool's run opened it.
    reset = run_manage(["breakers", "reset", FAILING], env, timeout=60)
    assert reset.returncode in (0, 2), describe(reset)  # 2: no such breaker yet
    before = scrape(port)
    path = team_file(tmp_path, f"metrics-{port}")
    result = run_manage(["run-team", str(path), "--input", "x", "--json"], env, timeout=60)
    assert result.returncode == 1, describe(result)  # the failing step fails the team
    # The last attempt's metrics are written just after its result: wait for them.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(port)
        ended = value(after, "troupe_delegations_total", agent="breaks", outcome="error")
        if ended - value(before, "troupe_delegations_total", agent="breaks", outcome="error") >= 2:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.1)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("troupe_delegations_total", agent="counter", outcome="success") == 1
    assert moved("troupe_delegations_total", agent="breaks", outcome="error") == 2
    assert moved("troupe_delegation_retries_total", agent="breaks") == 1
    assert moved("troupe_delegation_retries_total", agent="counter") == 0
    assert moved("troupe_delegation_duration_seconds_count", agent="counter") == 1
    assert moved("troupe_delegation_duration_seconds_count", agent="breaks") == 2
    assert moved("troupe_tokens_total", agent="counter", model=MODEL, kind="in") == TOKENS_IN
    assert moved("troupe_tokens_total", agent="counter", model=MODEL, kind="out") == TOKENS_OUT
    cost = (TOKENS_IN * PRICE_IN + TOKENS_OUT * PRICE_OUT) / 1e6
    assert moved("troupe_cost_usd_total", agent="counter", model=MODEL) == pytest.approx(cost)
    # Three messages: the two first steps, and the failing step's retry.
    assert moved("troupe_queue_wait_seconds_count", agent="counter") == 1
    assert moved("troupe_queue_wait_seconds_count", agent="breaks") == 2
    assert value(after, "troupe_queue_wait_seconds_bucket", agent="counter", le="+Inf") >= 1
    # Opened by its two failures.
    assert value(after, "troupe_breaker_state", identity=FAILING) == 2
    # Nothing runs any more, in any process of the pool.
    in_flight = [v for (name, _), v in after.items() if name == "troupe_delegations_in_flight"]
    assert in_flight and sum(in_flight) == 0, after
