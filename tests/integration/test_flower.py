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

# One agent that refuses every input (a permanent error): its step fails at once.
REFUSING_TEAM = """
name: refusing
agents:
  refuser: {kind: python, target: "tests.support.metrics_agents:refuse"}
workflow:
  strategy: sequential
  steps: [{id: refuse, agent: refuser}]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Flower's API answers only with authentication (no FLOWER_UNAUTHENTICATED_API).
USER, PASSWORD = "operator", "flower-test-secret"
AUTH = (USER, PASSWORD)


def tasks_seen(port: int) -> dict[str, Any]:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2, auth=AUTH)
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses a socket listens on at ``port`` (Linux's /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    if len(address) == 8:
                        found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                    else:
                        found.add(address)
    return found


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
    env = {**events_worker, "TROUPE_FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    log = (tmp_path / "flower.log").open("w")
    # No --address: it listens on loopback by default.
    flower = subprocess.Popen(
        [sys.executable, "manage.py", "flower", "--port", str(port)],
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
        assert listening_addresses(port) == {"127.0.0.1"}
        # The credentials reach Flower through its environment, not its command line.
        assert PASSWORD not in Path(f"/proc/{flower.pid}/cmdline").read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=2).status_code == 401
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

        # A delegation whose attempt failed for good ends in FAILURE, with its error.
        team = tmp_path / "refusing.yaml"
        team.write_text(REFUSING_TEAM)
        result = run_manage(["run-team", str(team), "--input", "no", "--json"], events_worker)
        assert result.returncode == 1, describe(result)
        failed: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not failed:
            failed = [
                task
                for task in tasks_seen(port).values()
                if task.get("name") == "agent:refuser" and task.get("state") == "FAILURE"
            ]
            time.sleep(0.3)
        assert failed, tasks_seen(port)
        assert "DelegationFailed" in str(failed[0].get("exception")), failed[0]
        assert "refused 'no'" in str(failed[0].get("exception")), failed[0]
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(flower.pid, signal.SIGKILL)
        log.close()


@pytest.mark.parametrize("address", ["0.0.0.0", "", "::"])
def test_flower_refuses_to_listen_beyond_loopback_without_authentication(
    distributed_env: dict[str, str], address: str
) -> None:
    env = {k: v for k, v in distributed_env.items() if not k.startswith("FLOWER_")}
    result = run_manage(["flower", "--port", str(free_port()), "--address", address], env)
    assert result.returncode == 2, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "without authentication" in lines[0], describe(result)
    assert "TROUPE_FLOWER_BASIC_AUTH" in lines[0], describe(result)


def test_flower_refuses_malformed_credentials_without_echoing_them(
    distributed_env: dict[str, str],
) -> None:
    env = {**distributed_env, "TROUPE_FLOWER_BASIC_AUTH": "no-colon-secret"}
    result = run_manage(["flower", "--port", str(free_port()), "--address", "0.0.0.0"], env)
    assert result.returncode == 2, describe(result)
    assert "no-colon-secret" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, describe(result)
