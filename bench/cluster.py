"""Worker subprocesses: start, wait until they answer, measure their memory, stop.

Each worker runs in its own process group (its prefork children too), so stopping it,
or killing it with ``kill -9`` in the recovery script, reaches every process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from bench.env import MANAGE, PYTHON, ROOT, BenchEnv, BenchError

Kind = Literal["troupe", "raw", "beat"]
# Celery's pools that the benchmarks start workers with.
Pool = Literal["prefork", "threads", "solo"]

PAGE_KIB = 1024
PR_SET_PDEATHSIG = 1


@dataclass
class Process:
    """One long-running subprocess (a worker or beat) in its own process group."""

    kind: Kind
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"{self.name} is not started")
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def group_pids(self) -> list[int]:
        """The leader and every process still in its group (the prefork children)."""
        if self.process is None:
            return []
        return [pid for pid in _all_pids() if _pgid(pid) == self.process.pid]

    def rss_kib(self) -> dict[int, int]:
        """Resident memory (VmRSS, KiB) of each process of the group."""
        sizes = {}
        for pid in self.group_pids():
            value = vm_rss_kib(pid)
            if value is not None:
                sizes[pid] = value
        return sizes

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal_leader(self, signum: int) -> None:
        if self.alive and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the whole group: what a crashed machine or the OOM killer does."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def finish(self, grace: float) -> None:
        """Wait for a leader asked to stop; then SIGKILL whatever is left of the group."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, grace))
        self.kill_group()


def die_with_parent() -> None:
    """In the child before exec: be killed if the benchmark process dies (even by
    SIGKILL), so no worker outlives it. Linux only; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def vm_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def hostname(label: str) -> str:
    return f"{label}@{socket.gethostname()}"


def troupe_worker(
    env: BenchEnv,
    name: str,
    concurrency: int,
    loglevel: str,
    extra: dict[str, str] | None = None,
    pool: Pool = "prefork",
) -> Process:
    """``manage.py worker`` with this pool and concurrency; ``extra`` is added to its
    environment (e.g. TROUPE_DB_CONNECTIONS, a tagged TROUPE_DATABASE_URL)."""
    return Process(
        kind="troupe",
        name=name,
        argv=[
            PYTHON,
            str(MANAGE),
            "worker",
            "-c",
            str(concurrency),
            "--pool",
            pool,
            "-n",
            name,
            "-l",
            loglevel,
        ],
        env=env.process_env(extra),
        log_path=env.workdir / f"{name.split('@')[0]}.log",
    )


def raw_worker(
    env: BenchEnv,
    name: str,
    concurrency: int,
    loglevel: str,
    extra: dict[str, str] | None = None,
    pool: Pool = "prefork",
) -> Process:
    """``celery -A bench.raw_app worker`` with this pool and concurrency."""
    return Process(
        kind="raw",
        name=name,
        argv=[
            PYTHON,
            "-m",
            "celery",
            "-A",
            "bench.raw_app",
            "worker",
            "-c",
            str(concurrency),
            "-P",
            pool,
            "-Q",
            env.raw_queue,
            "-n",
            name,
            "-l",
            loglevel,
        ],
        env=env.process_env(extra),
        log_path=env.workdir / f"{name.split('@')[0]}.log",
    )


def beat_process(env: BenchEnv, name: str, loglevel: str) -> Process:
    return Process(
        kind="beat",
        name=name,
        argv=[PYTHON, str(MANAGE), "beat", "-l", loglevel],
        env=env.process_env(),
        log_path=env.workdir / f"{name}.log",
    )


def ping(names: list[str], timeout: float = 0.5) -> set[str]:
    """Which of these worker node names answer a control ping.

    Troupe's and the raw app's workers share the broker, hence the control exchange:
    the raw app asks for both (and needs no Troupe import).
    """
    from bench.raw_app import app

    replies = app.control.ping(destination=names, timeout=timeout)
    return {name for reply in replies or [] for name in reply}


class Cluster:
    """Troupe workers, raw workers and (optionally) beat for one benchmark."""

    def __init__(
        self,
        env: BenchEnv,
        *,
        tag: str,
        troupe_workers: int = 1,
        raw_workers: int = 1,
        concurrency: int = 2,
        loglevel: str = "WARNING",
        beat: bool = False,
        start_timeout: float = 60.0,
        stop_grace: float = 0.5,
        pool: Pool = "prefork",
        troupe_env: dict[str, str] | None = None,
        raw_env: dict[str, str] | None = None,
    ) -> None:
        """Workers of both kinds with the same pool and concurrency; ``troupe_env`` and
        ``raw_env`` are added to each kind's environment."""
        self.env = env
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        pid = os.getpid()
        self.troupe = [
            troupe_worker(
                env,
                hostname(f"{tag}-troupe{i}-{pid}"),
                concurrency,
                loglevel,
                extra=troupe_env,
                pool=pool,
            )
            for i in range(troupe_workers)
        ]
        self.raw = [
            raw_worker(
                env,
                hostname(f"{tag}-raw{i}-{pid}"),
                concurrency,
                loglevel,
                extra=raw_env,
                pool=pool,
            )
            for i in range(raw_workers)
        ]
        self.beat = [beat_process(env, f"{tag}-beat-{pid}", loglevel)] if beat else []

    @property
    def workers(self) -> list[Process]:
        return [*self.troupe, *self.raw]

    @property
    def processes(self) -> list[Process]:
        return [*self.workers, *self.beat]

    def __enter__(self) -> Cluster:
        try:
            for process in self.processes:
                process.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self) -> None:
        pending = {worker.name: worker for worker in self.workers if worker.alive}
        deadline = time.monotonic() + self.start_timeout
        while pending:
            for worker in self.processes:
                if not worker.alive:
                    raise BenchError(f"{worker.name} exited:\n{worker.tail()}")
            for name in ping(list(pending)):
                pending.pop(name, None)
            if pending and time.monotonic() > deadline:
                names = ", ".join(pending)
                tails = "\n".join(w.tail(20) for w in pending.values())
                raise BenchError(f"no answer within {self.start_timeout:g}s from {names}\n{tails}")
            if pending:
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to every leader at once, then SIGKILL what is left of each group.

        Celery's warm shutdown takes about 2 s even when idle; every run has finished by
        the time a benchmark stops its workers (and state is reset before the next), so
        the grace period is short by default."""
        for process in self.processes:
            process.signal_leader(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for process in self.processes:
            process.finish(deadline - time.monotonic())

    def restart(self, process: Process) -> None:
        """Start a stopped (or killed) worker again under the same name; wait for it."""
        process.kill_group()
        process.start()
        deadline = time.monotonic() + self.start_timeout
        while process.name not in ping([process.name]):
            if not process.alive:
                raise BenchError(f"{process.name} exited:\n{process.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{process.name} did not answer within {self.start_timeout:g}s")
            time.sleep(0.1)

    def by_hostname(self, hostname: str) -> Process:
        for process in self.workers:
            if process.name == hostname:
                return process
        raise BenchError(f"no worker named {hostname!r}")

    def rss_mib(self, kind: Kind) -> float:
        """Resident memory of every process of this kind's workers, MiB."""
        group = self.troupe if kind == "troupe" else self.raw
        return round(sum(sum(w.rss_kib().values()) for w in group) / PAGE_KIB, 1)

    def rss_detail(self, kind: Kind) -> dict[str, list[int]]:
        group = self.troupe if kind == "troupe" else self.raw
        return {w.name: sorted(w.rss_kib().values(), reverse=True) for w in group}
