"""PostgreSQL restarted in the middle of a run, on a PostgreSQL instance of this module's own
(initdb + pg_ctl in a temporary directory, on a free port), so restarting it disturbs
nobody else. A real `manage.py worker` and a waiting `manage.py run-team` ride it out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    FAST_SETTINGS,
    Cluster,
    Service,
    agent_entry,
    attempt_rows,
    events,
    query,
    step_rows,
    wait_for,
    wait_ready,
    worker_service,
    write_team_file,
)
from tests.support.services import MANAGE, PYTHON, ROOT, describe, run_manage, subprocess_env

pytestmark = pytest.mark.integration

PID = os.getpid()
STEPS = 20
OUTAGE = 2.0  # seconds PostgreSQL stays down


def _unavailable(message: str) -> None:
    """Skip when a service is missing, but fail on CI, where it must be there."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _postgres_bin() -> Path | None:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port(start: int = 55432, count: int = 400) -> int:
    for port in range(start + PID % 100, start + count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port in {start}..{start + count}")


@dataclass
class PrivatePostgres:
    bin_dir: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        # PostgreSQL refuses to run as root.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.command(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.root,
        )
        assert result.returncode == 0, describe(result) + "\n" + self.tail()
        return result

    def pg_ctl(self, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        return self.run(
            "pg_ctl",
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "30",
            "-o",
            options,
            *extra,
        )

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _postgres_bin()
    if bin_dir is None:
        _unavailable("initdb/pg_ctl not found (install the PostgreSQL server package)")
        raise AssertionError("unreachable")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root without runuser: cannot start PostgreSQL as postgres")
    root = Path(tempfile.mkdtemp(prefix="troupe-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(bin_dir, root, _free_port())
    started = False
    try:
        pg.run("initdb", "-D", str(pg.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        pg.pg_ctl("start")
        started = True
        admin = pg.url("postgres")
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text('CREATE DATABASE "troupe"'))
        finally:
            engine.dispose()
        yield pg
    finally:
        if started:
            with contextlib.suppress(Exception):
                pg.run("pg_ctl", "stop", "-D", str(pg.data), "-m", "immediate", "-w")
        shutil.rmtree(root, ignore_errors=True)


def _tolerant(fn: Any) -> Any:
    """Read from a database that may be restarting: None while it is down."""
    from sqlalchemy.exc import DBAPIError

    try:
        return fn()
    except DBAPIError:
        return None


def _epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@pytest.mark.timeout(90)
def test_run_survives_a_postgresql_restart(
    private_postgres: PrivatePostgres,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    pg = private_postgres
    database_url = pg.url("troupe")
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": database_url,
            "TROUPE_QUEUE": f"troupe-private-pg-{PID}",
            "TROUPE_STATE_DIR": str(tmp_path / "state"),
            **FAST_SETTINGS,
            # Leases outlive the outage: a lease that lapses while the database is away
            # makes the reaper guess the attempt lost and send it again, and this test
            # counts one success per step.
            "TROUPE_LEASE_INTERVAL": "1.5",
        }
    )
    upgrade = run_manage(["db", "upgrade"], env)
    assert upgrade.returncode == 0, describe(upgrade)

    cluster = Cluster(request.node)
    cluster.watch(Service(name="postgres", args=[], env={}, log_path=pg.log))
    worker = worker_service(env, f"faults-pg-{PID}", tmp_path, concurrency=1)
    cluster.start(worker)
    calls = tmp_path / "calls.jsonl"
    ids = [f"s{i:02d}" for i in range(STEPS)]
    team = write_team_file(
        tmp_path,
        "through-restart",
        "sequential",
        [(sid, "steady") for sid in ids],
        {"steady": agent_entry("tests.support.faults:record", timeout=5)},
    )
    client: subprocess.Popen[str] | None = None
    try:
        with cluster.dump_on_failure():
            wait_ready([worker])
            # The client waits through the restart too.
            client = subprocess.Popen(
                [
                    PYTHON,
                    str(MANAGE),
                    "run-team",
                    str(team),
                    "--json",
                    "--timeout",
                    "60",
                    "--input-json",
                    json.dumps({"log": str(calls), "sleep": 0.2}),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            wait_for(
                lambda: len(events(calls, "end")) >= 5,
                30,
                "five steps done before the restart",
                details=worker.tail,
            )
            # Stop (fast: every connection is cut), stay down for 2 s, start again.
            restart_began = time.time()
            pg.pg_ctl("stop", "-m", "fast")
            done_at_restart = len(events(calls, "end"))
            assert _tolerant(lambda: query(database_url, "SELECT 1")) is None, "still up"
            time.sleep(OUTAGE)
            pg.pg_ctl("start")
            restart_done = time.time()
            print(
                f"postgres down for {restart_done - restart_began:.2f}s with "
                f"{done_at_restart}/{STEPS} steps done"
            )
            assert done_at_restart < STEPS, "the run finished before the restart"

            stdout, stderr = client.communicate(timeout=60)
            result = subprocess.CompletedProcess(client.args, client.returncode, stdout, stderr)
            assert client.returncode == 0, describe(result)
            report = json.loads(stdout)
            assert report["status"] == "completed", report
            assert [(s["id"], s["status"]) for s in report["steps"]] == [
                (sid, "completed") for sid in ids
            ]

            started = wait_for(
                lambda: _tolerant(
                    lambda: query(database_url, "SELECT pg_postmaster_start_time() AS at")
                ),
                10,
                "the restarted PostgreSQL",
            )[0]["at"]
            assert _epoch(started) >= restart_began, "PostgreSQL was not restarted"

            execution_id = report["execution_id"]
            steps = step_rows(database_url, execution_id)
            assert [(s["step_id"], s["status"]) for s in steps] == [
                (sid, "completed") for sid in ids
            ]
            assert max(_epoch(s["finished_at"]) for s in steps) > restart_done
            rows = attempt_rows(database_url, execution_id)
            successes = [r["step_id"] for r in rows if r["outcome"] == "success"]
            assert successes == ids, rows
            extra = [
                (r["step_id"], r["attempt"], r["outcome"])
                for r in rows
                if r["outcome"] != "success"
            ]
            starts = events(calls, "start")
            called = Counter(e["step"] for e in starts)
            print(
                f"attempts besides one success per step: {extra}; "
                f"steps whose agent ran twice: {sorted(s for s, n in called.items() if n > 1)}"
            )
            assert {e["step"] for e in starts} == set(ids)
    finally:
        if client is not None and client.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            client.wait(5)
        cluster.stop_all()


@pytest.mark.timeout(120)
def test_parallel_delegations_ride_out_an_outage_and_a_starved_pool_at_default_settings(
    private_postgres: PrivatePostgres,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """40 delegations at once on a threads pool that may open 4 connections (so most
    wait for one), and PostgreSQL stopped for 3 s while they run, at default settings:
    every step completes, with exactly one success row each; nothing is left pending."""
    pg = private_postgres
    database = "troupe_starved"
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(pg.url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    database_url = pg.url(database)
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": database_url,
            "TROUPE_QUEUE": f"troupe-starved-{PID}",
            "TROUPE_STATE_DIR": str(tmp_path / "state"),
        }
    )
    upgrade = run_manage(["db", "upgrade"], env)
    assert upgrade.returncode == 0, describe(upgrade)
    cluster = Cluster(request.node)
    worker = worker_service(
        {**env, "TROUPE_DB_CONNECTIONS": "4"}, f"starved-{PID}", tmp_path, concurrency=40
    )
    worker.args = [*worker.args, "--pool", "threads"]
    cluster.start(worker)
    calls = tmp_path / "calls.jsonl"
    ids = [f"p{i:02d}" for i in range(40)]
    team = write_team_file(
        tmp_path,
        "starved",
        "parallel",
        [(sid, "steady") for sid in ids],
        {"steady": agent_entry("tests.support.faults:record", timeout=30)},
    )
    client: subprocess.Popen[str] | None = None
    try:
        with cluster.dump_on_failure():
            wait_ready([worker])
            client = subprocess.Popen(
                [
                    PYTHON,
                    str(MANAGE),
                    "run-team",
                    str(team),
                    "--json",
                    "--timeout",
                    "90",
                    "--input-json",
                    json.dumps({"log": str(calls), "sleep": 1.0}),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            wait_for(
                lambda: len(events(calls, "start")) >= 10,
                30,
                "delegations under way before the outage",
                details=worker.tail,
            )
            pg.pg_ctl("stop", "-m", "fast")
            time.sleep(3.0)
            pg.pg_ctl("start")
            stdout, stderr = client.communicate(timeout=90)
            result = subprocess.CompletedProcess(client.args, client.returncode, stdout, stderr)
            states = query(
                database_url,
                "SELECT step_id, status, attempts, waiting FROM troupe_steps"
                " WHERE status NOT IN ('completed')",
            )
            assert client.returncode == 0, describe(result) + json.dumps(states, default=str)
            report = json.loads(stdout)
            assert report["status"] == "completed", report
            rows = attempt_rows(database_url, report["execution_id"])
            successes = Counter(r["step_id"] for r in rows if r["outcome"] == "success")
            assert successes == Counter(ids), rows
    finally:
        if client is not None and client.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(client.pid, signal.SIGKILL)
            client.wait(5)
        cluster.stop_all()
