"""LLM and remote agents on a real distributed deployment: a threads-pool worker on
Redis and PostgreSQL, a local OpenAI-protocol server and a local agent service.

- A planted key and header token reach the servers, and nothing that lasts: not the
  broker's messages, not a pg_dump of the database, not the worker's log, not any
  command's output, even when a server's error echoes them back.
- 20 budgeted steps that call a model at once, on PostgreSQL: the committed spend,
  sampled all along, never passes the budget, and the refused calls are never made.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.agent_service import AgentService, output
from tests.support.agent_service import Reply as ServiceReply
from tests.support.openai_server import OpenAIServer, Reply
from tests.support.services import (
    MANAGE,
    PYTHON,
    ROOT,
    WorkerProcess,
    describe,
    run_manage,
    subprocess_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KEY = f"sk-planted-{uuid.uuid4().hex}"
TOKEN = f"tok-planted-{uuid.uuid4().hex}"
WIDTH = 20


@dataclass
class Deployment:
    env: dict[str, str]
    database_url: str
    redis_url: str
    log: Path


@pytest.fixture(scope="module")
def deployment(
    redis_url: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    database = f"troupe_test_{os.getpid()}_llm"
    url = postgres.create(database)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": url,
            "TROUPE_QUEUE": f"troupe-llm-{os.getpid()}",
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("llm-state")),
            # Client and worker both hold the secrets, as on a developer's machine.
            "PLANTED_KEY": KEY,
            "PLANTED_TOKEN": TOKEN,
        }
    )
    upgrade = subprocess.run(
        [PYTHON, str(MANAGE), "db", "upgrade"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    log = tmp_path_factory.mktemp("llm-worker") / "worker.log"
    worker = WorkerProcess(
        env=env,
        hostname=f"troupe-llm-{os.getpid()}@{socket.gethostname()}",
        log_path=log,
        concurrency=WIDTH,
        pool="threads",
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield Deployment(env=env, database_url=url, redis_url=redis_url, log=log)
    finally:
        worker.stop()
        postgres.drop(database)


def write_team(directory: Path, data: dict[str, Any]) -> Path:
    path = directory / "team.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def fast_retry(attempts: int = 2) -> dict[str, Any]:
    return {"max_attempts": attempts, "initial_delay": 0.01, "max_delay": 0.05}


# --- secrets ------------------------------------------------------------------------------


def test_a_planted_key_and_token_are_found_nowhere_that_lasts(
    deployment: Deployment, tmp_path: Path
) -> None:
    with OpenAIServer() as llm, AgentService() as service:
        llm.script_for("good-model", Reply.text("fine", prompt_tokens=30, completion_tokens=7))
        # A server that echoes the credential it was sent in its error.
        llm.script_for(
            "echo-model",
            lambda request: Reply.failure(
                401, f"invalid key {request.authorization}", code="invalid_api_key"
            ),
        )
        good = service.script("/agent", output({"ok": True}))
        echo = service.script(
            "/echo",
            lambda request: ServiceReply(
                status=403, body=f"forbidden: {request.headers.get('authorization')}"
            ),
        )
        team = write_team(
            tmp_path,
            {
                "name": "secretive",
                "agents": {
                    "writer": {
                        "kind": "openai",
                        "base_url": llm.base_url,
                        "model": "good-model",
                        "api_key_env": "PLANTED_KEY",
                        "retry": fast_retry(),
                    },
                    "echoer": {
                        "kind": "openai",
                        "base_url": llm.base_url,
                        "model": "echo-model",
                        "api_key_env": "PLANTED_KEY",
                        "retry": fast_retry(),
                    },
                    "service": {
                        "kind": "http",
                        "url": good,
                        "headers": {"Authorization": "Bearer ${PLANTED_TOKEN}"},
                        "retry": fast_retry(),
                    },
                    "leaky": {
                        "kind": "http",
                        "url": echo,
                        "headers": {"Authorization": "Bearer ${PLANTED_TOKEN}"},
                        "retry": fast_retry(),
                    },
                },
                "workflow": {
                    "strategy": "parallel",
                    "steps": [
                        {"id": "write", "agent": "writer"},
                        {"id": "echo", "agent": "echoer"},
                        {"id": "call", "agent": "service"},
                        {"id": "leak", "agent": "leaky"},
                    ],
                },
            },
        )
        env = deployment.env
        run = run_manage(["run-team", str(team), "--json", "--timeout", "60"], env)
        data = json.loads(run.stdout)
        # The credentials did reach the servers: the search below is not vacuous.
        assert {r.authorization for r in llm.requests} == {f"Bearer {KEY}"}
        assert {r.headers.get("authorization") for r in service.requests()} == {f"Bearer {TOKEN}"}
    steps = {step["id"]: step for step in data["steps"]}
    assert steps["write"]["status"] == steps["call"]["status"] == "completed", describe(run)
    assert steps["echo"]["status"] == steps["leak"]["status"] == "failed"
    assert "[redacted]" in steps["echo"]["error"] and "[redacted]" in steps["leak"]["error"]

    # A run left in the broker: a queue no worker reads holds its messages.
    queued = run_manage(
        ["run-team", str(team), "--no-wait"], {**env, "TROUPE_QUEUE": "nobody-reads-this"}
    )
    outputs = [
        run,
        queued,
        run_manage(["status", data["execution_id"], "--json"], env),
        run_manage(["status", data["execution_id"]], env),
        run_manage(["validate", str(team)], env),
        run_manage(["agents"], env),
        run_manage(["breakers"], env),
    ]
    for result in outputs:
        assert result.returncode in (0, 1), describe(result)
        for secret in (KEY, TOKEN):
            assert secret not in result.stdout + result.stderr, describe(result)

    dump = subprocess.run(
        ["pg_dump", "--data-only", deployment.database_url.replace("+psycopg2", "")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "PLANTED_TOKEN" in dump  # the stored spec names the variable...
    assert KEY not in dump and TOKEN not in dump  # ...and holds no value

    redis_bytes = _redis_dump(deployment.redis_url)
    assert b"nobody-reads-this" in redis_bytes  # the queued run's messages are in it
    assert KEY.encode() not in redis_bytes and TOKEN.encode() not in redis_bytes

    log = deployment.log.read_text(encoding="utf-8", errors="replace")
    assert "execution" in log
    assert KEY not in log and TOKEN not in log


def _redis_dump(url: str) -> bytes:
    """Every key and value of the session's Redis database, serialized (DUMP)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        chunks = []
        for key in client.scan_iter(count=1000):
            chunks.append(key)
            chunks.append(client.dump(key) or b"")
        return b"\n".join(chunks)
    finally:
        client.close()


# --- budgets ------------------------------------------------------------------------------


def test_twenty_budgeted_model_calls_at_once_never_overshoot(
    deployment: Deployment, tmp_path: Path
) -> None:
    """Each call may produce up to 100 tokens and actually reports 15; the model answers
    after 1 s, so all 20 reserve before any settles. The budget holds a few worst cases:
    those calls run, the rest fail with BudgetExceeded without reaching the server."""
    budget_tokens = 1500
    with OpenAIServer(
        default=Reply.text("ok", prompt_tokens=10, completion_tokens=5, delay=1.0)
    ) as llm:
        team = write_team(
            tmp_path,
            {
                "name": "budgeted",
                "budget": {"max_tokens": budget_tokens},
                "agents": {
                    "model": {
                        "kind": "openai",
                        "base_url": llm.base_url,
                        "model": "gpt-4o-mini",
                        "api_key_env": None,
                        "max_tokens": 100,
                        "retry": fast_retry(3),
                    }
                },
                "workflow": {
                    "strategy": "parallel",
                    "steps": [
                        {"id": f"s{i:02d}", "agent": "model", "task": "Say ok."}
                        for i in range(WIDTH)
                    ],
                },
            },
        )
        with BudgetWatch(deployment.database_url) as watch:
            run = run_manage(
                ["run-team", str(team), "--json", "--timeout", "60"], deployment.env, timeout=90
            )
        served = llm.served
    data = json.loads(run.stdout)
    steps = data["steps"]
    completed = [s for s in steps if s["status"] == "completed"]
    refused = [s for s in steps if s["status"] == "failed"]
    assert len(completed) + len(refused) == WIDTH, describe(run)
    assert completed and refused, describe(run)
    assert all(s["error"].startswith("BudgetExceeded: budget exceeded") for s in refused)
    assert all(s["attempts"] == 1 for s in refused)  # permanent: never retried
    # Only admitted calls reached the model, each once.
    assert served == len(completed)
    # Each worst case is at least its 100 tokens out: no more than 15 could have fit.
    assert len(completed) <= budget_tokens // 100
    assert watch.samples > 10
    assert 0 < watch.peak <= budget_tokens
    assert data["usage"]["tokens_in"] + data["usage"]["tokens_out"] == 15 * len(completed)


class BudgetWatch:
    """Samples every execution's committed tokens every 10 ms; keeps the highest."""

    def __init__(self, database_url: str) -> None:
        self._engine = create_engine(database_url, poolclass=NullPool)
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> BudgetWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()

    def _run(self) -> None:
        with self._engine.connect() as connection:
            while not self._stop.wait(0.01):
                committed = connection.execute(
                    text("SELECT coalesce(max(committed_tokens), 0) FROM troupe_executions")
                ).scalar_one()
                connection.commit()
                self.samples += 1
                self.peak = max(self.peak, int(committed))
