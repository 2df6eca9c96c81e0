"""The beat's two jobs, called directly on a temporary SQLite store: the heartbeat probes
agents and feeds their breakers; the reaper marks dead workers' attempts lost and resumes
stalled executions."""

from __future__ import annotations

import http.server
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from orchestration.resilience.breaker import CLOSED, HALF_OPEN, OPEN
from orchestration.spec import TeamSpec, parse_agent
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.breakers import BreakerStore
from orchestration.store.database import ensure_schema
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow
from orchestration.store.repository import AttemptEnd, AttemptError, Countdown, Store, now
from tests.support.resilience_agents import HEALTH_DIR_VARIABLE
from workers.health import run_heartbeat
from workers.reaper import reap
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(15)

TEAM = "probed-team"
TARGETS = "tests.support.resilience_agents"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ensure_schema(url, auto_upgrade=True)
    return Store(url)


@pytest.fixture
def health_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "health"
    directory.mkdir()
    monkeypatch.setenv(HEALTH_DIR_VARIABLE, str(directory))
    return directory


def spec(health: dict[str, Any] | None, target: str = "ok", **breaker: Any) -> dict[str, Any]:
    """An agent calling ``target`` of TARGETS. The heartbeat calls only the health check,
    never the target: agents that should be probed apart get targets of their own."""
    fields: dict[str, Any] = {"target": f"{TARGETS}:{target}"}
    if health is not None:
        fields["health"] = health
    if breaker:
        fields["breaker"] = breaker
    return parse_agent(fields).model_dump(mode="json")


def probe(name: str, **fields: Any) -> dict[str, Any]:
    return {"target": f"tests.support.resilience_agents:probe_{name}", **fields}


def identity(target: str) -> str:
    return f"python:{TARGETS}:{target}"


def register(store: Store, agents: dict[str, dict[str, Any]], team: str = TEAM) -> None:
    AgentRegistry(store).register_agents(team, agents)


def beat(store: Store) -> dict[str, Any]:
    """The heartbeat's results, by identity."""
    return {result.identity: result for result in run_heartbeat(store, BreakerStore(store))}


def last_heartbeats(store: Store) -> dict[str, Any]:
    return AgentRegistry(store).last_heartbeats()


# --- heartbeat ------------------------------------------------------------------------------


def test_heartbeat_records_each_probed_agent(store: Store, health_dir: Path) -> None:
    register(
        store,
        {
            "up": spec(probe("one"), target="up"),
            "down": spec(probe("two"), target="down"),
            "broken": spec(probe("three"), target="broken"),
            "unprobed": spec(None, target="unprobed"),
        },
    )
    (health_dir / "two.down").touch()
    (health_dir / "three.raise").touch()
    (health_dir / "one.slow").write_text("0.05")

    results = beat(store)

    up, down, broken = identity("up"), identity("down"), identity("broken")
    assert set(results) == {up, down, broken}
    rows = last_heartbeats(store)
    assert set(rows) == {up, down, broken}
    assert rows[up].healthy is True
    assert rows[up].detail is None
    assert rows[up].latency_ms >= 50
    assert results[up].latency_ms == rows[up].latency_ms
    assert rows[down].healthy is False
    assert rows[down].detail == "probe returned false"
    assert rows[broken].healthy is False
    assert rows[broken].detail is not None
    assert rows[broken].detail.startswith("ConnectionError")
    assert "refused" in rows[broken].detail
    for row in rows.values():
        assert row.latency_ms >= 0
        assert row.at is not None
    # One failed probe is not enough to open anything.
    assert {r.breaker for r in results.values()} == {CLOSED}


def test_probe_past_its_timeout_is_unhealthy(store: Store, health_dir: Path) -> None:
    register(store, {"sluggish": spec(probe("one", timeout=0.1))})
    (health_dir / "one.slow").write_text("2")
    started = time.monotonic()
    result = beat(store)[identity("ok")]
    assert time.monotonic() - started < 1.0
    assert result.healthy is False
    assert result.detail == "probe timed out after 0.1s"
    assert 90 <= result.latency_ms < 1000


def test_failed_probes_open_the_breaker_and_a_healthy_one_half_opens_it_after_cool_down(
    store: Store, health_dir: Path
) -> None:
    register(store, {"wobbly": spec(probe("one", failures_to_open=2), reset_timeout=0.3)})
    breakers = BreakerStore(store)
    wobbly = identity("ok")
    (health_dir / "one.down").touch()

    assert beat(store)[wobbly].breaker == CLOSED
    assert beat(store)[wobbly].breaker == OPEN
    view = breakers.get(wobbly)
    assert view is not None
    assert view.snapshot.state == OPEN
    assert view.snapshot.last_error is not None
    assert "2 failed health probes" in view.snapshot.last_error
    assert not breakers.admit(wobbly, parse_agent(spec(None)).breaker).allowed
    assert breakers.get("wobbly") is None  # the agent's name keys nothing

    # Healthy again, but the cool-down has not passed: still open.
    (health_dir / "one.down").unlink()
    assert beat(store)[wobbly].breaker == OPEN
    time.sleep(0.35)
    assert beat(store)[wobbly].breaker == HALF_OPEN
    view = breakers.get(wobbly)
    assert view is not None and view.snapshot.state == HALF_OPEN

    beats = [row for row in _all_heartbeats(store) if row.identity == wobbly]
    assert [row.healthy for row in beats] == [False, False, True, True]


def test_a_healthy_probe_in_between_resets_the_count(store: Store, health_dir: Path) -> None:
    register(store, {"blip": spec(probe("one", failures_to_open=2))})
    down = health_dir / "one.down"
    for healthy in (False, True, False, True, False):
        if healthy:
            down.unlink(missing_ok=True)
        else:
            down.touch()
        assert beat(store)[identity("ok")].breaker == CLOSED


def test_teams_calling_the_same_target_share_one_probe_and_one_breaker(
    store: Store, health_dir: Path
) -> None:
    register(store, {"e": spec(probe("one", failures_to_open=2))}, team="team-a")
    register(store, {"checker": spec(probe("two"))}, team="team-b")
    (health_dir / "one.down").touch()

    first = run_heartbeat(store, BreakerStore(store))
    # One probe for the one thing both teams call: the first team's (by name) check.
    assert [result.identity for result in first] == [identity("ok")]
    assert beat(store)[identity("ok")].breaker == OPEN
    assert len(_all_heartbeats(store)) == 2

    # Team B's agent, named differently, is refused by the same breaker.
    policy = parse_agent(spec(None)).breaker
    assert not BreakerStore(store).admit(identity("ok"), policy).allowed


def test_same_named_agents_calling_different_targets_are_probed_apart(
    store: Store, health_dir: Path
) -> None:
    register(store, {"e": spec(probe("one", failures_to_open=1), target="ok")}, team="team-a")
    register(store, {"e": spec(probe("two", failures_to_open=1), target="slow")}, team="team-b")
    (health_dir / "one.down").touch()

    results = beat(store)

    assert set(results) == {identity("ok"), identity("slow")}
    assert (results[identity("ok")].healthy, results[identity("ok")].breaker) == (False, OPEN)
    assert (results[identity("slow")].healthy, results[identity("slow")].breaker) == (
        True,
        CLOSED,
    )
    policy = parse_agent(spec(None)).breaker
    breakers = BreakerStore(store)
    assert not breakers.admit(identity("ok"), policy).allowed
    assert breakers.admit(identity("slow"), policy).allowed


def _all_heartbeats(store: Store) -> list[Any]:
    from sqlalchemy import select

    from orchestration.store.models import HeartbeatRow

    with store.session() as session:
        return list(session.scalars(select(HeartbeatRow).order_by(HeartbeatRow.id)))


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Health]]]:
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(variable, raising=False)
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health", handler
    finally:
        server.shutdown()
        server.server_close()


def test_http_health_check(store: Store, health_server: tuple[str, type[_Health]]) -> None:
    url, handler = health_server
    register(store, {"remote": spec({"url": url, "timeout": 2})})
    remote = identity("ok")

    assert beat(store)[remote].healthy is True
    assert last_heartbeats(store)[remote].healthy is True
    assert last_heartbeats(store)[remote].detail is None

    handler.status = 503
    result = beat(store)[remote]
    assert result.healthy is False
    assert result.detail == "HTTP 503"
    row = last_heartbeats(store)[remote]
    assert (row.healthy, row.detail) == (False, "HTTP 503")


def test_http_health_check_against_nothing_is_unhealthy(store: Store) -> None:
    import socket

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    register(store, {"gone": spec({"url": f"http://127.0.0.1:{port}/", "timeout": 1})})
    result = beat(store)[identity("ok")]
    assert result.healthy is False
    assert result.detail is not None and result.detail.startswith("ConnectError")


def test_no_agents_with_health_checks_means_no_probes(store: Store) -> None:
    assert run_heartbeat(store, BreakerStore(store)) == []
    register(store, {"plain": spec(None)})
    assert run_heartbeat(store, BreakerStore(store)) == []
    assert last_heartbeats(store) == {}


# --- reaper ------------------------------------------------------------------------------------

LEASE_TTL = 1.0
STALL = 5.0


def new_execution(store: Store, steps: int = 2) -> str:
    data = {
        "name": "reaped",
        "agents": {"worker": {"target": "tests.support.resilience_agents:ok"}},
        "workflow": {
            "strategy": "sequential",
            "steps": [{"id": f"s{i}", "agent": "worker"} for i in range(steps)],
        },
    }
    team = TeamSpec.model_validate(data)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, team.model_dump(mode="json"), build_plan(team), None
    )
    return execution_id


def age(store: Store, execution_id: str, seconds: float, *, lease: bool = False) -> None:
    """Make everything recorded about an execution ``seconds`` old (the lease too)."""
    old = now() - timedelta(seconds=seconds)
    with store.session() as session, session.begin():
        session.execute(
            update(ExecutionRow).where(ExecutionRow.id == execution_id).values(created_at=old)
        )
        session.execute(
            update(StepRow)
            .where(StepRow.execution_id == execution_id, StepRow.started_at.is_not(None))
            .values(started_at=old)
        )
        values: dict[str, Any] = {"started_at": old}
        if lease:
            values["heartbeat_at"] = old
        session.execute(
            update(AttemptRow).where(AttemptRow.execution_id == execution_id).values(**values)
        )


def reap_now(store: Store) -> tuple[Any, list[str]]:
    resumed: list[str] = []
    report = reap(
        MaintenanceRecords(store), lease_ttl=LEASE_TTL, stall_timeout=STALL, resume=resumed.append
    )
    return report, resumed


def test_attempt_whose_lease_expired_is_marked_lost(store: Store) -> None:
    dead = new_execution(store)
    DelegationRecords(store).begin_attempt(dead, "s0", "worker", 1, "task-1", "worker-a")
    age(store, dead, 30)
    live = new_execution(store)
    DelegationRecords(store).begin_attempt(live, "s0", "worker", 1, "task-2", "worker-b")

    report, _ = reap_now(store)

    assert report.lost_attempts == [(dead, "s0", 1)]
    row = DelegationRecords(store).attempt_row(dead, "s0", 1)
    assert row is not None
    assert row.outcome == "lost"
    assert row.error_type == "WorkerLost"
    assert row.finished_at is not None
    fresh = DelegationRecords(store).attempt_row(live, "s0", 1)
    assert fresh is not None and fresh.outcome is None
    # Reaping again finds nothing new.
    again, _ = reap_now(store)
    assert again.lost_attempts == []


def test_a_renewed_lease_keeps_an_old_attempt_alive(store: Store) -> None:
    execution_id = new_execution(store)
    DelegationRecords(store).begin_attempt(execution_id, "s0", "worker", 1, "task-1", "worker-a")
    age(store, execution_id, 30)
    DelegationRecords(store).renew_lease(execution_id, "s0", 1, {"done": 0.5})

    report, _ = reap_now(store)

    assert report.lost_attempts == []
    row = DelegationRecords(store).attempt_row(execution_id, "s0", 1)
    assert row is not None and row.outcome is None


def test_stalled_execution_with_nothing_in_flight_is_resumed(store: Store) -> None:
    pending = new_execution(store)
    age(store, pending, STALL + 5)
    crashed = new_execution(store)
    DelegationRecords(store).begin_attempt(crashed, "s0", "worker", 1, "task-1", "worker-a")
    age(store, crashed, STALL + 5, lease=True)
    recent = new_execution(store)

    report, resumed = reap_now(store)

    assert (crashed, "s0", 1) in report.lost_attempts
    assert sorted(resumed) == sorted([pending, crashed])
    assert sorted(report.resumed) == sorted(resumed)
    assert recent not in resumed


def attempt_end(execution_id: str, attempt: int, *, failed: bool = False) -> AttemptEnd:
    """How attempt ``attempt`` of step s0 ended, as the worker that ran it records it."""
    error = AttemptError("RuntimeError", "down", "error") if failed else None
    return AttemptEnd(
        execution_id=execution_id,
        step_id="s0",
        attempt=attempt,
        agent="worker",
        task_id=f"task-{attempt}",
        worker="worker-a",
        started_at=now(),
        duration_ms=10,
        outcome="error" if failed else "success",
        error=error,
    )


def test_finished_execution_is_not_resumed(store: Store) -> None:
    done = new_execution(store, steps=1)
    DelegationRecords(store).begin_attempt(done, "s0", "worker", 1, "task-1", "worker-a")
    DelegationRecords(store).record_success(
        attempt_end(done, 1), {"ok": True}, Countdown(sink=True)
    )
    DelegationRecords(store).finish_execution(done, "completed", {"ok": True}, None)
    cancelled = new_execution(store)
    ExecutionRecords(store).cancel_execution(cancelled, "stopped")
    age(store, done, 3600)
    age(store, cancelled, 3600)

    _, resumed = reap_now(store)

    assert resumed == []


def test_step_waiting_for_its_retry_is_not_resumed(store: Store) -> None:
    execution_id = new_execution(store)
    DelegationRecords(store).begin_attempt(execution_id, "s0", "worker", 1, "task-1", "worker-a")
    age(store, execution_id, STALL + 5)
    retry_at = now() + timedelta(seconds=60)
    DelegationRecords(store).record_retry(attempt_end(execution_id, 1, failed=True), retry_at)

    _, resumed = reap_now(store)

    assert resumed == []


def test_long_running_attempt_with_a_live_lease_is_not_resumed(store: Store) -> None:
    """An agent working longer than the stall timeout, renewing its lease all along, is
    in flight: resuming its execution would start a second attempt next to it."""
    execution_id = new_execution(store)
    DelegationRecords(store).begin_attempt(execution_id, "s0", "worker", 1, "task-1", "worker-a")
    age(store, execution_id, STALL + 5)
    DelegationRecords(store).renew_lease(execution_id, "s0", 1, {"progress": "still working"})

    report, resumed = reap_now(store)

    assert report.lost_attempts == []
    assert resumed == [], "a live attempt's execution was resumed"


def test_retry_that_just_started_is_not_resumed(store: Store) -> None:
    """The step first started long ago, failed, waited for its retry, and attempt 2 has
    just begun: it is in flight, not stalled."""
    execution_id = new_execution(store)
    DelegationRecords(store).begin_attempt(execution_id, "s0", "worker", 1, "task-1", "worker-a")
    DelegationRecords(store).record_retry(attempt_end(execution_id, 1, failed=True), now())
    age(store, execution_id, STALL + 5)
    assert DelegationRecords(store).begin_attempt(
        execution_id, "s0", "worker", 2, "task-2", "worker-a"
    )

    report, resumed = reap_now(store)

    assert report.lost_attempts == []
    assert resumed == [], "an execution whose attempt 2 just started was resumed"
