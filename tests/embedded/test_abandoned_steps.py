"""A run whose embedded worker stops with its process (`run-team` in embedded mode, after
its --timeout or Ctrl-C) is cancelled with its running steps: none stays `running`, and
a result that still lands in the worker's last moments changes only its attempt's audit
row, never the step or the execution. A plain stop (`manage.py stop`) still keeps a
running step's result.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from orchestration import ExecutionReport, StepReport, Team
from orchestration.constants import COMPLETED, OUTCOME_SUCCESS
from orchestration.store.delegations import DelegationRecords
from orchestration.store.executions import ExecutionRecords
from orchestration.store.repository import AttemptEnd, Countdown, Store
from orchestration.team_file import parse_team
from tests.support.teams import team_yaml
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(60)


def by_id(report: ExecutionReport) -> dict[str, StepReport]:
    return {step.id: step for step in report.steps}


def _started(url: str) -> tuple[ExecutionRecords, DelegationRecords, str]:
    """An execution of two sequential steps whose first step's attempt 1 runs."""
    data = {
        "name": "abandoned",
        "agents": {"a": {"target": "json:dumps"}},
        "workflow": {
            "strategy": "sequential",
            "steps": [{"id": "first", "agent": "a"}, {"id": "second", "agent": "a"}],
        },
    }
    spec = parse_team(yaml.safe_dump(data), source="abandoned.yaml")
    store = Store(url)
    executions, delegations = ExecutionRecords(store), DelegationRecords(store)
    execution_id = str(uuid.uuid4())
    executions.create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), input_value=None
    )
    begun = delegations.begin_attempt(execution_id, "first", "a", 1, "task-1", "w")
    assert begun == "started"
    return executions, delegations, execution_id


def _late_success(delegations: DelegationRecords, execution_id: str) -> Any:
    end = AttemptEnd(
        execution_id=execution_id,
        step_id="first",
        attempt=1,
        agent="a",
        task_id="task-1",
        worker="w",
        started_at=datetime.now(UTC),
        duration_ms=5,
        outcome=OUTCOME_SUCCESS,
    )
    return delegations.record_success(end, "late", Countdown(dependents=("second",)))


def test_a_late_result_does_not_bring_an_abandoned_step_back(url: str) -> None:
    executions, delegations, execution_id = _started(url)

    assert executions.cancel_execution(execution_id, "worker stopped", abandon_running=True)
    steps = {row.step_id: row for row in executions.steps(execution_id)}
    assert {sid: row.status for sid, row in steps.items()} == {
        "first": "cancelled",
        "second": "cancelled",
    }
    (open_attempt,) = executions.attempts(execution_id)
    assert open_attempt.outcome == "lost"
    assert open_attempt.error_type == "WorkerStopped"

    # The call ends after all: nothing is decided, nothing counted down.
    assert _late_success(delegations, execution_id) is None
    steps = {row.step_id: row for row in executions.steps(execution_id)}
    assert steps["first"].status == "cancelled"
    assert steps["first"].output is None
    assert steps["second"].waiting == 1
    assert executions.execution_status(execution_id) == "cancelled"
    # Its attempt's row tells what really happened.
    (attempt,) = executions.attempts(execution_id)
    assert attempt.outcome == OUTCOME_SUCCESS


def test_a_plain_stop_keeps_the_result_of_a_step_already_running(url: str) -> None:
    executions, delegations, execution_id = _started(url)

    assert executions.cancel_execution(execution_id, "stopped")
    statuses = {row.step_id: row.status for row in executions.steps(execution_id)}
    assert statuses == {"first": "running", "second": "cancelled"}
    assert _late_success(delegations, execution_id) is not None
    statuses = {row.step_id: row.status for row in executions.steps(execution_id)}
    assert statuses == {"first": COMPLETED, "second": "cancelled"}


def test_abandoning_a_run_in_process_leaves_no_step_running(runtime: Any) -> None:
    team = Team.from_yaml(
        team_yaml("sequential", [{"id": "slow", "agent": "sleepy"}, {"id": "never"}])
    )
    handle = team.enqueue(0.5)
    deadline = time.monotonic() + 10
    while by_id(handle.report())["slow"].status != "running":
        assert time.monotonic() < deadline, handle.report()
        time.sleep(0.02)

    assert handle.cancel("its worker stops", abandon_running=True) is True
    report = handle.report()
    assert report.status == "cancelled"
    assert {step.id: step.status for step in report.steps} == {
        "slow": "cancelled",
        "never": "cancelled",
    }

    # This process's worker lives on, so the call ends and its result lands: in the
    # attempt's row only.
    while not any(
        row.outcome == OUTCOME_SUCCESS
        for row in runtime.executions.attempts(handle.execution_id, "slow")
    ):
        assert time.monotonic() < deadline, runtime.executions.attempts(handle.execution_id)
        time.sleep(0.02)
    final = handle.report()
    assert final.status == "cancelled"
    assert final.output is None
    assert by_id(final)["slow"].status == "cancelled"
    assert by_id(final)["never"].attempts == 0
