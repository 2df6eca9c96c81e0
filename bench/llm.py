"""Benchmark 11: a thousand ``openai`` agent calls that a local chat-completions server
answers after a fixed delay, on one worker host with a threads pool, against raw Celery
making the same request with the same ``openai`` client.

Both sides call one server (``bench/openai_server.py``, a process of its own) that
answers every request "ok" after ``llm_wait_ms``. Troupe runs a team of ``llm_calls``
``openai`` agent steps and a join (``bench.teams.llm_team``); raw Celery runs a chord of
``llm_calls`` ``bench.raw.chat`` tasks and a join. Same broker, same pool, same number
of worker processes (``llm_workers``, each with a pool of ``llm_calls / llm_workers``
threads), alternately in the same run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from celery import chord, group

from bench.cluster import Process, die_with_parent
from bench.context import Context, median
from bench.env import PYTHON, ROOT, BenchEnv, BenchError
from bench.report import progress, rounded
from bench.teams import LLM_MODEL, LLM_QUESTION, llm_prompt, llm_team
from bench.troupe_client import TroupeClient
from bench.watch import PeakWatch, tagged_url
from bench.workloads import _median_timeline, _timeline

# The budget for 1,000 calls answered after 1 s, on one worker host.
LLM_BUDGET_SECONDS = 1.6
# Per request, generous: a call that waits this long has gone wrong.
CALL_TIMEOUT = 30.0


class ModelServer:
    """``python -m bench.openai_server`` as a subprocess, driven over its stdin."""

    def __init__(self, env: BenchEnv, delay: float) -> None:
        self._argv = [PYTHON, "-m", "bench.openai_server", "--delay", str(delay)]
        self._env = env.process_env()
        self._log = env.workdir / "openai-server.log"
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> ModelServer:
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                self._argv,
                cwd=ROOT,
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                preexec_fn=die_with_parent,
            )
        self.base_url = self._line()
        if not self.base_url.startswith("http://"):
            raise BenchError(f"the model server said {self.base_url!r}, not its URL")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/", 1)[0])

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def connections_from(self, processes: list[Process]) -> int:
        """TCP connections these processes hold open to the server now (the clients'
        pools keep every one they opened)."""
        return connections_to(self.port, [pid for p in processes for pid in p.group_pids()])

    def _ask(self, command: str) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None:
            raise BenchError("the model server is not running")
        process.stdin.write(command + "\n")
        process.stdin.flush()
        answer: dict[str, Any] = json.loads(self._line())
        return answer

    def _line(self) -> str:
        process = self._process
        stdout: IO[str] | None = process.stdout if process is not None else None
        line = stdout.readline() if stdout is not None else ""
        if not line:
            raise BenchError(f"the model server exited; its log: {self._log}")
        return line.strip()


def connections_to(port: int, pids: list[int]) -> int:
    """Established TCP connections to ``port`` on 127.0.0.1 whose socket belongs to one
    of ``pids``: their sockets' inodes (/proc/<pid>/fd) found in /proc/net/tcp."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as handle:
        next(handle, None)
        for line in handle:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@dataclass(frozen=True)
class Run:
    """One run: seconds, the peaks seen while it ran, and when the requests arrived."""

    seconds: float
    db_connections: int
    rss_mib: float
    http_connections: int
    peak_in_flight: int
    # Seconds from the run's start to the first, median and last request at the server.
    arrivals: dict[str, float]
    # Troupe only: offsets read from the audit trail (see workloads._timeline).
    timeline: dict[str, float] | None = None
    db_seconds: float | None = None


def llm(ctx: Context) -> None:
    """``llm_calls`` openai agent calls answered after ``llm_wait_ms`` and a join, vs a
    raw chord of as many chat-completions requests, on ``llm_workers`` worker processes
    of each kind with threads pools as wide as the calls between them."""
    width, workers = ctx.sizes.llm_calls, ctx.sizes.llm_workers
    wait = ctx.sizes.llm_wait_ms / 1000
    threads = math.ceil(width / workers)
    application = f"bench-llm-troupe-{os.getpid()}"
    worker_env = {"TROUPE_DATABASE_URL": tagged_url(ctx.env.database_url, application)}
    limit = ctx.timeout(width, per_second=50) + wait
    with (
        ModelServer(ctx.env, wait) as server,
        ctx.cluster(
            "llm",
            pool="threads",
            concurrency=threads,
            troupe_workers=workers,
            raw_workers=workers,
            troupe_env=worker_env,
        ) as cluster,
    ):
        from bench.raw_app import chat, join

        troupe = TroupeClient()
        team = troupe.team(llm_team(width, server.base_url, timeout=CALL_TIMEOUT))
        prompt = llm_prompt(LLM_QUESTION)

        def served(started: float) -> tuple[int, dict[str, float]]:
            stats = server.stats()
            if stats["served"] != width:
                raise BenchError(f"the model server got {stats['served']} requests, not {width}")
            arrivals = {
                key: stats[f"{key}_arrival"] - started for key in ("first", "median", "last")
            }
            return int(stats["peak_in_flight"]), arrivals

        def raw_run() -> Run:
            server.reset()
            with PeakWatch(ctx.env.database_url, cluster.raw) as watch:
                started = time.time()
                header = group(
                    chat.si(server.base_url, LLM_MODEL, prompt, CALL_TIMEOUT) for _ in range(width)
                )
                joined = chord(header, join.s()).apply_async().get(timeout=limit, propagate=False)
                seconds = time.time() - started
            if joined != width:
                raise BenchError(f"the raw chord's join got {joined!r}, not {width}")
            peak, arrivals = served(started)
            connections = server.connections_from(cluster.raw)
            return Run(seconds, 0, watch.peak_rss_mib, connections, peak, arrivals)

        def troupe_run() -> Run:
            server.reset()
            with PeakWatch(ctx.env.database_url, cluster.troupe, application) as watch:
                timing = troupe.run(team, {"question": LLM_QUESTION}, timeout=limit)
            if watch.samples < 2:
                raise BenchError(f"the peak watch took {watch.samples} sample(s) only")
            peak, arrivals = served(timing.started)
            return Run(
                timing.wall,
                watch.peak_connections,
                watch.peak_rss_mib,
                server.connections_from(cluster.troupe),
                peak,
                arrivals,
                _timeline(troupe, timing),
                timing.db,
            )

        # Full size once each: every thread of both pools is started and every
        # connection (HTTP, PostgreSQL) opened before anything is measured.
        raw_run()
        troupe_run()
        progress("llm: warmed up")
        raws: list[Run] = []
        troupes: list[Run] = []
        for index in range(ctx.pairs):
            raws.append(raw_run())
            troupes.append(troupe_run())
            progress(f"llm: pair {index + 1}/{ctx.pairs} done")
    _emit(ctx, raws, troupes, threads)


def _median_arrivals(runs: list[Run]) -> dict[str, float | None]:
    return {key: rounded(median([r.arrivals[key] for r in runs])) for key in runs[0].arrivals}


def _emit(ctx: Context, raws: list[Run], troupes: list[Run], threads: int) -> None:
    from orchestration.client.runtime import default_settings

    common: dict[str, Any] = {
        "size": ctx.sizes.llm_calls,
        "wait_s": ctx.sizes.llm_wait_ms / 1000,
        "pool": "threads",
        "concurrency": threads,
        "workers": ctx.sizes.llm_workers,
    }
    ctx.emit(
        "llm",
        "seconds",
        "s",
        [r.seconds for r in troupes],
        [r.seconds for r in raws],
        **common,
        troupe_db_seconds=median([r.db_seconds or 0.0 for r in troupes]),
        budget_seconds=LLM_BUDGET_SECONDS,
        timeline=_median_timeline(troupes),  # type: ignore[arg-type]
        troupe_arrivals=_median_arrivals(troupes),
        raw_arrivals=_median_arrivals(raws),
        troupe_peak_in_flight=[r.peak_in_flight for r in troupes],
        raw_peak_in_flight=[r.peak_in_flight for r in raws],
        note="start to recorded finish (Troupe), to the chord's result (raw); arrivals: "
        "seconds from the start to the first, median and last request at the server",
    )
    ctx.emit(
        "llm",
        "peak_db_connections",
        "connections",
        [float(r.db_connections) for r in troupes],
        None,
        **common,
        db_connections_setting=default_settings().db_connections,
        note="the Troupe workers' connections in pg_stat_activity, sampled every 20 ms",
    )
    ctx.emit(
        "llm",
        "http_connections",
        "connections",
        [float(r.http_connections) for r in troupes],
        [float(r.http_connections) for r in raws],
        **common,
        note="TCP connections each side's workers hold to the model server after each run: "
        "their pools keep each one until it has been idle 30 s, so about their peak",
    )
    ctx.emit(
        "llm",
        "peak_rss",
        "MiB",
        [r.rss_mib for r in troupes],
        [r.rss_mib for r in raws],
        **common,
        note="every process of the workers, sampled every 20 ms during each run",
    )
