"""7. Embedded mode: no broker, Celery's in-memory transport, a worker thread inside the
calling process, SQLite state. Troupe vs a raw Celery app set up the same way (in-memory
transport polled every 10 ms, cache+memory results, a threads WorkController of the same
concurrency inside the process).

Each side lives in its own long-running child process (``python -m bench.embedded troupe``
or ``raw``) that reads commands on stdin and answers one JSON line per command, so both
stay warm while the parent alternates them:

    example     the code-audit example team on its sample project (raw: the same agent
                functions as a chord of the three scanners, then the fixer, then the reporter)
    steps N     a sequential team of N no-op steps (raw: a chain of N no-op tasks)

A cold figure is also taken: ``manage.py run-team`` of the example team (what `make demo`
runs) vs ``python -m bench.embedded raw --once example``, each a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from bench.cluster import die_with_parent
from bench.env import MANAGE, PYTHON, ROOT, BenchError

EXAMPLE_TEAM = "examples/code_audit/team.yaml"
EXAMPLE_INPUT = "examples/code_audit/sample_project"
SCANNERS = ("syntax", "todos", "secrets")
POLL = 0.01


# --- the children -------------------------------------------------------------------------


class TroupeSide:
    def __init__(self) -> None:
        from bench.troupe_client import TroupeClient
        from orchestration import Team
        from orchestration.client.runtime import get_runtime

        started = time.perf_counter()
        get_runtime().ensure_worker()
        self.startup = time.perf_counter() - started
        self.client = TroupeClient()
        self.example = Team.load(ROOT / EXAMPLE_TEAM)
        self._steps: dict[int, Any] = {}

    def run_example(self, timeout: float) -> dict[str, Any]:
        timing = self.client.run(self.example, EXAMPLE_INPUT, timeout=timeout)
        return {"seconds": timing.wall, "db_seconds": timing.db}

    def run_steps(self, count: int, timeout: float) -> dict[str, Any]:
        from bench.teams import noop_team

        team = self._steps.get(count)
        if team is None:
            team = self._steps[count] = self.client.team(
                noop_team(f"bench-embedded-{count}", "sequential", count)
            )
        timing = self.client.run(team, timeout=timeout)
        return {"seconds": timing.wall, "db_seconds": timing.db}


class RawSide:
    def __init__(self, concurrency: int) -> None:
        from bench import raw_embedded

        started = time.perf_counter()
        self.app = raw_embedded.app
        self.module = raw_embedded
        self.worker = raw_embedded.start_worker(concurrency)
        self.startup = time.perf_counter() - started

    def run_example(self, timeout: float) -> dict[str, Any]:
        started = time.perf_counter()
        result = self.module.example_canvas(str(ROOT / EXAMPLE_INPUT)).apply_async()
        output = result.get(timeout=timeout, interval=POLL, disable_sync_subtasks=False)
        seconds = time.perf_counter() - started
        if not isinstance(output, dict) or "verdict" not in output:
            raise BenchError(f"raw example returned {output!r}")
        return {"seconds": seconds}

    def run_steps(self, count: int, timeout: float) -> dict[str, Any]:
        started = time.perf_counter()
        self.module.noop_chain(count).apply_async().get(
            timeout=timeout, interval=POLL, disable_sync_subtasks=False
        )
        return {"seconds": time.perf_counter() - started}


def child_main(side_name: str, concurrency: int, once: str | None, timeout: float) -> int:
    side: TroupeSide | RawSide = TroupeSide() if side_name == "troupe" else RawSide(concurrency)
    if once is not None:
        result = (
            side.run_example(timeout) if once == "example" else side.run_steps(int(once), timeout)
        )
        print(json.dumps(result), flush=True)
        return 0
    print(json.dumps({"ready": side.startup}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        try:
            if command[0] == "example":
                result = side.run_example(timeout)
            elif command[0] == "steps":
                result = side.run_steps(int(command[1]), timeout)
            else:
                result = {"error": f"unknown command {command[0]!r}"}
        except Exception as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
    return 0


# --- the parent ---------------------------------------------------------------------------


def embedded_env(state_dir: Path, concurrency: int) -> dict[str, str]:
    """No broker (embedded mode), our own SQLite state, none of the caller's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "BENCH_RAW_"))}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env["TROUPE_STATE_DIR"] = str(state_dir)
    env["TROUPE_POLL_INTERVAL"] = str(POLL)
    env["TROUPE_WORKER_CONCURRENCY"] = str(concurrency)
    return env


class Child:
    """A running side, spoken to line by line with a time limit on every answer."""

    def __init__(self, side: str, env: dict[str, str], log: Path, concurrency: int) -> None:
        self.side = side
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [PYTHON, "-m", "bench.embedded", side, "--concurrency", str(concurrency)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._buffer = b""

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"embedded {self.side}: no answer within {timeout:g}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise BenchError(f"embedded {self.side} exited ({self.process.poll()})")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BenchError(f"embedded {self.side}: {answer['error']}")
        return answer

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        stdin: IO[bytes] | None = self.process.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
                self.process.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


def timed_command(argv: list[str], env: dict[str, str], timeout: float) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return seconds


def embedded(ctx: Any) -> None:
    """The benchmark (7): warm in-process figures, then the cold command line."""
    from bench.report import progress

    steps = ctx.sizes.embedded_steps
    concurrency = ctx.options.concurrency
    workdir: Path = ctx.env.workdir
    env = embedded_env(workdir / "embedded-state", concurrency)
    timeout = ctx.timeout(steps)
    children = {
        "raw": Child("raw", env, workdir / "embedded-raw.log", concurrency),
        "troupe": Child("troupe", env, workdir / "embedded-troupe.log", concurrency),
    }
    try:
        ready = {side: child.read(60)["ready"] for side, child in children.items()}
        for child in children.values():  # warm-up
            child.ask("example", timeout)
            child.ask(f"steps {steps}", timeout)

        def side(name: str, command: str) -> Callable[[], dict[str, Any]]:
            return lambda: children[name].ask(command, timeout)

        for label, command, size in (
            ("example_team", "example", 5),
            ("sequential_team", f"steps {steps}", steps),
        ):
            raw, troupe = ctx.alternate(
                f"embedded: {command}", side("raw", command), side("troupe", command)
            )
            ctx.emit(
                "embedded",
                label,
                "s",
                [t["seconds"] for t in troupe],
                [r["seconds"] for r in raw],
                size=size,
                troupe_db_seconds=sorted(t["db_seconds"] for t in troupe)[len(troupe) // 2],
                troupe_worker_startup_s=ready["troupe"],
                raw_worker_startup_s=ready["raw"],
            )
    finally:
        for child in children.values():
            child.stop()

    cli = [PYTHON, str(MANAGE), "run-team", EXAMPLE_TEAM, "--input", EXAMPLE_INPUT, "--json"]
    raw_cli = [PYTHON, "-m", "bench.embedded", "raw", "--once", "example"]
    raw_s, troupe_s = ctx.alternate(
        "embedded: cold command line",
        lambda: timed_command(raw_cli, env, timeout),
        lambda: timed_command(cli, env, timeout),
    )
    progress("embedded: done")
    ctx.emit(
        "embedded",
        "example_team_cold",
        "s",
        troupe_s,
        raw_s,
        note="a fresh process each: `manage.py run-team` of the example team vs "
        "`python -m bench.embedded raw --once example`",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("side", choices=["troupe", "raw"])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--once", help="run one command (example, or a step count) and exit")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    return child_main(args.side, args.concurrency, args.once, args.timeout)


if __name__ == "__main__":
    # A stray non-daemon thread must not keep a finished child alive.
    code = main()
    sys.stdout.flush()
    if threading.active_count() > 1:
        os._exit(code)
    sys.exit(code)
