"""Human approval's records on SQLite and PostgreSQL: a request pauses its step once,
one decision wins however many race for it, the stall check leaves a waiting step alone
until its timeout (and recovers one whose timer or whose sending-on was lost), and the
timer goes in hops below the broker's redelivery bound."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from orchestration.spec import TeamSpec
from orchestration.store.approvals import ApprovalRecords
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.maintenance import MaintenanceRecords
from orchestration.store.models import ExecutionRow, StepRow
from orchestration.store.repository import Store, now
from workers.approval_timer import TimerOutcome, run_timer
from workers.reaper import reap
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(60)

LEASE_TTL = 1.0
STALL = 5.0


@pytest.fixture
def store(url: str) -> Store:
    return Store(url)


def new_execution(store: Store) -> str:
    spec = TeamSpec.model_validate(
        {
            "name": "approval-records",
            "agents": {"worker": {"target": "tests.support.approval_agents:record"}},
            "workflow": {
                "strategy": "dag",
                "steps": [{"id": "gate", "approval": {"prompt": "Go?", "timeout": 60}}],
            },
        }
    )
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), None
    )
    return execution_id


def step_status(store: Store, execution_id: str) -> str | None:
    return ApprovalRecords(store).step_status(execution_id, "gate")


def test_a_request_pauses_the_step_once(store: Store) -> None:
    records = ApprovalRecords(store)
    execution_id = new_execution(store)
    timeout_at = now() + timedelta(seconds=60)
    first = records.request(execution_id, "gate", "Go?", timeout_at)
    # A second copy of the message asks again: the first request and its timeout hold.
    again = records.request(execution_id, "gate", "Go?", timeout_at + timedelta(seconds=5))
    assert again == first
    assert abs((first.timeout_at - timeout_at).total_seconds()) < 0.001
    assert first.decision is None
    assert step_status(store, execution_id) == "waiting_approval"
    assert ExecutionRecords(store).execution_status(execution_id) == "running"


def test_one_decision_wins_however_many_race(store: Store) -> None:
    records = ApprovalRecords(store)
    execution_id = new_execution(store)
    records.request(execution_id, "gate", "Go?", now() + timedelta(seconds=60))
    results: dict[str, Any] = {}
    start = threading.Barrier(6)

    def decide(who: str) -> None:
        start.wait()
        results[who] = records.decide(execution_id, "gate", "approved", who, None)

    threads = [threading.Thread(target=decide, args=(f"p{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    winners = [who for who, found in results.items() if found is not None]
    assert len(results) == 6
    assert len(winners) == 1, results
    row = records.get(execution_id, "gate")
    assert row is not None and row.decided_by == winners[0]
    assert step_status(store, execution_id) == "pending"
    # Deciding a step that is not waiting (decided, or never asked) records nothing.
    assert records.decide(execution_id, "gate", "rejected", "late", None) is None
    assert records.decide(new_execution(store), "gate", "approved", "early", None) is None


def test_a_request_after_the_decision_does_not_pause_the_step_again(store: Store) -> None:
    records = ApprovalRecords(store)
    execution_id = new_execution(store)
    records.request(execution_id, "gate", "Go?", now() + timedelta(seconds=60))
    assert records.decide(execution_id, "gate", "approved", "gina", None) is not None
    late = records.request(execution_id, "gate", "Go?", now() + timedelta(seconds=60))
    assert late.decision == "approved"
    assert step_status(store, execution_id) == "pending"


def age(store: Store, execution_id: str, seconds: float) -> None:
    """Make the execution and its step's start ``seconds`` old."""
    old = now() - timedelta(seconds=seconds)
    with store.session() as session, session.begin():
        session.execute(
            update(ExecutionRow).where(ExecutionRow.id == execution_id).values(created_at=old)
        )
        session.execute(
            update(StepRow).where(StepRow.execution_id == execution_id).values(started_at=old)
        )


def resumed_now(store: Store) -> list[str]:
    resumed: list[str] = []
    reap(MaintenanceRecords(store), lease_ttl=LEASE_TTL, stall_timeout=STALL, resume=resumed.append)
    return resumed


def set_due(store: Store, execution_id: str, seconds_ago: float) -> None:
    with store.session() as session, session.begin():
        session.execute(
            update(StepRow)
            .where(StepRow.execution_id == execution_id)
            .values(next_attempt_at=now() - timedelta(seconds=seconds_ago))
        )


def test_the_stall_check_leaves_a_waiting_step_alone_until_its_timeout(store: Store) -> None:
    records = ApprovalRecords(store)
    waits = new_execution(store)
    records.request(waits, "gate", "Go?", now() + timedelta(seconds=600))
    age(store, waits, STALL + 60)
    # Its timer was lost (a broker that lost its messages): the stall check resumes it
    # once the timeout is a stall timeout past, and the delegation applies it.
    lost_timer = new_execution(store)
    records.request(lost_timer, "gate", "Go?", now() - timedelta(seconds=STALL + 5))
    age(store, lost_timer, STALL + 60)
    # Decided, and the message that was to send it on was lost.
    unsent = new_execution(store)
    records.request(unsent, "gate", "Go?", now() + timedelta(seconds=600))
    assert records.decide(unsent, "gate", "approved", "hal", None) is not None
    age(store, unsent, STALL + 60)
    set_due(store, unsent, STALL + 5)

    resumed = resumed_now(store)

    assert waits not in resumed
    assert sorted(resumed) == sorted([lost_timer, unsent])


def test_a_recent_decision_is_not_a_stall(store: Store) -> None:
    records = ApprovalRecords(store)
    execution_id = new_execution(store)
    records.request(execution_id, "gate", "Go?", now() + timedelta(seconds=600))
    age(store, execution_id, STALL + 60)
    assert records.decide(execution_id, "gate", "approved", "ivy", None) is not None

    assert execution_id not in resumed_now(store)


def test_the_timer_goes_in_hops_below_the_brokers_bound_and_fires_once(store: Store) -> None:
    records = ApprovalRecords(store)
    delegations = DelegationRecords(store)
    execution_id = new_execution(store)
    records.request(execution_id, "gate", "Go?", now() + timedelta(seconds=60))
    # A countdown beyond what the broker holds a message (max_countdown) goes in hops.
    hop = run_timer(delegations, records, execution_id, "gate", max_countdown=5.0)
    assert hop == TimerOutcome(rearm=5.0)
    near = run_timer(delegations, records, execution_id, "gate", max_countdown=3600.0)
    assert near.rearm is not None and 59 < near.rearm <= 60

    due = new_execution(store)
    records.request(due, "gate", "Go?", now() - timedelta(seconds=1))
    fired = run_timer(delegations, records, due, "gate", max_countdown=5.0)
    assert fired == TimerOutcome(send=("(approval)", 1))
    row = records.get(due, "gate")
    assert row is not None and (row.decision, row.decided_by) == ("rejected", "timeout")
    # A copy of the timer (or one that comes after a person decided) changes nothing.
    assert run_timer(delegations, records, due, "gate", max_countdown=5.0) == TimerOutcome()
