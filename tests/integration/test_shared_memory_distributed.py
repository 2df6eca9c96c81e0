"""Shared memory under real concurrency: a `manage.py worker --pool threads -c 8` on Redis
and PostgreSQL runs 20 parallel steps that each read the memory, wait, then write the
same keys under every rule and one key of their own. Their reads go stale while the
others write; no update may be lost, and every version is counted."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.services import WorkerProcess, describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WIDTH = 20


@pytest.fixture(scope="module")
def threads_worker(
    redis_url: str, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    database = f"troupe_test_{os.getpid()}_memory"
    url = postgres.create(database)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": url,
            "TROUPE_QUEUE": f"troupe-memory-{os.getpid()}",
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("memory-state")),
        }
    )
    upgrade = run_manage(["db", "upgrade"], env)
    assert upgrade.returncode == 0, describe(upgrade)
    worker = WorkerProcess(
        env=env,
        hostname=f"troupe-memory-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path_factory.mktemp("memory-worker") / "worker.log",
        concurrency=8,
        pool="threads",
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env
    finally:
        worker.stop()
        postgres.drop(database)


def json_of(args: list[str], env: dict[str, str]) -> Any:
    result = run_manage([*args, "--json"], env, timeout=150)
    assert result.returncode == 0, describe(result)
    return json.loads(result.stdout)


def test_twenty_parallel_steps_lose_no_update(
    threads_worker: dict[str, str], tmp_path: Path
) -> None:
    steps = [f"s{i:02d}" for i in range(WIDTH)]
    team = {
        "name": "shared-memory-race",
        "memory": {"log": "append", "total": "sum", "seen": "merge"},
        "agents": {
            "contributor": {
                "kind": "python",
                "target": "tests.support.memory_agents:contributor",
                "timeout": 30,
            }
        },
        "workflow": {
            "strategy": "parallel",
            "steps": [{"id": sid, "agent": "contributor"} for sid in steps],
        },
    }
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(team), encoding="utf-8")

    report = json_of(
        ["run-team", str(path), "--input-json", '{"pause": 0.3}', "--timeout", "120"],
        threads_worker,
    )
    assert report["status"] == "completed", report
    execution_id = report["execution_id"]
    # Steps ran at once: several read the total before anyone had written it.
    stale = [sid for sid, out in report["output"].items() if out["total_seen"] == 0]
    assert len(stale) >= 2, report["output"]

    context = json_of(["context", execution_id], threads_worker)
    memory = context["memory"]
    assert context["memory_version"] == WIDTH
    assert sorted(memory["log"]) == steps
    assert memory["total"] == WIDTH
    assert memory["seen"] == dict.fromkeys(steps, 1)
    keys = {key["key"]: key for key in context["keys"]}
    for key in ("log", "total", "seen", "last"):
        assert keys[key]["version"] == WIDTH, keys[key]
    for sid in steps:
        assert (keys[f"own/{sid}"]["value"], keys[f"own/{sid}"]["version"]) == (1, 1)

    history = json_of(["context", execution_id, "--history", "last"], threads_worker)
    assert [write["version"] for write in history] == list(range(1, WIDTH + 1))
    assert sorted(write["memory_version"] for write in history) == list(range(1, WIDTH + 1))
    assert sorted(write["writer_step"] for write in history) == steps
    # The first write found nothing; each of the 19 others overwrote the one before.
    assert history[0]["previous"] is None
    assert [w["previous"] for w in history[1:]] == [w["value"] for w in history[:-1]]
    assert memory["last"] == history[-1]["value"]

    # Each step read the memory once, before its own batch: its recorded version is
    # that of some batch before it (0 for those that read before anyone wrote).
    status = json_of(["status", execution_id, "--attempts"], threads_worker)
    seen = [attempt["context_version"] for attempt in status["attempts"]]
    assert len(seen) == WIDTH and all(0 <= version < WIDTH for version in seen), seen
    assert seen.count(0) >= len(stale)
