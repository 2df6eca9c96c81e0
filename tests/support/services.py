"""Subprocess helpers: run `manage.py` as a user would, and manage a worker process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "manage.py"
PYTHON = sys.executable


def subprocess_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without any TROUPE_* variable, project root importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TROUPE_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    # Wide, plain output from rich, so tables do not wrap or carry escape codes.
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    env.pop("FORCE_COLOR", None)
    env.update(overrides or {})
    return env


def run_manage(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    timeout: float = 60,
    cwd: Path = ROOT,
) -> subprocess.CompletedProcess[str]:
    """Run ``python manage.py ARGS`` (from the project root unless told) and capture its
    output."""
    return subprocess.run(
        [PYTHON, str(MANAGE), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """For assertion messages: the command, its exit code and both streams."""
    return (
        f"$ {' '.join(map(str, result.args))}\nexit {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class WorkerProcess:
    """A `manage.py worker` subprocess, in its own process group."""

    env: dict[str, str]
    hostname: str
    log_path: Path
    concurrency: int = 2
    cwd: Path = ROOT
    pool: str = "prefork"
    # More `manage.py worker` options (e.g. --metrics-port).
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    PYTHON,
                    str(MANAGE),
                    "worker",
                    "-c",
                    str(self.concurrency),
                    "--pool",
                    self.pool,
                    "-n",
                    self.hostname,
                    "-l",
                    "INFO",
                    *self.extra_args,
                ],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ping(self, timeout: float = 1.0) -> bool:
        """True when a worker on this broker answers a Celery control ping."""
        code = (
            "import sys\n"
            "from workers.app import app\n"
            f"replies = app.control.ping(timeout={timeout})\n"
            f"sys.exit(0 if any({self.hostname!r} in r for r in replies) else 1)\n"
        )
        result = subprocess.run(
            [PYTHON, "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            timeout=30,
            check=False,
        )
        return result.returncode == 0

    def conf(self, timeout: float = 5.0) -> dict[str, Any]:
        """The Celery settings the running worker reports (`celery inspect conf`): those
        that differ from Celery's defaults."""
        code = (
            "import json\n"
            "from workers.app import app\n"
            f"inspect = app.control.inspect([{self.hostname!r}], timeout={timeout})\n"
            f"print(json.dumps((inspect.conf() or {{}}).get({self.hostname!r})))\n"
        )
        result = subprocess.run(
            [PYTHON, "-c", code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30 + timeout,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        conf = json.loads(result.stdout)
        assert isinstance(conf, dict), f"{self.hostname} did not answer:\n{result.stderr}"
        return conf

    def wait_ready(self, deadline_seconds: float = 25.0) -> None:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(
                    f"the worker exited with {self.process and self.process.returncode}:\n"
                    + tail(self.log_path)
                )
            if self.ping():
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"the worker did not answer within {deadline_seconds:g}s:\n" + tail(self.log_path)
        )

    def stop(self, grace: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        # Prefork children left behind by a killed parent share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
