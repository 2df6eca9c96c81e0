"""Starvation's bound, on a temporary SQLite store: the reaper promotes the steps of a
below-critical execution in which nothing has started or ended for max_wait, once per
max_wait; and priorities and queues through the client, on the embedded runtime."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from orchestration import Team
from orchestration.spec import TeamSpec
from orchestration.store.database import ensure_schema
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.models import AttemptRow, ExecutionRow, StepRow
from orchestration.store.repository import Store, now
from tests.support.teams import team_yaml
from workers.reaper import ReapReport, reap
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(30)

MAX_WAIT = 60.0
STALL = 120.0
LEASE_TTL = 15.0


@pytest.fixture
def store(tmp_path: Path) -> Store:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    ensure_schema(url, auto_upgrade=True)
    return Store(url)


def new_execution(store: Store, priority: str = "low", steps: int = 2) -> str:
    team = TeamSpec.model_validate(
        {
            "name": f"{priority}-team",
            "priority": priority,
            "agents": {"worker": {"target": "tests.support.resilience_agents:ok"}},
            "workflow": {
                "strategy": "parallel",
                "steps": [{"id": f"s{i}", "agent": "worker"} for i in range(steps)],
            },
        }
    )
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, team.model_dump(mode="json"), build_plan(team), None
    )
    return execution_id


def set_execution(store: Store, execution_id: str, **ages: float) -> None:
    """Set the execution's timestamps (created_at, resumed_at, promoted_at) to that many
    seconds ago."""
    values = {column: now() - timedelta(seconds=seconds) for column, seconds in ages.items()}
    with store.session() as session, session.begin():
        session.execute(update(ExecutionRow).where(ExecutionRow.id == execution_id).values(values))


def reap_now(store: Store) -> tuple[ReapReport, list[str], list[str]]:
    resumed: list[str] = []
    promoted: list[str] = []
    report = reap(
        MaintenanceRecords(store),
        lease_ttl=LEASE_TTL,
        stall_timeout=STALL,
        resume=resumed.append,
        max_wait=MAX_WAIT,
        promote=promoted.append,
    )
    return report, resumed, promoted


def test_an_execution_quiet_for_max_wait_is_promoted_and_a_critical_one_never(
    store: Store,
) -> None:
    waited = new_execution(store, "low")
    set_execution(store, waited, created_at=MAX_WAIT + 1)
    fresh = new_execution(store, "low")
    set_execution(store, fresh, created_at=MAX_WAIT - 5)
    critical = new_execution(store, "critical")
    set_execution(store, critical, created_at=MAX_WAIT + 1)

    report, resumed, promoted = reap_now(store)

    assert promoted == report.promoted == [waited]
    assert resumed == []
    # Once per max_wait: the next round leaves it alone.
    assert reap_now(store)[2] == []
    set_execution(store, waited, promoted_at=MAX_WAIT + 1)
    assert reap_now(store)[2] == [waited]


def test_a_stalls_resumption_does_not_put_the_promotion_off(store: Store) -> None:
    """A stall's resumption resends at the execution's own priority: were it to count,
    an execution stalled every stall_timeout (shorter than max_wait) would never be
    promoted."""
    execution_id = new_execution(store, "normal")
    set_execution(store, execution_id, created_at=MAX_WAIT + 1, resumed_at=1)

    assert reap_now(store)[2] == [execution_id]


def test_a_step_renewing_its_lease_does_not_hold_back_the_steps_beside_it(
    store: Store,
) -> None:
    execution_id = new_execution(store, "high")
    records = DelegationRecords(store)
    records.begin_attempt(execution_id, "s0", "worker", 1, "task-0", "worker-a")
    old = now() - timedelta(seconds=MAX_WAIT + 1)
    with store.session() as session, session.begin():
        session.execute(update(AttemptRow).values(started_at=old))
        session.execute(update(StepRow).values(started_at=old))
    set_execution(store, execution_id, created_at=MAX_WAIT + 2)
    records.renew_lease(execution_id, "s0", 1, {"done": 0.5})

    report, resumed, promoted = reap_now(store)

    assert report.lost_attempts == []
    assert resumed == []  # something runs: not stalled
    assert promoted == [execution_id]  # but s1 has waited max_wait


def test_an_execution_where_something_just_ended_is_not_promoted(store: Store) -> None:
    execution_id = new_execution(store, "low")
    set_execution(store, execution_id, created_at=MAX_WAIT + 1)
    records = DelegationRecords(store)
    records.begin_attempt(execution_id, "s0", "worker", 1, "task-0", "worker-a")

    assert reap_now(store)[2] == []


# --- through the client, embedded ----------------------------------------------------------


def stored_spec(runtime: Any, execution_id: str) -> dict[str, Any]:
    with runtime.store.session() as session:
        spec = session.scalar(select(ExecutionRow.spec).where(ExecutionRow.id == execution_id))
    assert isinstance(spec, dict)
    return spec


def test_the_priority_given_at_enqueue_is_stored_with_the_execution(runtime: Any) -> None:
    team = Team.from_yaml(
        team_yaml(
            "sequential",
            [{"id": "a", "agent": "fast"}, {"id": "b", "agent": "echo"}],
            name="queued-team",
            agents={"fast": {"target": "tests.support.agents:echo", "queue": "gpu"}},
        )
    )
    assert team.queues == ("gpu",)
    urgent = team.enqueue({"n": 1}, priority="critical")
    # The embedded worker serves every queue: the agent naming "gpu" runs too.
    assert urgent.wait(20).status == "completed"
    assert stored_spec(runtime, urgent.execution_id)["priority"] == "critical"
    plain = team.enqueue({"n": 2})
    assert plain.wait(20).status == "completed"
    assert stored_spec(runtime, plain.execution_id)["priority"] == "normal"
    with pytest.raises(ValueError, match="urgent"):
        team.enqueue({"n": 3}, priority="urgent")
