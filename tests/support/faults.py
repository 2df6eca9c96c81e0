"""Fault-injection helpers: agents that leave evidence in files, real processes to kill.

Agents append one JSON line per event to a *side-effect file* whose path comes with the
execution input (``{"log": PATH, ...}``), so a test counts calls from the files, not from
Troupe's own records. Processes (workers, beat) run in their own process group, so a test
can SIGKILL a worker together with its prefork children, and always cleans them up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.support.services import MANAGE, PYTHON, ROOT, tail

T = TypeVar("T")

# The health probe (a callable without arguments) finds the flag file here.
FLAG_ENV = "FAULTS_FLAG_FILE"
UP = "up"
DOWN = "down"

# Short settings: every recovery mechanism fires within seconds.
FAST_SETTINGS: dict[str, str] = {
    "TROUPE_VISIBILITY_TIMEOUT": "8",
    "TROUPE_LEASE_INTERVAL": "0.5",
    "TROUPE_UNACKED_RESTORE_INTERVAL": "1",
    "TROUPE_REAP_INTERVAL": "1",
    "TROUPE_STALL_TIMEOUT": "4",
    "TROUPE_HEARTBEAT_INTERVAL": "0.5",
}


# --- agents --------------------------------------------------------------------------------


def _options(call: Any) -> dict[str, Any]:
    value = call.input
    if not isinstance(value, dict) or "log" not in value:
        raise ValueError(f"fault agents need an input like {{'log': PATH}}, got {value!r}")
    return value


def note(path: str | Path, call: Any, event: str, **extra: Any) -> None:
    """Append one line: what happened, to which step and attempt, where and when."""
    line = {
        "event": event,
        "step": call.step_id,
        "attempt": call.attempt,
        "t": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **extra,
    }
    data = (json.dumps(line) + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)  # one small O_APPEND write: whole lines even across processes
    finally:
        os.close(fd)


def _seconds(options: Mapping[str, Any], step_id: str) -> float:
    sleep = options.get("sleep", 0)
    if isinstance(sleep, dict):
        sleep = sleep.get(step_id, sleep.get("*", 0))
    return float(sleep)


def record(call: Any) -> dict[str, Any]:
    """Records "start", sleeps ``input.sleep`` seconds (a number, or step id → seconds
    with "*" as the default), records "end"."""
    options = _options(call)
    note(options["log"], call, "start")
    time.sleep(_seconds(options, call.step_id))
    note(options["log"], call, "end")
    return {"step": call.step_id, "pid": os.getpid()}


def hang(call: Any) -> None:
    """Records "start", then sleeps for a minute: only a time limit gets rid of it."""
    options = _options(call)
    note(options["log"], call, "start")
    time.sleep(60)
    note(options["log"], call, "end")


def flag_state(path: str | Path | None = None) -> str:
    flag = path or os.environ.get(FLAG_ENV)
    if not flag:
        return DOWN
    try:
        return Path(flag).read_text(encoding="utf-8").strip() or DOWN
    except OSError:
        return DOWN


def flagged(call: Any) -> dict[str, str]:
    """Records every call; fails unless the flag file (``input.flag``) says "up"."""
    options = _options(call)
    state = flag_state(options.get("flag"))
    note(options["log"], call, "call", flag=state)
    if state != UP:
        raise RuntimeError(f"{call.step_id}: the service behind this agent is {state}")
    return {"step": call.step_id, "flag": state}


def flag_health() -> bool:
    """Health probe for ``flagged``: healthy exactly when the flag file says "up"."""
    return flag_state() == UP


# --- side-effect files ---------------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def events(path: Path, event: str, step: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in read_events(path) if e["event"] == event and (step is None or e["step"] == step)
    ]


# --- team files ----------------------------------------------------------------------------


def agent_entry(
    target: str,
    *,
    timeout: float = 5,
    retry: Mapping[str, Any] | None = None,
    breaker: Mapping[str, Any] | None = None,
    health: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An agent entry; the default retry policy is one attempt, no delay."""
    entry: dict[str, Any] = {
        "kind": "python",
        "target": target,
        "timeout": timeout,
        "retry": dict(
            retry
            or {
                "max_attempts": 1,
                "initial_delay": 0,
                "backoff": 1,
                "max_delay": 0,
                "jitter": "none",
            }
        ),
    }
    if breaker is not None:
        entry["breaker"] = dict(breaker)
    if health is not None:
        entry["health"] = dict(health)
    return entry


def write_team_file(
    directory: Path,
    name: str,
    strategy: str,
    steps: Iterable[tuple[str, str] | Mapping[str, Any]],
    agents: Mapping[str, Mapping[str, Any]],
) -> Path:
    """A team file; each step is a (step id, agent name) pair or a full step mapping."""
    import yaml

    data = {
        "name": name,
        "agents": {key: dict(value) for key, value in agents.items()},
        "workflow": {
            "strategy": strategy,
            "steps": [
                dict(step) if isinstance(step, Mapping) else {"id": step[0], "agent": step[1]}
                for step in steps
            ],
        },
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# --- waiting -------------------------------------------------------------------------------


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


# --- processes -----------------------------------------------------------------------------


@dataclass
class Service:
    """A long-lived `manage.py` subprocess (worker, beat) in its own process group."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, str(MANAGE), *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 60) -> str:
        return tail(self.log_path, lines)

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)

        def probe() -> re.Match[str] | None:
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited with {self.process and self.process.returncode}:\n"
                    + self.tail()
                )
            return regex.search(self.log())

        return wait_for(probe, timeout, f"{self.name} to log {pattern!r}", details=self.tail)

    def kill9(self) -> None:
        """SIGKILL the whole process group: the parent and every prefork child."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)

    def stop(self, grace: float = 8.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            # The parent shuts down warm and takes its pool children with it.
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        # Whatever is left of the group (prefork children of a dead parent, too).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)


def worker_service(
    env: dict[str, str], node: str, log_dir: Path, *, concurrency: int = 1
) -> Service:
    """A `manage.py worker -c N -n NODE@host`; ``.name`` is its full hostname."""
    hostname = f"{node}@{socket.gethostname()}"
    return Service(
        name=hostname,
        args=["worker", "-c", str(concurrency), "-n", hostname, "-l", "INFO"],
        env=env,
        log_path=log_dir / f"{node}.log",
    )


def beat_service(env: dict[str, str], log_dir: Path, name: str = "beat") -> Service:
    return Service(
        name=name, args=["beat", "-l", "INFO"], env=env, log_path=log_dir / f"{name}.log"
    )


def wait_ready(services: Iterable[Service], timeout: float = 30.0) -> None:
    """Wait for each worker's "ready." log line (Celery logs it once it consumes)."""
    for service in services:
        service.wait_for_log(re.escape(f"{service.name} ready."), timeout)


class Cluster:
    """Every process a test started: stopped at the end, logs attached on failure."""

    def __init__(self, node: Any = None) -> None:
        self.node = node
        self.services: list[Service] = []
        self.watched: list[Service] = []

    def add(self, service: Service) -> Service:
        self.services.append(service)
        return service

    def watch(self, service: Service) -> Service:
        """Include a process someone else owns (a shared worker) in the failure logs."""
        self.watched.append(service)
        return service

    def start(self, *services: Service) -> None:
        for service in services:
            self.add(service).start()

    def logs(self, lines: int = 60) -> dict[str, str]:
        return {s.name: s.tail(lines) for s in [*self.watched, *self.services]}

    @contextlib.contextmanager
    def dump_on_failure(self, lines: int = 80) -> Iterator[None]:
        """Attach every process's log tail to the failing test's report."""
        try:
            yield
        except BaseException:
            for name, text in self.logs(lines).items():
                if self.node is not None:
                    self.node.add_report_section("call", f"log of {name} (tail)", text)
                else:  # pragma: no cover
                    print(f"--- log of {name} (tail) ---\n{text}")
            raise

    def stop_all(self, grace: float = 1.5) -> None:
        """SIGTERM every process at once, then SIGKILL whatever is left after ``grace``
        seconds: by then the test has checked everything, so a slow warm shutdown only
        costs time."""
        for service in self.services:
            if service.alive and service.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in reversed(self.services):
            service.stop(grace=max(0.1, deadline - time.monotonic()))


# --- the database, read directly -----------------------------------------------------------


def query(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def attempt_rows(database_url: str, execution_id: str) -> list[dict[str, Any]]:
    return query(
        database_url,
        "SELECT step_id, attempt, agent, task_id, worker, started_at, finished_at,"
        " duration_ms, outcome, error_type, error_message"
        " FROM troupe_attempts WHERE execution_id = :id ORDER BY id",
        id=execution_id,
    )


def step_rows(database_url: str, execution_id: str) -> list[dict[str, Any]]:
    return query(
        database_url,
        "SELECT step_id, status, attempts, started_at, finished_at, error_type, error_message,"
        " reason FROM troupe_steps WHERE execution_id = :id ORDER BY position",
        id=execution_id,
    )


def execution_row(database_url: str, execution_id: str) -> dict[str, Any]:
    rows = query(
        database_url,
        "SELECT id, status, error, created_at, started_at, finished_at, cancel_requested_at"
        " FROM troupe_executions WHERE id = :id",
        id=execution_id,
    )
    assert rows, f"no execution {execution_id} in {database_url}"
    return rows[0]


def breaker_row(database_url: str, agent: str) -> dict[str, Any] | None:
    rows = query(
        database_url,
        "SELECT key, state, consecutive_failures, opened_at, next_trial_at, half_open_calls,"
        " probe_failures, last_error, version FROM troupe_breakers WHERE key = :key",
        key=agent,
    )
    return rows[0] if rows else None
