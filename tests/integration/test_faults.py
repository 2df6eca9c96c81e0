"""Fault injection against real processes: Redis, PostgreSQL and `manage.py worker` / `beat`
subprocesses, with short timing settings so every recovery mechanism fires within seconds.

The module has its own PostgreSQL database and its own queue names (one per scenario), so
its workers never see another test's messages. Agents leave one line per call in a
side-effect file; "called at most once more" and "not called after the stop" are read from
those files, and the audit trail is read straight from PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.faults import (
    DOWN,
    FAST_SETTINGS,
    FLAG_ENV,
    UP,
    Cluster,
    Service,
    agent_entry,
    attempt_rows,
    beat_service,
    breaker_row,
    events,
    execution_row,
    query,
    read_events,
    step_rows,
    wait_for,
    wait_ready,
    worker_service,
    write_team_file,
)
from tests.support.services import describe, run_manage, subprocess_env

pytestmark = pytest.mark.integration

PID = os.getpid()
DATABASE = f"troupe_test_{PID}_faults"
QUEUE = f"troupe-faults-{PID}"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FINAL = {"completed", "failed", "cancelled"}


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults_db(postgres: Any) -> Iterator[str]:
    """A fresh PostgreSQL database of this module's own."""
    url = postgres.create(DATABASE)
    try:
        yield url
    finally:
        postgres.drop(DATABASE)


@pytest.fixture(scope="module")
def base_env(
    redis_url: str, faults_db: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Broker, migrated database and the short settings; each test picks its own queue."""
    env = subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": faults_db,
            "TROUPE_QUEUE": QUEUE,
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("faults-state")),
            **FAST_SETTINGS,
        }
    )
    upgrade = run_manage(["db", "upgrade"], env, timeout=60)
    assert upgrade.returncode == 0, describe(upgrade)
    return env


def queue_env(base_env: dict[str, str], suffix: str, **extra: str) -> dict[str, str]:
    return {**base_env, "TROUPE_QUEUE": f"{QUEUE}-{suffix}", **extra}


@pytest.fixture(scope="module")
def solo(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One worker (-c 1) on the module's "solo" queue, shared by tests that need just one."""
    env = queue_env(base_env, "solo")
    worker = worker_service(env, f"faults-solo-{PID}", tmp_path_factory.mktemp("solo"))
    worker.start()
    try:
        wait_ready([worker])
        yield worker
    finally:
        worker.stop(grace=1.5)


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The processes this test starts: all stopped at its end, whatever happened."""
    started = Cluster(request.node)
    try:
        yield started
    finally:
        started.stop_all()


# --- helpers -------------------------------------------------------------------------------


def run_json(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[Any, Any]:
    result = run_manage([*args, "--json"], env, timeout=timeout)
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(f"stdout is not one JSON value ({exc}):\n{describe(result)}")
    return result, data


def enqueue(team: Path, env: dict[str, str], input_value: Any) -> str:
    result = run_manage(
        ["run-team", str(team), "--no-wait", "--input-json", json.dumps(input_value)], env
    )
    assert result.returncode == 0, describe(result)
    execution_id = result.stdout.strip()
    assert UUID.match(execution_id), describe(result)
    return execution_id


def wait_finished(database_url: str, execution_id: str, timeout: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        row = execution_row(database_url, execution_id)
        return row if row["status"] in FINAL else None

    return wait_for(
        finished,
        timeout,
        f"execution {execution_id} to finish",
        interval=0.2,
        details=lambda: json.dumps(step_rows(database_url, execution_id), default=str, indent=1),
    )


def epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def finalize_count(service: Service, execution_id: str) -> int:
    """How often the worker finalized this execution (the last message of a canvas)."""
    return len(re.findall(rf"execution {execution_id} finalized", service.log()))


def finalized(service: Service, execution_id: str) -> bool:
    return finalize_count(service, execution_id) >= 1


# --- 1. kill -9 of a worker mid-delegation ----------------------------------------------------

# sequential: before → victim → after (each level one delegation, a plain chain);
# dag: the victim shares its level with "side", so the level is counted down in the
# database and never hears from the killed delegation.
KILL_SHAPES: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "sequential": (
        "sequential",
        [{"id": sid, "agent": "recorder"} for sid in ("before", "victim", "after")],
    ),
    "counted-level": (
        "dag",
        [
            {"id": "before", "agent": "recorder"},
            {"id": "victim", "agent": "recorder", "after": ["before"]},
            {"id": "side", "agent": "recorder", "after": ["before"]},
            {"id": "after", "agent": "recorder", "after": ["victim", "side"]},
        ],
    ),
}


@pytest.mark.timeout(100)
@pytest.mark.parametrize("shape", list(KILL_SHAPES))
def test_kill_9_of_a_worker_mid_delegation_recovers_on_the_other_worker(
    shape: str, base_env: dict[str, str], faults_db: str, cluster: Cluster, tmp_path: Path
) -> None:
    env = queue_env(base_env, f"kill-{shape}")
    first = worker_service(env, f"faults-a-{PID}", tmp_path)
    second = worker_service(env, f"faults-b-{PID}", tmp_path)
    beat = beat_service(env, tmp_path)
    cluster.start(first, second, beat)
    workers = {first.name: first, second.name: second}
    strategy, steps = KILL_SHAPES[shape]
    step_ids = [step["id"] for step in steps]
    others = [sid for sid in step_ids if sid != "victim"]
    with cluster.dump_on_failure():
        wait_ready([first, second])
        beat.wait_for_log(r"beat: Starting", 20)
        calls = tmp_path / "calls.jsonl"
        team = write_team_file(
            tmp_path,
            f"kill-nine-{shape}",
            strategy,
            steps,
            # A lost attempt counts against the retry policy: two attempts, one lost.
            {
                "recorder": agent_entry(
                    "tests.support.faults:record",
                    timeout=6,
                    retry={"max_attempts": 2, "initial_delay": 0, "max_delay": 0},
                )
            },
        )
        execution_id = enqueue(team, env, {"log": str(calls), "sleep": {"victim": 5.0}})

        # The victim's agent has recorded its side effect, and its attempt row says where.
        def victim_running() -> dict[str, Any] | None:
            if not events(calls, "start", "victim"):
                return None
            open_rows = [
                r
                for r in attempt_rows(faults_db, execution_id)
                if r["step_id"] == "victim" and r["outcome"] is None
            ]
            return open_rows[0] if open_rows else None

        running = wait_for(victim_running, 20, "the victim step to start")
        doomed = workers[running["worker"]]
        survivor = next(w for w in workers.values() if w is not doomed)
        killed_at = time.time()
        doomed.kill9()
        assert not doomed.alive

        final = wait_finished(faults_db, execution_id, 40)
        assert final["status"] == "completed", final

        rows = attempt_rows(faults_db, execution_id)
        victim = [r for r in rows if r["step_id"] == "victim"]
        assert [(r["attempt"], r["outcome"]) for r in victim] == [(1, "lost"), (2, "success")], rows
        assert victim[0]["worker"] == doomed.name
        assert victim[0]["error_type"] == "WorkerLost"
        assert victim[1]["worker"] == survivor.name
        assert sorted((r["step_id"], r["outcome"]) for r in rows if r["step_id"] != "victim") == [
            (sid, "success") for sid in sorted(others)
        ]
        assert [(s["step_id"], s["status"]) for s in step_rows(faults_db, execution_id)] == [
            (sid, "completed") for sid in step_ids
        ]

        recovery_start = epoch(victim[1]["started_at"]) - killed_at
        recovery_done = epoch(victim[1]["finished_at"]) - killed_at
        redelivered = victim[1]["task_id"] == victim[0]["task_id"]
        print(
            f"kill -9 ({shape}) recovery: attempt 2 started {recovery_start:.2f}s after the "
            f"kill, step done after {recovery_done:.2f}s, via "
            f"{'the redelivered message' if redelivered else 'the reaper resuming the run'}"
        )
        # Lease 1.5 s, reaper every 1 s, stall timeout 4 s, visibility timeout 8 s.
        assert recovery_start < 15

        if not redelivered:
            # The dead worker's unacknowledged message comes back once the visibility
            # timeout passes; that copy must not call the agent a third time. If it finds
            # the step decided it returns the recorded envelope and moves nothing on: the
            # step's level was decided once, and only that decision publishes the next.
            task = re.escape(victim[0]["task_id"])
            survivor.wait_for_log(rf"\[{task}\] received", 20)
            outcome = survivor.wait_for_log(rf"\[{task}\] (ignored|succeeded|retry)", 20)
            print(f"kill -9 ({shape}): the redelivered copy {outcome.group(1)}")
            assert finalize_count(survivor, execution_id) <= 1, survivor.tail()

        assert len(events(calls, "start", "victim")) == 2, read_events(calls)
        assert len(events(calls, "end", "victim")) == 1, read_events(calls)
        for sid in others:
            assert len(events(calls, "start", sid)) == 1, read_events(calls)
        assert execution_row(faults_db, execution_id)["status"] == "completed"
        status, data = run_json(["status", execution_id], env)
        assert status.returncode == 0, describe(status)
        assert data["status"] == "completed"
        assert [(s["id"], s["status"], s["attempts"]) for s in data["steps"]] == [
            (sid, "completed", 2 if sid == "victim" else 1) for sid in step_ids
        ]


@pytest.mark.timeout(60)
def test_reaper_leaves_a_long_call_with_a_live_lease_alone(
    base_env: dict[str, str], faults_db: str, cluster: Cluster, tmp_path: Path
) -> None:
    """The counterpart of the kill: nobody dies, the agent just takes longer than the stall
    timeout (4 s) while its lease is renewed every 0.5 s. The reaper must not take the
    execution for stalled and start the step a second time next to the running one."""
    env = queue_env(base_env, "long")
    worker = worker_service(env, f"faults-long-{PID}", tmp_path, concurrency=2)
    beat = beat_service(env, tmp_path)
    cluster.start(worker, beat)
    team = write_team_file(
        tmp_path,
        "long-call",
        "sequential",
        [("slow", "patient")],
        {"patient": agent_entry("tests.support.faults:record", timeout=7)},
    )
    calls = tmp_path / "calls.jsonl"
    with cluster.dump_on_failure():
        wait_ready([worker])
        beat.wait_for_log(r"beat: Starting", 20)
        execution_id = enqueue(team, env, {"log": str(calls), "sleep": 6.0})
        final = wait_finished(faults_db, execution_id, 30)
        rows = attempt_rows(faults_db, execution_id)
        resumed = re.findall(rf"reaper: .*resumed \[[^\]]*{execution_id}", worker.log())
        print(
            f"long call: {len(events(calls, 'start'))} agent call(s), attempts "
            f"{[(r['attempt'], r['outcome'], r['started_at'].isoformat()) for r in rows]}, "
            f"reaper resumed it {len(resumed)} time(s)"
        )
        assert final["status"] == "completed", final
        assert len(events(calls, "start")) == 1, read_events(calls)
        assert [(r["attempt"], r["outcome"]) for r in rows] == [(1, "success")], rows
        assert resumed == []


# --- 2. a circuit breaker shared by two worker processes ------------------------------------


@pytest.mark.timeout(100)
def test_breaker_opens_rejects_and_recovers_across_two_workers(
    base_env: dict[str, str], faults_db: str, cluster: Cluster, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    flag.write_text(DOWN, encoding="utf-8")
    env = queue_env(base_env, "breaker", **{FLAG_ENV: str(flag)})
    first = worker_service(env, f"faults-c-{PID}", tmp_path)
    second = worker_service(env, f"faults-d-{PID}", tmp_path)
    cluster.start(first, second)
    hostnames = {first.name, second.name}
    threshold, width = 3, 12
    # The breaker and the heartbeat belong to what `svc` calls, not to its name.
    svc_identity = "python:tests.support.faults:flagged"
    agents = {
        "svc": agent_entry(
            "tests.support.faults:flagged",
            timeout=2,
            breaker={"failure_threshold": threshold, "reset_timeout": 2},
            health={"target": "tests.support.faults:flag_health", "timeout": 1},
        )
    }
    fan_out = write_team_file(
        tmp_path,
        "breaker-fan-out",
        "parallel",
        [(f"p{i:02d}", "svc") for i in range(width)],
        agents,
    )
    calls = tmp_path / "calls.jsonl"
    payload = json.dumps({"log": str(calls), "flag": str(flag)})
    with cluster.dump_on_failure():
        wait_ready([first, second])

        # Batch 1: every call fails; the breaker opens after `threshold` of them.
        result, report = run_json(
            ["run-team", str(fan_out), "--input-json", payload, "--timeout", "40"], env
        )
        assert result.returncode == 1, describe(result)
        assert report["status"] == "failed"
        rows = attempt_rows(faults_db, report["execution_id"])
        failed = [r for r in rows if r["outcome"] == "error"]
        rejected = [r for r in rows if r["outcome"] == "rejected"]
        made = len(events(calls, "call"))
        # Calls admitted while closed: the threshold, plus at most one already in flight
        # on the other worker (each runs one delegation at a time).
        assert threshold <= made <= threshold + 1, rows
        assert len(failed) == made
        assert len(rejected) == width - made
        assert {r["error_type"] for r in rejected} == {"CircuitOpen"}
        assert {r["worker"] for r in rows} == hostnames
        circuit_open = [s for s in report["steps"] if s["error"].startswith("CircuitOpen: ")]
        assert len(circuit_open) == width - made

        # A third process reads the shared state.
        listing, breakers = run_json(["breakers"], env)
        assert listing.returncode == 0, describe(listing)
        (svc,) = [b for b in breakers if b["identity"] == svc_identity]
        assert svc["state"] == "open", breakers
        assert svc["failures"] >= threshold

        # Batch 2, against the open breaker: no call, or one trial call per cool-down (it
        # fails and re-opens the breaker for another 2 s); everything else is rejected.
        result, report = run_json(
            ["run-team", str(fan_out), "--input-json", payload, "--timeout", "40"], env
        )
        assert result.returncode == 1, describe(result)
        second_rows = attempt_rows(faults_db, report["execution_id"])
        trial_calls = len(events(calls, "call")) - made
        span = epoch(max(r["started_at"] for r in second_rows)) - epoch(
            min(r["started_at"] for r in second_rows)
        )
        print(f"breaker: batch 2 took {span:.2f}s with {trial_calls} trial call(s)")
        assert trial_calls <= 1 + int(span / 2), second_rows
        assert sum(r["outcome"] == "error" for r in second_rows) == trial_calls
        assert sum(r["outcome"] == "rejected" for r in second_rows) == width - trial_calls
        rejected += [r for r in second_rows if r["outcome"] == "rejected"]
        assert {r["worker"] for r in rejected} == hostnames, "rejections seen by both workers"
        assert breaker_row(faults_db, svc_identity)["state"] == "open"  # type: ignore[index]
        made += trial_calls

        # Beat probes the health check: still down, so the breaker stays open...
        beat = beat_service(env, tmp_path)
        cluster.start(beat)
        wait_for(
            lambda: query(
                faults_db,
                "SELECT 1 FROM troupe_heartbeats WHERE identity = :svc AND NOT healthy",
                svc=svc_identity,
            ),
            30,
            "a failed health probe",
            details=beat.tail,
        )
        assert breaker_row(faults_db, svc_identity)["state"] == "open"  # type: ignore[index]
        # ...until the service is back: after the cool-down a healthy probe half-opens it.
        flag.write_text(UP, encoding="utf-8")
        flipped = time.monotonic()
        wait_for(
            lambda: (breaker_row(faults_db, svc_identity) or {}).get("state") == "half_open",
            15,
            "a healthy probe to half-open the breaker",
            details=lambda: str(breaker_row(faults_db, svc_identity)),
        )
        print(f"breaker half-open {time.monotonic() - flipped:.2f}s after the flag flipped")
        assert len(events(calls, "call")) == made, "the probe half-opens without calling"

        # A trial call succeeds and closes it, for every worker.
        single = write_team_file(
            tmp_path, "breaker-trial", "sequential", [("trial", "svc")], agents
        )
        result, report = run_json(
            ["run-team", str(single), "--input-json", payload, "--timeout", "30"], env
        )
        assert result.returncode == 0, describe(result)
        assert report["status"] == "completed"
        listing, breakers = run_json(["breakers"], env)
        (svc,) = [b for b in breakers if b["identity"] == svc_identity]
        assert svc["state"] == "closed", breakers
        assert svc["failures"] == 0
        result, report = run_json(
            ["run-team", str(fan_out), "--input-json", payload, "--timeout", "40"], env
        )
        assert result.returncode == 0, describe(result)
        assert all(s["status"] == "completed" for s in report["steps"])
        assert len(events(calls, "call")) == made + 1 + width


# --- 3. a hung agent ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hung_agent_is_cut_off_retried_with_backoff_then_fails(
    base_env: dict[str, str], faults_db: str, solo: Service, cluster: Cluster, tmp_path: Path
) -> None:
    env = queue_env(base_env, "solo")
    cluster.watch(solo)
    timeout, delays = 0.5, (0.2, 0.4)
    team = write_team_file(
        tmp_path,
        "hung",
        "sequential",
        [("stuck", "hung")],
        {
            "hung": agent_entry(
                "tests.support.faults:hang",
                timeout=timeout,
                retry={
                    "max_attempts": 3,
                    "initial_delay": 0.2,
                    "backoff": 2,
                    "max_delay": 1,
                    "jitter": "none",
                },
            )
        },
    )
    calls = tmp_path / "calls.jsonl"
    with cluster.dump_on_failure():
        started = time.monotonic()
        result, report = run_json(
            ["run-team", str(team), "--input-json", json.dumps({"log": str(calls)})], env
        )
        elapsed = time.monotonic() - started
        print(f"hung agent: run-team returned after {elapsed:.2f}s")
        assert result.returncode == 1, describe(result)
        assert report["status"] == "failed"
        (step,) = report["steps"]
        assert step["status"] == "failed"
        assert step["attempts"] == 3
        assert step["error"].startswith("AttemptTimeout: "), step
        assert elapsed < 10

        rows = attempt_rows(faults_db, report["execution_id"])
        assert [(r["attempt"], r["outcome"], r["error_type"]) for r in rows] == [
            (1, "timeout", "AttemptTimeout"),
            (2, "timeout", "AttemptTimeout"),
            (3, "timeout", "AttemptTimeout"),
        ]
        durations = [r["duration_ms"] for r in rows]
        print(f"hung agent: attempts cut off after {durations} ms")
        for duration in durations:
            assert timeout * 1000 <= duration < timeout * 1000 + 1000, durations
        execution = execution_row(faults_db, report["execution_id"])
        assert execution["status"] == "failed"
        took = epoch(execution["finished_at"]) - epoch(execution["created_at"])
        print(f"hung agent: the execution failed {took:.2f}s after it was created")
        assert took < 6, took
        starts = [epoch(r["started_at"]) for r in rows]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        print("hung agent: gaps between attempt starts " + ", ".join(f"{g:.2f}s" for g in gaps))
        for gap, delay in zip(gaps, delays, strict=True):
            assert gap >= timeout + delay, gaps
        assert len(events(calls, "start")) == 3
        assert events(calls, "end") == []

        # The worker that cut the agent off still does work.
        noop = write_team_file(
            tmp_path,
            "after-hung",
            "sequential",
            [("fine", "nop")],
            {"nop": agent_entry("tests.support.agents:noop")},
        )
        result, report = run_json(["run-team", str(noop), "--timeout", "20"], env)
        assert result.returncode == 0, describe(result)
        assert report["status"] == "completed"
        assert solo.alive


# --- 5. stop during a run -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_stop_during_a_20_step_run_cancels_the_rest(
    base_env: dict[str, str], faults_db: str, solo: Service, cluster: Cluster, tmp_path: Path
) -> None:
    env = queue_env(base_env, "solo")
    cluster.watch(solo)
    ids = [f"s{i:02d}" for i in range(20)]
    team = write_team_file(
        tmp_path,
        "stopped",
        "sequential",
        [(sid, "stoppable") for sid in ids],
        {"stoppable": agent_entry("tests.support.faults:record", timeout=5)},
    )
    calls = tmp_path / "calls.jsonl"
    with cluster.dump_on_failure():
        execution_id = enqueue(team, env, {"log": str(calls), "sleep": 0.3})
        wait_for(
            lambda: (
                sum(s["status"] == "completed" for s in step_rows(faults_db, execution_id)) >= 3
            ),
            30,
            "three completed steps",
        )
        done_before = sum(s["status"] == "completed" for s in step_rows(faults_db, execution_id))
        stop = run_manage(["stop", execution_id], env)
        assert stop.returncode == 0, describe(stop)
        assert "cancelled" in stop.stdout

        # The stop cancelled every step not yet running. A call under way ends with its
        # result, recorded in its attempt row; the delegation published after it finds its
        # step cancelled and calls nothing.
        def settled() -> bool:
            steps = step_rows(faults_db, execution_id)
            ended = {r["step_id"] for r in attempt_rows(faults_db, execution_id) if r["outcome"]}
            started = {e["step"] for e in events(calls, "start")}
            return all(s["status"] in FINAL for s in steps) and started <= ended

        wait_for(settled, 20, "every step to be decided")
        execution = execution_row(faults_db, execution_id)
        assert execution["status"] == "cancelled", execution
        stopped_at = epoch(execution["cancel_requested_at"])

        steps = step_rows(faults_db, execution_id)
        statuses = [s["status"] for s in steps]
        completed = statuses.count("completed")
        assert statuses == ["completed"] * completed + ["cancelled"] * (20 - completed), statuses
        assert done_before <= completed < 20, statuses
        assert all(s["reason"] for s in steps[completed:])

        # Agent calls: one per completed step, none for a cancelled one. A call that began
        # before the cancellation was recorded finishes; a delegation that had read the
        # execution's status just before it may still start one call.
        starts = events(calls, "start")
        assert [e["step"] for e in starts] == ids[:completed], starts
        assert len(events(calls, "end")) == completed
        late = [e for e in starts if e["t"] > stopped_at]
        print(
            f"stop: {done_before} steps done when `stop` was launched, {completed} completed "
            f"in the end; {len(late)} agent call(s) started after the cancellation was recorded"
        )
        assert len(late) <= 1, late
        rows = attempt_rows(faults_db, execution_id)
        assert [(r["step_id"], r["outcome"]) for r in rows] == [
            (sid, "success") for sid in ids[:completed]
        ]

        status, data = run_json(["status", execution_id], env)
        assert status.returncode == 1, describe(status)
        assert data["status"] == "cancelled"
        assert [(s["id"], s["status"]) for s in data["steps"]] == [
            (s["step_id"], s["status"]) for s in steps
        ]


# --- 6. a worker started after the stop -----------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_started_after_a_stop_honours_the_cancellation(
    base_env: dict[str, str], faults_db: str, cluster: Cluster, tmp_path: Path
) -> None:
    env = queue_env(base_env, "late")
    team = write_team_file(
        tmp_path,
        "late",
        "sequential",
        [("one", "late_agent"), ("two", "late_agent"), ("three", "late_agent")],
        {"late_agent": agent_entry("tests.support.faults:record")},
    )
    calls = tmp_path / "calls.jsonl"
    late = worker_service(env, f"faults-late-{PID}", tmp_path)
    with cluster.dump_on_failure():
        # No worker consumes this queue yet: --no-wait enqueues anyway.
        execution_id = enqueue(team, env, {"log": str(calls)})
        stop = run_manage(["stop", execution_id], env)
        assert stop.returncode == 0, describe(stop)
        assert "cancelled" in stop.stdout
        assert execution_row(faults_db, execution_id)["status"] == "cancelled"

        cluster.start(late)
        wait_ready([late])
        # The first delegation finds its step cancelled and publishes nothing further.
        late.wait_for_log(r"agent:late_agent\[[0-9a-f-]+\] succeeded", 20)

        assert read_events(calls) == []
        assert attempt_rows(faults_db, execution_id) == []
        assert execution_row(faults_db, execution_id)["status"] == "cancelled"
        assert {s["status"] for s in step_rows(faults_db, execution_id)} == {"cancelled"}
        status, data = run_json(["status", execution_id], env)
        assert status.returncode == 1, describe(status)
        assert data["status"] == "cancelled"
        assert [(s["id"], s["status"], s["attempts"]) for s in data["steps"]] == [
            ("one", "cancelled", 0),
            ("two", "cancelled", 0),
            ("three", "cancelled", 0),
        ]


# --- 7. the visibility bound ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_team_longer_than_the_visibility_timeout_is_refused(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    team = write_team_file(
        tmp_path,
        "too-slow",
        "sequential",
        [("only", "slow")],
        {
            "slow": agent_entry(
                "tests.support.agents:noop",
                timeout=10,
                retry={
                    "max_attempts": 3,
                    "initial_delay": 5,
                    "backoff": 2,
                    "max_delay": 5,
                    "jitter": "none",
                },
            )
        },
    )
    env = queue_env(base_env, "never-consumed")
    assert env["TROUPE_VISIBILITY_TIMEOUT"] == "8"
    result = run_manage(["run-team", str(team), "--json"], env)
    assert result.returncode == 2, describe(result)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, describe(result)
    assert lines[0].startswith("error: invalid team file: "), lines
    assert str(team) in lines[0]
    assert "agents.slow.timeout" in lines[0]
    assert "visibility timeout (8s)" in lines[0], lines

    # The same file is fine under a visibility timeout above 10 s + 5 s.
    roomy = run_manage(["validate", str(team)], {**env, "TROUPE_VISIBILITY_TIMEOUT": "16"})
    assert roomy.returncode == 0, describe(roomy)
