"""Queues and priorities on real brokers, with `manage.py worker` processes of one slot
(`-c 1`), so the order steps start in is the order the broker hands them out.

- A backlog of low-priority steps does not hold back a critical execution enqueued after
  it, on Redis and on RabbitMQ.
- An agent that names a queue runs only on a worker serving that queue.
- With a tiny max_wait, a low step starts while a stream of critical ones still runs,
  and only once: its earlier message, when it comes, runs nothing.

Agents record their start and end in a side-effect file (tests/support/faults.py). The
module has its own PostgreSQL database and each test its own queue names.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RABBITMQ_URL
from tests.support.faults import (
    Cluster,
    Service,
    agent_entry,
    attempt_rows,
    events,
    query,
    read_events,
    wait_for,
    wait_ready,
    write_team_file,
)
from tests.support.services import PYTHON, ROOT, describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PID = os.getpid()
DATABASE = f"troupe_test_{PID}_queues"
RECORD = "tests.support.faults:record"


@pytest.fixture(scope="module")
def database(postgres: Any) -> Iterator[str]:
    """A migrated PostgreSQL database of this module's own."""
    url = postgres.create(DATABASE)
    try:
        upgrade = run_manage(
            ["db", "upgrade"], subprocess_env({"TROUPE_DATABASE_URL": url}), timeout=60
        )
        assert upgrade.returncode == 0, describe(upgrade)
        yield url
    finally:
        postgres.drop(DATABASE)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    started = Cluster(request.node)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def rabbitmq_queues(rabbitmq: Any) -> Iterator[list[str]]:
    """Queue names a test declares on RabbitMQ, deleted at its end (RabbitMQ keeps a
    durable queue, and its messages, after its consumers leave)."""
    from kombu import Connection

    names: list[str] = []
    yield names
    for name in names:
        # A queue that was never declared closes the channel: one connection each.
        with contextlib.suppress(Exception), Connection(RABBITMQ_URL) as connection:
            connection.default_channel.queue_delete(name)


def broker_env(
    request: pytest.FixtureRequest, broker: str, database: str, queue: str, tmp: Path
) -> dict[str, str]:
    if broker == "redis":
        url = str(request.getfixturevalue("redis_url"))
    else:
        url = str(request.getfixturevalue("rabbitmq").url)
        request.getfixturevalue("rabbitmq_queues").append(queue)
    return subprocess_env(
        {
            "TROUPE_BROKER_URL": url,
            "TROUPE_DATABASE_URL": database,
            "TROUPE_QUEUE": queue,
            "TROUPE_STATE_DIR": str(tmp / "state"),
        }
    )


def worker(env: dict[str, str], node: str, log_dir: Path, *queues: str) -> Service:
    """`manage.py worker -c 1`, serving ``queues`` (default: TROUPE_QUEUE)."""
    hostname = f"{node}@{socket.gethostname()}"
    args = ["worker", "-c", "1", "-n", hostname, "-l", "INFO"]
    if queues:
        args += ["--queues", ",".join(queues)]
    return Service(name=hostname, args=args, env=env, log_path=log_dir / f"{node}.log")


def parallel_team(directory: Path, name: str, prefix: str, count: int) -> Path:
    return write_team_file(
        directory,
        name,
        "parallel",
        [(f"{prefix}{i:03d}", "record") for i in range(count)],
        {"record": agent_entry(RECORD)},
    )


def started_steps(log: Path) -> list[str]:
    return [event["step"] for event in sorted(events(log, "start"), key=lambda e: e["t"])]


def enqueue_together(runs: list[tuple[Path, str, dict[str, Any]]], env: dict[str, str]) -> None:
    """Enqueue several executions from one process, one right after the other, with
    ``Team.enqueue(input, priority=...)``: no process start-up between them."""
    code = (
        "import json, sys\n"
        "from orchestration import Team\n"
        "for path, priority, value in json.loads(sys.argv[1]):\n"
        "    Team.load(path).enqueue(value, priority=priority, check_worker=False)\n"
    )
    payload = json.dumps([[str(path), priority, value] for path, priority, value in runs])
    result = subprocess.run(
        [PYTHON, "-c", code, payload],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, describe(result)


def quiet(service: Service, redis_url: str, queue: str) -> Callable[[], bool]:
    """A probe: nothing left in the queue (any priority), and every task the worker
    received has ended, at two looks in a row (a message just taken from the queue is
    logged as received a moment later)."""
    import redis

    looks: list[bool] = []

    def probe() -> bool:
        client = redis.Redis.from_url(redis_url)
        try:
            waiting = sum(int(client.llen(key)) for key in client.keys(f"{queue}*"))
        finally:
            client.close()
        text = service.log()
        looks.append(waiting == 0 and text.count("] received") == text.count("] succeeded in"))
        return looks[-2:] == [True, True]

    return probe


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_a_critical_execution_starts_before_a_low_backlog_drains(
    broker: str,
    database: str,
    cluster: Cluster,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    env = broker_env(request, broker, database, f"troupe-test-{PID}-priority-{broker}", tmp_path)
    log = tmp_path / "events.jsonl"
    backlog = parallel_team(tmp_path, "backlog", "low", 200)
    urgent = parallel_team(tmp_path, "urgent", "crit", 3)
    enqueue_together(
        [(backlog, "low", {"log": str(log)}), (urgent, "critical", {"log": str(log)})], env
    )
    # Only now a worker: both executions wait in the queue, the backlog first.
    one = worker(env, f"prio-{broker}-{PID}", tmp_path)
    cluster.start(one)

    with cluster.dump_on_failure():
        wait_for(
            lambda: len([e for e in events(log, "end") if e["step"].startswith("crit")]) == 3,
            45,
            "the critical steps to end",
            details=lambda: str(started_steps(log)[:10]),
        )
        order = started_steps(log)
        critical = [i for i, step in enumerate(order) if step.startswith("crit")]
        # The worker's first messages are the critical ones, though the backlog was
        # there first; the backlog comes after them.
        assert critical == [0, 1, 2], order[:10]
        assert len(order) < 203, "the backlog had drained"


def test_an_agent_naming_a_queue_runs_only_on_a_worker_serving_it(
    database: str, cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queue = f"troupe-test-{PID}-routing"
    gpu_queue = f"gpu-{PID}"
    env = broker_env(request, "redis", database, queue, tmp_path)
    log = tmp_path / "events.jsonl"
    # cpu → gpu → cpu: without routing, eager continuation would run the gpu step on the
    # worker that ran the step before it.
    team = write_team_file(
        tmp_path,
        "routed",
        "sequential",
        [("prepare", "cpu"), ("render", "gpu"), ("publish", "cpu")],
        {"cpu": agent_entry(RECORD), "gpu": {**agent_entry(RECORD), "queue": gpu_queue}},
    )
    unserved = write_team_file(
        tmp_path,
        "unserved",
        "parallel",
        [("idle", "nobody")],
        {"nobody": {**agent_entry(RECORD), "queue": f"nobody-{PID}"}},
    )
    default = worker(env, f"routing-default-{PID}", tmp_path)
    gpu = worker(env, f"routing-gpu-{PID}", tmp_path, gpu_queue)
    cluster.start(default, gpu)
    with cluster.dump_on_failure():
        wait_ready([default, gpu])
        value = json.dumps({"log": str(log)})
        refused = run_manage(["run-team", str(unserved), "--input-json", value], env)
        # Nobody serves that agent's queue: run-team says so, and which worker to start.
        assert refused.returncode == 4, describe(refused)
        assert f"--queues nobody-{PID}" in refused.stderr, describe(refused)

        args = ["run-team", str(team), "--input-json", value, "--json", "--priority", "high"]
        result = run_manage([*args, "--timeout", "30"], env, timeout=45)
        assert result.returncode == 0, describe(result)
        execution_id = json.loads(result.stdout)["execution_id"]
        ran_on = {row["step_id"]: row["worker"] for row in attempt_rows(database, execution_id)}
        assert ran_on == {"prepare": default.name, "render": gpu.name, "publish": default.name}
        # The priority given on the command line is the execution's.
        stored = query(
            database, "SELECT spec FROM troupe_executions WHERE id = :id", id=execution_id
        )
        assert stored[0]["spec"]["priority"] == "high"


def test_a_low_step_waiting_past_max_wait_starts_before_a_critical_stream_ends(
    database: str, redis_url: str, cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queue = f"troupe-test-{PID}-starvation"
    env = {
        **broker_env(request, "redis", database, queue, tmp_path),
        "TROUPE_MAX_WAIT": "0.5",
        "TROUPE_REAP_INTERVAL": "0.25",
    }
    log = tmp_path / "events.jsonl"
    one = worker(env, f"starvation-{PID}", tmp_path)
    cluster.start(one)
    with cluster.dump_on_failure():
        wait_ready([one])
        stream = parallel_team(tmp_path, "stream", "crit", 15)
        patient = parallel_team(tmp_path, "patient", "low", 1)
        # 15 critical steps of 0.2 s each, then one low step: strict priorities alone
        # would start it last.
        enqueue_together(
            [
                (stream, "critical", {"log": str(log), "sleep": 0.2}),
                (patient, "low", {"log": str(log)}),
            ],
            env,
        )
        wait_for(lambda: len(events(log, "end")) == 16, 30, "every step to end")
        order = started_steps(log)
        assert order.index("low000") < len(order) - 1, order
        print(f"the low step started {order.index('low000') + 1}th of {len(order)}")
        assert "reaper: promoted" in one.log()

        # The low step's earlier message came after the whole stream, and ran nothing.
        wait_for(quiet(one, redis_url, queue), 30, "the worker to have nothing left")
        assert len(events(log, "start", "low000")) == 1, read_events(log)
