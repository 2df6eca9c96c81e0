"""`python -m bench.recovery`: measured recovery times, one JSON line per figure.

(a) Breaker: an agent starts failing (a flag file it reads) under sequential traffic, with
    ``failure_threshold`` N and no retries. Measured from the failed call that opens the
    breaker (its attempt row's ``finished_at``) to the first dispatch rejected with
    CircuitOpen (the next attempt row, outcome ``rejected``), and from the agent going down.
(b) Worker kill: two Troupe workers (distinct ``-n`` names) and beat; a team whose one step
    sleeps 3 s. One second into the attempt, ``kill -9`` the process group of the worker
    running it (named by the attempt row's ``worker``). Measured from the kill to the next
    attempt row's ``started_at`` (the step resumed on the other worker), and to the
    execution's ``finished_at``. The raw baseline is the same with raw Celery (acks late,
    reject on worker lost): a task that sleeps 3 s, its worker's group killed, until the
    task starts again on the other worker (the broker redelivers it once the visibility
    timeout has passed) and until its result arrives.

Short settings for the run (client, workers and beat): visibility timeout 10 s, lease
interval 1 s (lease 3 s), unacked restore interval 1 s, reaper every 2 s, stall timeout 5 s.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.cluster import Cluster
from bench.env import BenchEnv, BenchError, prepare
from bench.report import emit, error_line, figure, progress

SHORT_SETTINGS = {
    "TROUPE_VISIBILITY_TIMEOUT": "10",
    "TROUPE_LEASE_INTERVAL": "1",
    "TROUPE_UNACKED_RESTORE_INTERVAL": "1",
    "TROUPE_REAP_INTERVAL": "2",
    "TROUPE_STALL_TIMEOUT": "5",
}
SLEEP = 3.0
KILL_AFTER = 1.0
POLL = 0.02


def _settings_note() -> dict[str, float]:
    return {k.removeprefix("TROUPE_").lower(): float(v) for k, v in SHORT_SETTINGS.items()}


def _until(what: str, timeout: float, probe: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL)


# --- (a) breaker ----------------------------------------------------------------------------


def breaker_recovery(env: BenchEnv, runs: int, threshold: int) -> None:
    from bench.breaker import trip
    from bench.context import median
    from bench.troupe_client import TroupeClient

    troupe = TroupeClient()
    trips = [
        trip(troupe, env.workdir, f"recovery{i}", threshold=threshold, timeout=30)
        for i in range(runs)
    ]
    progress("recovery: breaker measured")
    emit(
        figure(
            "recovery",
            "breaker_open_to_first_rejection",
            "s",
            [t.open_to_rejection for t in trips],
            None,
            down_to_first_rejection_s=median([t.down_to_rejection for t in trips]),
            failures_before_rejection=[t.failures for t in trips],
            failure_threshold=threshold,
            traffic="sequential single-step executions, one at a time",
        )
    )


# --- (b) worker kill ------------------------------------------------------------------------


def _troupe_kill(cluster: Cluster, timeout: float) -> dict[str, Any]:
    from bench.teams import sleepy_team
    from bench.troupe_client import TroupeClient, stamp

    troupe = TroupeClient()
    team = troupe.team(sleepy_team(timeout=6.0))
    execution_id = troupe.enqueue(team, {"seconds": SLEEP})

    def first_attempt() -> dict[str, Any] | None:
        rows = troupe.attempts(execution_id=execution_id)
        return rows[0] if rows else None

    attempt = _until("the first attempt", timeout, first_attempt)
    victim = cluster.by_hostname(attempt["worker"])
    time.sleep(max(0.0, stamp(attempt["started_at"]) + KILL_AFTER - time.time()))
    killed_at = time.time()
    victim.kill_group()
    progress(f"recovery: killed {victim.name} (group {victim.pid}) running attempt 1")

    def next_attempt() -> dict[str, Any] | None:
        rows = troupe.attempts(execution_id=execution_id)
        later = [row for row in rows if row["attempt"] > attempt["attempt"]]
        return later[0] if later else None

    resumed = _until("the step to resume", timeout, next_attempt)
    rows = troupe.wait([execution_id], timeout=timeout, started=killed_at)
    if rows[0]["status"] != "completed":
        raise BenchError(f"execution {execution_id} ended {rows[0]['status']}: {rows[0]['error']}")
    # Anything still to come (a second resume, a late redelivery) shows in the trail.
    time.sleep(2 * float(SHORT_SETTINGS["TROUPE_REAP_INTERVAL"]))
    attempts = troupe.attempts(execution_id=execution_id)
    lost = attempts[0]
    cluster.restart(victim)
    return {
        "resumed": stamp(resumed["started_at"]) - killed_at,
        "completed": stamp(rows[0]["finished_at"]) - killed_at,
        "lost_marked": stamp(lost["finished_at"]) - killed_at if lost["finished_at"] else None,
        "trail": [
            {
                "attempt": row["attempt"],
                "worker": row["worker"],
                "outcome": row["outcome"],
                "error_type": row["error_type"],
            }
            for row in attempts
        ],
        # Attempts begun after the one that resumed the step: each a duplicate agent call.
        "extra_attempts": sum(1 for row in attempts if row["attempt"] > resumed["attempt"]),
        "killed": victim.name,
        "resumed_on": resumed["worker"],
    }


def _raw_kill(cluster: Cluster, workdir: Path, index: int, timeout: float) -> dict[str, Any]:
    from bench.raw_app import sleepy

    marker = workdir / f"raw-kill-{index}.starts"
    result = sleepy.delay(SLEEP, str(marker))

    def starts() -> list[list[str]]:
        try:
            return [line.split() for line in marker.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    first = _until("the raw task to start", timeout, starts)[0]
    victim = cluster.by_hostname(first[1])
    time.sleep(max(0.0, float(first[0]) + KILL_AFTER - time.time()))
    killed_at = time.time()
    victim.kill_group()
    progress(f"recovery: killed {victim.name} (group {victim.pid}) running the raw task")
    second = _until("the raw task to start again", timeout, lambda: starts()[1:])[0]
    result.get(timeout=timeout)
    completed = time.time() - killed_at
    cluster.restart(victim)
    return {
        "resumed": float(second[0]) - killed_at,
        "completed": completed,
        "killed": victim.name,
        "resumed_on": second[1],
    }


def kill_recovery(env: BenchEnv, cluster: Cluster, runs: int, timeout: float) -> None:
    raws: list[dict[str, Any]] = []
    troupes: list[dict[str, Any]] = []
    for index in range(runs):
        raws.append(_raw_kill(cluster, env.workdir, index, timeout))
        troupes.append(_troupe_kill(cluster, timeout))
        progress(f"recovery: worker kill pair {index + 1}/{runs} done")
    common = {
        "sleep_s": SLEEP,
        "killed_after_s": KILL_AFTER,
        "settings": _settings_note(),
    }
    emit(
        figure(
            "recovery",
            "worker_kill_to_step_resumed",
            "s",
            [t["resumed"] for t in troupes],
            [r["resumed"] for r in raws],
            troupe_lost_marked_s=[
                None if t["lost_marked"] is None else round(t["lost_marked"], 3) for t in troupes
            ],
            troupe_extra_attempts=[t["extra_attempts"] for t in troupes],
            troupe_trails=[t["trail"] for t in troupes],
            raw_resumed_on=[r["resumed_on"] for r in raws],
            **common,
        )
    )
    emit(
        figure(
            "recovery",
            "worker_kill_to_completed",
            "s",
            [t["completed"] for t in troupes],
            [r["completed"] for r in raws],
            note="Troupe: to the execution's recorded finish; raw: to result.get() returning",
            **common,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recovery", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measure")
    parser.add_argument("--threshold", type=int, default=3, help="breaker failure_threshold")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes per worker")
    parser.add_argument("--timeout", type=float, default=60.0, help="limit of each wait, seconds")
    parser.add_argument("--only", choices=["breaker", "kill"], help="one part only")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)

    failures = 0
    with prepare(name="recovery", settings=SHORT_SETTINGS, keep_workdir=args.keep_logs) as env:
        progress(f"broker {env.broker_url}, database {env.database}, logs in {env.workdir}")
        from bench.env import reset_state

        reset_state(env)
        with Cluster(
            env,
            tag="recovery",
            troupe_workers=2,
            raw_workers=2,
            concurrency=args.concurrency,
            beat=True,
        ) as cluster:
            parts = [args.only] if args.only else ["breaker", "kill"]
            for part in parts:
                try:
                    if part == "breaker":
                        breaker_recovery(env, args.runs, args.threshold)
                    else:
                        kill_recovery(env, cluster, args.runs, args.timeout)
                except Exception as exc:
                    failures += 1
                    env.keep_workdir = True
                    traceback.print_exc(file=sys.stderr)
                    emit(error_line(f"recovery-{part}", f"{type(exc).__name__}: {exc}"))
    return 1 if failures else 0


def _exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: workers stopped, database dropped."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


if __name__ == "__main__":
    _exit_on_sigterm()
    sys.exit(main())
