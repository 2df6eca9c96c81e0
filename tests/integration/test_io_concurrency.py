"""One worker host carries hundreds of slow agent calls at once: a threads pool, a
bounded number of PostgreSQL connections, and no connection held while a call waits.

A real `manage.py worker --pool threads -c 300` on Redis and PostgreSQL runs a 300-way
parallel team whose agents wait 0.5 s, and a join. The calls must overlap, the run must
complete with one success per step, and PostgreSQL must never see more connections from
the worker than its setting.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.services import MANAGE, PYTHON, ROOT, WorkerProcess, describe, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WIDTH = 300
CONNECTIONS = 12
APPLICATION = "troupe-io-worker"


@pytest.fixture(scope="module")
def threads_worker(
    redis_url: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    database = f"troupe_test_{os.getpid()}_io"
    url = postgres.create(database)
    queue = f"troupe-io-{os.getpid()}"
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": url,
            "TROUPE_QUEUE": queue,
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("io-state")),
        }
    )
    upgrade = subprocess.run(
        [PYTHON, str(MANAGE), "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    worker_env = {
        **env,
        # Tagged, so the test can count the worker's own connections.
        "TROUPE_DATABASE_URL": f"{url}?application_name={APPLICATION}",
        "TROUPE_DB_CONNECTIONS": str(CONNECTIONS),
    }
    worker = WorkerProcess(
        env=worker_env,
        hostname=f"troupe-io-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path_factory.mktemp("io-worker") / "worker.log",
        concurrency=WIDTH,
        pool="threads",
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env
    finally:
        worker.stop()
        postgres.drop(database)


class ConnectionWatch:
    """Samples how many connections the worker holds, every 20 ms, until stopped."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_engine(database_url, poolclass=NullPool)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()

    def _run(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.wait(0.02):
                held = connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                    {"a": APPLICATION},
                ).scalar()
                # pg_stat_activity is a snapshot taken once per transaction: end it, or
                # every later sample repeats the first.
                connection.rollback()
                self.peak = max(self.peak, int(held or 0))
                self.samples += 1


def max_overlap(outputs: list[dict[str, Any]]) -> int:
    events = sorted(
        [(o["started"], 1) for o in outputs] + [(o["ended"], -1) for o in outputs],
        key=lambda event: (event[0], event[1]),
    )
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_300_slow_agents_run_at_once_on_bounded_connections(
    threads_worker: dict[str, str], tmp_path: Path
) -> None:
    steps: list[dict[str, Any]] = [
        {"id": f"s{i}", "agent": "wait", "task": "0.5"} for i in range(WIDTH)
    ]
    steps.append({"id": "join", "agent": "wait", "after": [f"s{i}" for i in range(WIDTH)]})
    team = {
        "name": "io-fan-out",
        "agents": {"wait": {"target": "tests.support.agents:timed", "timeout": 30}},
        "workflow": {"strategy": "dag", "steps": steps},
    }
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(team), encoding="utf-8")

    with ConnectionWatch(threads_worker["TROUPE_DATABASE_URL"]) as watch:
        result = subprocess.run(
            [PYTHON, str(MANAGE), "run-team", str(path), "--json", "--timeout", "120"],
            cwd=ROOT,
            env=threads_worker,
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert result.returncode == 0, describe(result)
    report = json.loads(result.stdout)
    assert report["status"] == "completed"
    assert [s["attempts"] for s in report["steps"]] == [1] * (WIDTH + 1)

    engine = create_engine(threads_worker["TROUPE_DATABASE_URL"], poolclass=NullPool)
    with engine.connect() as connection:
        outputs = [
            row[0]
            for row in connection.execute(
                text(
                    "SELECT output FROM troupe_steps WHERE execution_id = :e AND step_id != 'join'"
                ),
                {"e": report["execution_id"]},
            )
        ]
        successes = connection.execute(
            text(
                "SELECT count(*) FROM troupe_attempts WHERE execution_id = :e"
                " AND outcome = 'success'"
            ),
            {"e": report["execution_id"]},
        ).scalar()
    engine.dispose()
    assert successes == WIDTH + 1
    # The calls overlapped: at the busiest moment, most of them were under way at once
    # (a pool that ran them a few at a time would show a handful).
    assert max_overlap(outputs) >= WIDTH // 3, max_overlap(outputs)
    # PostgreSQL never saw more connections from the worker than its setting allows.
    assert watch.samples > 10
    assert 0 < watch.peak <= CONNECTIONS, watch.peak
