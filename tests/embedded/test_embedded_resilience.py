"""How a delegation keeps its promises, end to end on the embedded runtime.

The agents (tests.support.resilience_agents) write one line per call into a directory
passed in the input, so "the agent was not called" is counted, not assumed. Breakers
belong to what is called and live in the shared embedded database, so every agent here
calls a target of its own (``fail__<tag>``: see resilience_agents.__getattr__).
"""

from __future__ import annotations

import itertools
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestration import ExecutionReport, Team
from orchestration.agents.identity import agent_identity
from orchestration.resilience.breaker import CLOSED, OPEN
from orchestration.store.breakers import BreakerStore
from tests.support.resilience_agents import call_count, calls
from tests.support.teams import team_yaml

TARGETS = "tests.support.resilience_agents"

FAST = {"max_attempts": 1, "initial_delay": 0.01, "backoff": 1.0, "max_delay": 0.05}


def unique(role: str) -> str:
    return f"{role}-{uuid.uuid4().hex[:8]}"


def agent(target: str, *, timeout: float = 10, **fields: Any) -> dict[str, Any]:
    retry = {"jitter": "none", **FAST, **fields.pop("retry", {})}
    own_target = f"{TARGETS}:{target}__{uuid.uuid4().hex[:8]}"
    return {"target": own_target, "timeout": timeout, "retry": retry, **fields}


def team(
    agents: dict[str, dict[str, Any]], steps: list[dict[str, Any]], strategy: str = "sequential"
) -> Team:
    data = {
        "name": unique("resilience"),
        "agents": agents,
        "workflow": {"strategy": strategy, "steps": steps},
    }
    return Team.from_yaml(yaml.safe_dump(data, sort_keys=False), source="resilience.yaml")


def run(t: Team, tmp_path: Path, timeout: float = 15, **params: Any) -> ExecutionReport:
    return t.run({"dir": str(tmp_path), **params}, timeout=timeout)


def step_of(report: ExecutionReport, step_id: str = "s") -> Any:
    return next(step for step in report.steps if step.id == step_id)


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def breaker_of(runtime: Any, t: Team, name: str) -> Any:
    """The view of the breaker of what agent ``name`` of team ``t`` calls."""
    return BreakerStore(runtime.store).get(agent_identity(t.spec.agents[name]))


def breaker_state(runtime: Any, t: Team, name: str) -> str:
    view = breaker_of(runtime, t, name)
    return CLOSED if view is None else view.snapshot.state


# --- circuit breakers ------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_breaker_opens_after_the_threshold_and_then_rejects_without_calling(
    runtime: Any, tmp_path: Path
) -> None:
    flaky = unique("flaky")
    t = team(
        {
            flaky: agent(
                "fail",
                retry={"max_attempts": 3},
                breaker={"failure_threshold": 2, "reset_timeout": 60},
            )
        },
        [{"id": "s", "agent": flaky}],
    )
    first = run(t, tmp_path)
    assert first.status == "failed"
    step = step_of(first)
    # Attempts 1 and 2 failed and opened the breaker; attempt 3 was refused.
    assert step.attempts == 3
    assert step.error is not None and step.error.startswith("CircuitOpen"), step
    assert call_count(tmp_path, flaky) == 2
    outcomes = [row.outcome for row in runtime.executions.attempts(first.execution_id)]
    assert outcomes == ["error", "error", "rejected"]
    assert breaker_state(runtime, t, flaky) == OPEN

    for _ in range(2):
        later = run(t, tmp_path)
        assert later.status == "failed"
        assert step_of(later).error is not None
        assert step_of(later).error.startswith("CircuitOpen")
        assert step_of(later).attempts == 1
    assert call_count(tmp_path, flaky) == 2


@pytest.mark.timeout(20)
def test_when_open_wait_reschedules_after_the_cool_down(runtime: Any, tmp_path: Path) -> None:
    name = unique("recovering")
    t = team(
        {
            name: agent(
                "fail_until_flag",
                breaker={"failure_threshold": 1, "reset_timeout": 0.5, "when_open": "wait"},
            )
        },
        [{"id": "s", "agent": name}],
    )
    assert run(t, tmp_path).status == "failed"
    view = breaker_of(runtime, t, name)
    assert view is not None and view.snapshot.state == OPEN
    assert view.snapshot.next_trial_at is not None
    trial_at = view.snapshot.next_trial_at

    # The agent recovers; the next run waits out the cool-down instead of failing.
    (tmp_path / f"{name}.healthy").touch()
    report = run(t, tmp_path)
    assert report.status == "completed", report
    assert report.output == {"answered_by": name, "attempt": 1}
    assert step_of(report).attempts == 1
    [row] = runtime.executions.attempts(report.execution_id)
    assert aware(row.started_at) >= trial_at
    assert call_count(tmp_path, name) == 2
    # The trial call succeeded: closed again.
    assert breaker_state(runtime, t, name) == CLOSED


@pytest.mark.timeout(20)
def test_fallback_takes_the_call_while_the_breaker_is_open(runtime: Any, tmp_path: Path) -> None:
    primary, backup = unique("primary"), unique("backup")
    t = team(
        {
            primary: agent(
                "fail",
                retry={"max_attempts": 2},
                fallback=backup,
                breaker={"failure_threshold": 1, "reset_timeout": 60},
            ),
            backup: agent("ok"),
        },
        [{"id": "s", "agent": primary}],
    )
    report = run(t, tmp_path)
    assert report.status == "completed", report
    assert report.output == {"answered_by": backup, "step": "s", "attempt": 2}
    rows = runtime.executions.attempts(report.execution_id)
    assert [(row.agent, row.outcome) for row in rows] == [
        (primary, "error"),
        (backup, "success"),
    ]
    assert breaker_state(runtime, t, primary) == OPEN

    # While it stays open, the fallback gets the first attempt; the primary is not called.
    again = run(t, tmp_path)
    assert again.status == "completed", again
    assert again.output["answered_by"] == backup
    [row] = runtime.executions.attempts(again.execution_id)
    assert row.agent == backup
    assert call_count(tmp_path, primary) == 1
    assert call_count(tmp_path, backup) == 2


@pytest.mark.timeout(20)
def test_permanent_errors_do_not_open_the_breaker(runtime: Any, tmp_path: Path) -> None:
    name = unique("strict")
    t = team(
        {name: agent("fail_permanent", breaker={"failure_threshold": 2, "reset_timeout": 60})},
        [{"id": f"p{i}", "agent": name} for i in range(4)],
        strategy="parallel",
    )
    report = run(t, tmp_path)
    assert report.status == "failed"
    for step in report.steps:
        assert step.attempts == 1
        assert step.error is not None and step.error.startswith("PermanentAgentError"), step
    assert call_count(tmp_path, name) == 4
    assert breaker_state(runtime, t, name) == CLOSED
    # The agent is still called: nothing was rejected.
    again = run(t, tmp_path)
    assert all(s.error and s.error.startswith("PermanentAgentError") for s in again.steps)
    assert call_count(tmp_path, name) == 8


# --- time limits ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_hung_agent_is_cut_off_retried_with_backoff_then_failed(
    runtime: Any, tmp_path: Path
) -> None:
    name = unique("hung")
    t = team(
        {
            name: agent(
                "hang",
                timeout=0.2,
                retry={"max_attempts": 3, "initial_delay": 0.1, "backoff": 2.0, "max_delay": 1},
            )
        },
        [{"id": "s", "agent": name}],
    )
    started = time.monotonic()
    report = run(t, tmp_path, hang=30)
    elapsed = time.monotonic() - started
    assert report.status == "failed"
    step = step_of(report)
    assert step.attempts == 3
    assert step.error is not None and step.error.startswith("AttemptTimeout"), step
    rows = runtime.executions.attempts(report.execution_id)
    assert [row.outcome for row in rows] == ["timeout"] * 3
    for row in rows:
        assert row.error_type == "AttemptTimeout"
        assert 180 <= row.duration_ms < 1000, row.duration_ms
    # Backoff without jitter: 0.1 s, then 0.2 s between attempts.
    gaps = [
        (aware(b.started_at) - aware(a.finished_at)).total_seconds()
        for a, b in itertools.pairwise(rows)
    ]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
    assert call_count(tmp_path, name) == 3
    # 3 × 0.2 s cut-offs + 0.3 s of waits, nowhere near the 30 s the agent wanted.
    assert 0.85 <= elapsed < 4.0, elapsed


@pytest.mark.timeout(20)
def test_agent_that_keeps_heart_beating_outlives_its_heartbeat_timeout(
    runtime: Any, tmp_path: Path
) -> None:
    name = unique("steady")
    t = team(
        {name: agent("heartbeating", timeout=5, heartbeat_timeout=0.3)},
        [{"id": "s", "agent": name}],
    )
    report = run(t, tmp_path, work=1.0, every=0.05)
    assert report.status == "completed", report
    assert step_of(report).attempts == 1
    assert report.output["beats"] >= 10
    [row] = runtime.executions.attempts(report.execution_id)
    assert row.duration_ms >= 1000


@pytest.mark.timeout(20)
def test_agent_that_stops_heart_beating_fails_its_attempt(runtime: Any, tmp_path: Path) -> None:
    name = unique("silent")
    t = team(
        {name: agent("goes_silent", timeout=10, heartbeat_timeout=0.3)},
        [{"id": "s", "agent": name}],
    )
    started = time.monotonic()
    report = run(t, tmp_path, beat_for=0.3, silent_for=8)
    elapsed = time.monotonic() - started
    assert report.status == "failed"
    step = step_of(report)
    assert step.attempts == 1
    assert step.error is not None and step.error.startswith("HeartbeatTimeout"), step
    [row] = runtime.executions.attempts(report.execution_id)
    assert row.outcome == "timeout"
    assert row.error_type == "HeartbeatTimeout"
    # Cut off about 0.3 s after the last beat, long before the 10 s time limit.
    assert 500 <= row.duration_ms < 2500, row.duration_ms
    assert elapsed < 4.0


@pytest.mark.timeout(20)
def test_step_heartbeat_timeout_overrides_the_agent(runtime: Any, tmp_path: Path) -> None:
    name = unique("silent")
    t = team(
        {name: agent("goes_silent", timeout=10)},
        [{"id": "s", "agent": name, "heartbeat_timeout": 0.3}],
    )
    report = run(t, tmp_path, beat_for=0.2, silent_for=8)
    assert report.status == "failed"
    assert step_of(report).error is not None
    assert step_of(report).error.startswith("HeartbeatTimeout")


@pytest.mark.timeout(20)
def test_step_deadline_stops_retries_that_would_pass_it(runtime: Any, tmp_path: Path) -> None:
    name = unique("stubborn")
    t = team(
        {name: agent("fail", retry={"max_attempts": 20, "initial_delay": 0.3, "max_delay": 0.3})},
        [{"id": "s", "agent": name, "deadline": 1.0}],
    )
    started = time.monotonic()
    report = run(t, tmp_path)
    elapsed = time.monotonic() - started
    assert report.status == "failed"
    step = step_of(report)
    assert step.error is not None and "deadline" in step.error, step
    # Attempts at about 0, 0.3, 0.6 and 0.9 s; the next would start after the deadline.
    assert 2 <= step.attempts <= 5, step
    # Every attempt called the agent, except a retry that came due only after the
    # deadline had passed (a slow machine): it is recorded, refused, with no call.
    assert call_count(tmp_path, name) in (step.attempts, step.attempts - 1)
    assert elapsed < 3.0, elapsed


@pytest.mark.timeout(20)
def test_retry_after_is_honoured_between_attempts(runtime: Any, tmp_path: Path) -> None:
    name = unique("busy")
    t = team(
        {name: agent("busy_with_retry_after", retry={"max_attempts": 3})},
        [{"id": "s", "agent": name}],
    )
    report = run(t, tmp_path, retry_after=0.3, succeed_on=3)
    assert report.status == "completed", report
    assert step_of(report).attempts == 3
    rows = runtime.executions.attempts(report.execution_id)
    assert [row.outcome for row in rows] == ["error", "error", "success"]
    for earlier, later in itertools.pairwise(rows):
        gap = (aware(later.started_at) - aware(earlier.finished_at)).total_seconds()
        assert gap >= 0.3, gap
    # The agent's own clock agrees.
    stamps = [entry["at"] for entry in calls(tmp_path, name)]
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(stamps)), stamps


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("no_retry_on", "attempts"), [(["ValueError"], 1), ([], 3)])
def test_no_retry_on_fails_at_the_first_attempt(
    runtime: Any, tmp_path: Path, no_retry_on: list[str], attempts: int
) -> None:
    name = unique("picky")
    t = team(
        {name: agent("raise_value_error", retry={"max_attempts": 3, "no_retry_on": no_retry_on})},
        [{"id": "s", "agent": name}],
    )
    report = run(t, tmp_path)
    assert report.status == "failed"
    step = step_of(report)
    assert step.attempts == attempts
    assert step.error is not None and step.error.startswith("ValueError"), step
    assert call_count(tmp_path, name) == attempts


# --- cancellation -----------------------------------------------------------------------------


def wait_for_an_ended_attempt(runtime: Any, execution_id: str) -> None:
    """Until one attempt of the execution has ended (a fast call is audited at its end)."""
    deadline = time.monotonic() + 10
    while not any(row.outcome for row in runtime.executions.attempts(execution_id)):
        assert time.monotonic() < deadline, "no attempt ended"
        time.sleep(0.02)


@pytest.mark.timeout(20)
def test_a_call_under_way_when_the_stop_lands_keeps_its_result(
    runtime: Any, tmp_path: Path
) -> None:
    """The stop arrives a few milliseconds into the first call, before its start marker
    is due: the call's result is kept, as for a step the stop finds running, and nothing
    after it runs."""
    first, second = unique("stopper"), unique("after")
    t = team(
        {first: agent("stops_its_execution"), second: agent("ok")},
        [{"id": "s0", "agent": first}, {"id": "s1", "agent": second}],
    )
    handle = t.enqueue({"dir": str(tmp_path)})
    wait_for_an_ended_attempt(runtime, handle.execution_id)
    time.sleep(0.3)

    report = handle.report()
    assert report.status == "cancelled"
    assert step_of(report, "s0").status == "completed", step_of(report, "s0")
    recorded = {row.step_id: row for row in runtime.executions.steps(handle.execution_id)}
    assert recorded["s0"].output == {"finished": "s0"}
    assert step_of(report, "s1").status == "cancelled"
    assert call_count(tmp_path, second) == 0
    attempts = runtime.executions.attempts(handle.execution_id)
    assert [(a.step_id, a.outcome) for a in attempts] == [("s0", "success")]


@pytest.mark.timeout(20)
def test_cancel_during_a_sequential_run_never_calls_the_remaining_agents(
    runtime: Any, tmp_path: Path
) -> None:
    names = [unique(f"stage{i}") for i in range(4)]
    t = team(
        {name: agent("slow") for name in names},
        [{"id": f"s{i}", "agent": name} for i, name in enumerate(names)],
    )
    handle = t.enqueue({"dir": str(tmp_path), "sleep": 0.4})
    deadline = time.monotonic() + 10
    while call_count(tmp_path, names[0]) == 0:
        assert time.monotonic() < deadline, "the first step never started"
        time.sleep(0.02)

    assert handle.cancel() is True
    report = handle.wait(timeout=10)
    assert report.status == "cancelled"

    # Let the first step finish and publish the next: nothing more may be called. Its
    # attempt is audited when it ends (the stop came before its start marker was due).
    wait_for_an_ended_attempt(runtime, handle.execution_id)
    time.sleep(0.6)

    final = handle.report()
    assert final.status == "cancelled"
    steps = {step.id: step for step in final.steps}
    for sid in ("s1", "s2", "s3"):
        assert steps[sid].status == "cancelled", steps[sid]
        assert steps[sid].attempts == 0
    assert [call_count(tmp_path, name) for name in names] == [1, 0, 0, 0]
    assert {row.step_id for row in runtime.executions.attempts(handle.execution_id)} == {"s0"}
    assert handle.cancel() is False


@pytest.mark.parametrize("agent_name", ["exits", "interrupts"])
def test_an_agent_that_exits_fails_its_attempts_not_the_worker(
    runtime: Any, agent_name: str
) -> None:
    """SystemExit or KeyboardInterrupt from an agent is that attempt's failure: retried
    under the policy, then the step fails with a message that says so, and the run ends."""
    team = Team.from_yaml(
        team_yaml("sequential", [{"id": "bye", "agent": agent_name}]), source="exit.yaml"
    )
    report = team.run(None, timeout=20)
    assert report.status == "failed", report
    (step,) = report.steps
    assert step.attempts == 3
    assert step.error is not None and step.error.startswith("AgentExited: "), step.error
    expected = "SystemExit(3)" if agent_name == "exits" else "KeyboardInterrupt"
    assert expected in step.error
