"""Queues and priorities, without a broker: what a team file may say, the priority number
each level gets on each broker, the Celery settings that make the broker honour them, and
the copy rule that makes a promoted step's two messages run it once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import click
import pytest
from pydantic import ValidationError

from orchestration.cli.process_commands import _queues
from orchestration.engine import decisions as d
from orchestration.priorities import Priority
from orchestration.spec import TeamSpec, parse_agent
from tests.support.settings import given_settings
from tests.support.teams import team_data
from workers.celery_config import celery_config
from workers.publish import PROMOTED, Route, Routing, delegation_message, first_messages
from workers.reaper import promotable_steps
from workflows.plan import build_plan
from workflows.status import StepStatus

REDIS = "redis://127.0.0.1:6379/3"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


# --- the team file -----------------------------------------------------------------------


def test_an_agent_names_its_queue_and_a_team_its_priority() -> None:
    data = team_data(
        "parallel", [{"id": "a"}], agents={"echo": {"target": "x.y:z", "queue": "gpu"}}
    )
    data["priority"] = "high"
    spec = TeamSpec.model_validate(data)
    assert spec.agents["echo"].queue == "gpu"
    assert spec.priority is Priority.HIGH
    assert TeamSpec.model_validate(team_data("parallel", [{"id": "a"}])).priority is Priority.NORMAL


@pytest.mark.parametrize(
    "queue",
    ["", "gpu,cpu", "gpu:1", "has space", "-leading-dash", "x" * 101, "gpu\n"],
)
def test_a_queue_name_is_a_bounded_identifier(queue: str) -> None:
    with pytest.raises(ValidationError, match="queue"):
        parse_agent({"target": "x.y:z", "queue": queue})


def test_an_unknown_priority_is_refused() -> None:
    data = {**team_data("parallel", [{"id": "a"}]), "priority": "urgent"}
    with pytest.raises(ValidationError, match="priority"):
        TeamSpec.model_validate(data)


def test_a_stored_spec_without_a_priority_runs_at_normal() -> None:
    assert Priority.of(None) is Priority.NORMAL
    assert Priority.of("low") is Priority.LOW
    assert [p.promotable for p in Priority] == [False, True, True, True]


# --- priority numbers and Celery settings --------------------------------------------------


def test_redis_serves_zero_first_and_rabbitmq_the_highest_number() -> None:
    redis = Routing.for_settings(given_settings(broker_url=REDIS))
    rabbit = Routing.for_settings(given_settings(broker_url=RABBITMQ))
    levels = [PROMOTED, "critical", "high", "normal", "low"]
    assert [redis.number(level) for level in levels] == [0, 1, 2, 3, 4]
    assert [rabbit.number(level) for level in levels] == [4, 3, 2, 1, 0]
    assert celery_config(given_settings(broker_url=REDIS))["broker_transport_options"][
        "priority_steps"
    ] == [0, 1, 2, 3, 4]
    rabbit_config = celery_config(given_settings(broker_url=RABBITMQ))
    assert rabbit_config["task_queue_max_priority"] == 4
    assert rabbit_config["worker_prefetch_multiplier"] == 1


def test_troupes_own_tasks_go_above_every_delegation() -> None:
    for broker, top in ((REDIS, 0), (RABBITMQ, 4)):
        schedule = celery_config(given_settings(broker_url=broker, queue="q"))["beat_schedule"]
        for entry in schedule.values():
            assert entry["options"]["queue"] == "q"
            assert entry["options"]["priority"] == top


def test_each_delegation_goes_to_its_agents_queue_at_the_executions_priority() -> None:
    data = team_data(
        "dag",
        [{"id": "a", "agent": "fast"}, {"id": "b", "agent": "echo"}],
        agents={"fast": {"target": "x.y:z", "queue": "gpu"}},
    )
    spec = TeamSpec.model_validate(data)
    routing = Routing.for_settings(given_settings(broker_url=REDIS, queue="main"))
    messages = first_messages(build_plan(spec), "e1", routing, spec.agents, Priority.LOW)
    options = {m.args[1]: (m.options["queue"], m.options["priority"]) for m in messages}
    assert options == {"a": ("gpu", 4), "b": ("main", 4)}


def test_embedded_sends_everything_to_its_one_queue_without_priorities() -> None:
    routing = Routing.for_settings(given_settings(queue="main"))
    gpu = parse_agent({"target": "x.y:z", "queue": "gpu"})
    assert routing.step(gpu, Priority.CRITICAL) == Route("main", None)
    message = delegation_message("e", "s", "a", routing.step(gpu, Priority.LOW))
    assert "priority" not in message.options and message.options["queue"] == "main"


# --- `manage.py worker --queues` ----------------------------------------------------------


def test_worker_queues_are_checked_like_an_agents() -> None:
    settings = given_settings(broker_url=REDIS, queue="troupe")
    assert _queues(None, settings) == ["troupe"]
    assert _queues("gpu, troupe,gpu", settings) == ["gpu", "troupe"]
    for bad in ("gpu:1", ",", "x" * 101):
        with pytest.raises(click.UsageError, match="--queues"):
            _queues(bad, settings)
    # Troupe's own queue is served under whatever name TROUPE_QUEUE gives it.
    assert _queues("legacy:queue", given_settings(queue="legacy:queue")) == ["legacy:queue"]


# --- the two messages of a promoted step ---------------------------------------------------


def _view(status: StepStatus, *, orphaned_by: str | None = None) -> d.View:
    row = SimpleNamespace(step_id="s", status=status, fan_out=None, waiting=0)
    step = SimpleNamespace(id="s", deps=(), when=None, map=None, deadline=None, visible=())
    return d.View(
        step=step,  # type: ignore[arg-type]
        row=row,  # type: ignore[arg-type]
        rows={},
        execution_status="running",
        input=None,
        attempt=1,
        recorded=None,
        task_id="second-copy",
        orphaned_by=orphaned_by,
        lease_ttl=15,
        lost=0,
        max_attempts=3,
        now=NOW,
    )


def test_a_first_delivery_finding_its_step_decided_runs_and_sends_nothing() -> None:
    # The earlier message of a promoted step (or the promoted one, if the earlier came
    # first): whoever decided the step sent on what it made ready.
    assert d.decide(_view(StepStatus.COMPLETED)) == d.Stale()
    # A message delivered again may be the one whose run decided it and died.
    assert d.decide(_view(StepStatus.COMPLETED, orphaned_by="second-copy")) == d.Redrive()


def test_a_promotion_skips_steps_running_or_waiting_for_their_backoff() -> None:
    def row(step_id: str, status: StepStatus, due: datetime | None = None) -> Any:
        return SimpleNamespace(step_id=step_id, status=status, next_attempt_at=due)

    rows = [
        row("ready", StepStatus.PENDING),
        row("running", StepStatus.RUNNING),
        row("retry-due", StepStatus.RETRYING, NOW - timedelta(seconds=1)),
        row("retry-later", StepStatus.RETRYING, NOW + timedelta(seconds=5)),
    ]
    assert promotable_steps(rows, at=NOW) == ("ready", "retry-due")
