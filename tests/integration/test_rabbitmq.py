"""RabbitMQ as the broker (``TROUPE_BROKER_URL=amqp://…``): PostgreSQL as state, a real
`manage.py worker` (prefork, two children) and `manage.py run-team` as a user runs it.

The session's queue (see tests/conftest.py) is deleted at the end; this module has its own
PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import WorkerProcess, describe, run_manage, subprocess_env, tail
from tests.support.teams import write_team

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

DATABASE = f"troupe_test_{os.getpid()}_rabbitmq"


@dataclass
class OnRabbitMQ:
    env: dict[str, str]
    worker: WorkerProcess


@pytest.fixture(scope="module")
def on_rabbitmq(
    rabbitmq: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnRabbitMQ]:
    """A migrated database of this module's own and a worker on RabbitMQ."""
    database_url = postgres.create(DATABASE)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": rabbitmq.url,
            "TROUPE_DATABASE_URL": database_url,
            "TROUPE_QUEUE": rabbitmq.queue,
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("rabbitmq-state")),
        }
    )
    worker = None
    try:
        upgrade = run_manage(["db", "upgrade"], env)
        assert upgrade.returncode == 0, describe(upgrade)
        worker = WorkerProcess(
            env=env,
            hostname=f"troupe-rabbitmq-{os.getpid()}@{socket.gethostname()}",
            log_path=tmp_path_factory.mktemp("rabbitmq-worker") / "worker.log",
        )
        worker.start()
        worker.wait_ready(25)
        yield OnRabbitMQ(env=env, worker=worker)
    finally:
        if worker is not None:
            worker.stop()
        postgres.drop(DATABASE)


def test_a_parallel_team_completes_on_rabbitmq(on_rabbitmq: OnRabbitMQ, tmp_path: Path) -> None:
    ids = [f"s{i:02d}" for i in range(20)]
    team = write_team(tmp_path, "parallel", [{"id": sid, "agent": "add_one"} for sid in ids])
    started = time.monotonic()
    result = run_manage(
        ["run-team", str(team), "--input-json", "41", "--json", "--timeout", "60"],
        on_rabbitmq.env,
        timeout=75,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, describe(result) + tail(on_rabbitmq.worker.log_path)
    data = json.loads(result.stdout)
    assert data["status"] == "completed", data
    assert [step["id"] for step in data["steps"]] == ids
    assert all(step["attempts"] == 1 for step in data["steps"]), data["steps"]
    assert data["output"] == dict.fromkeys(ids, 42)
    print(f"20-step parallel team on RabbitMQ took {elapsed:.1f}s")


def test_the_worker_runs_troupes_settings_for_rabbitmq(on_rabbitmq: OnRabbitMQ) -> None:
    conf = on_rabbitmq.worker.conf()
    assert conf["broker_url"].startswith("amqp://")
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_channel_error_retry"] is True
    # kombu's AMQP transport, with no Redis visibility timeout and no result store.
    assert "broker_transport" not in conf
    assert "visibility_timeout" not in (conf.get("broker_transport_options") or {})
    assert conf["result_backend"] == "disabled"
