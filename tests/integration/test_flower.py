"""Flower, as an operator opens it: every delegation appears under its agent's name."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.services import WorkerProcess, describe, run_manage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tasks_seen(port: int) -> dict[str, Any]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2)
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


@pytest.fixture
def events_worker(distributed: Any, tmp_path: Path) -> Any:
    """A worker of its own that sends task events from the start: then no delegation
    runs eagerly inside another's task, and Flower lists every one."""
    env = {
        **distributed.env,
        "TROUPE_TASK_EVENTS": "true",
        "TROUPE_QUEUE": "flower-" + str(os.getpid()),
    }
    worker = WorkerProcess(
        env=env,
        hostname=f"flower-{os.getpid()}@{socket.gethostname()}",
        log_path=tmp_path / "w.log",
    )
    worker.start()
    try:
        worker.wait_ready(30)
        yield env
    finally:
        worker.stop()


def test_flower_lists_each_delegation_under_its_agent_name(
    events_worker: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = {**events_worker, "FLOWER_UNAUTHENTICATED_API": "1"}
    log = (tmp_path / "flower.log").open("w")
    flower = subprocess.Popen(
        [sys.executable, "manage.py", "flower", "--port", str(port), "--address", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("flower did not answer:\n" + (tmp_path / "flower.log").read_text())
        wanted = {
            "agent:syntax-scanner",
            "agent:todo-scanner",
            "agent:secret-scanner",
            "agent:fixer",
            "agent:reporter",
        }
        # Workers send task events once Flower asks them to (it does every 5 s), as a
        # worker started before Flower would: run the team until Flower lists it.
        names: set[str] = set()
        runs = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not wanted <= names:
            result = run_manage(
                [
                    "run-team",
                    "examples/code_audit/team.yaml",
                    "--input",
                    "examples/code_audit/sample_project",
                    "--json",
                ],
                events_worker,
                timeout=60,
            )
            runs += 1
            assert result.returncode == 0, describe(result)
            listed_by = time.monotonic() + 3
            while time.monotonic() < listed_by and not wanted <= names:
                names = {str(task.get("name")) for task in tasks_seen(port).values()}
                time.sleep(0.3)
        assert wanted <= names, (runs, names)
        # No delegation may show under the bare task name instead of its agent's.
        assert "troupe.delegate" not in names, names
        succeeded = [
            task
            for task in tasks_seen(port).values()
            if str(task.get("name")).startswith("agent:") and task.get("state") == "SUCCESS"
        ]
        assert len(succeeded) >= len(wanted), succeeded
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
        log.close()
