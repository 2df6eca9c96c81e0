"""Shared memory and messages end to end on the embedded runtime: what agents read,
write, send and receive, what each attempt saw, and what a retry leaves."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import yaml

from orchestration import Team
from orchestration.client.handle import ExecutionHandle
from tests.support.teams import FAST_RETRY

pytestmark = pytest.mark.timeout(120)

MEMORY = "tests.support.memory_agents"


def run_team(
    agents: dict[str, str], steps: list[dict[str, Any]], input: Any = None, **team: Any
) -> ExecutionHandle:
    data = {
        "name": "shared-memory",
        **team,
        "agents": {
            name: {"kind": "python", "target": f"{MEMORY}:{target}", "retry": dict(FAST_RETRY)}
            for name, target in agents.items()
        },
        "workflow": {"strategy": "dag", "steps": steps},
    }
    handle = Team.from_yaml(yaml.safe_dump(data), source="memory-team.yaml").enqueue(input)
    report = handle.wait(timeout=60)
    assert report.status == "completed", report
    return handle


def test_a_retried_attempts_writes_and_messages_count_once(runtime: Any) -> None:
    handle = run_team(
        {"writer": "writes_then_fails_once", "listener": "inbox"},
        [
            {"id": "write", "agent": "writer"},
            {"id": "listen", "agent": "listener", "after": ["write"]},
        ],
        memory={"count": "sum", "attempts": "sum"},
    )
    report = handle.report()
    assert next(s for s in report.steps if s.id == "write").attempts == 2
    context = handle.context()
    # Attempt 1 staged count += 1 and attempts += 1, then failed: none of it applied.
    assert context.memory == {"count": 1, "attempts": 2}
    assert context.memory_version == 1
    assert [(w.writer_step, w.writer_attempt) for w in handle.memory_history("count")] == [
        ("write", 2)
    ]
    assert [m.content for m in handle.messages()] == ["from attempt 2", {"attempt": 2}]
    assert report.output == [
        {"sender": "writer", "step": "write", "to": "listener", "content": "from attempt 2"},
        {"sender": "writer", "step": "write", "to": None, "content": {"attempt": 2}},
    ]


def test_messages_reach_their_recipient_and_broadcasts_everyone_else(runtime: Any) -> None:
    handle = run_team(
        {"announcer": "sender", "listener": "inbox", "bystander": "inbox"},
        [
            {"id": "announce", "agent": "announcer"},
            {"id": "listen", "agent": "listener", "after": ["announce"]},
            {"id": "overhear", "agent": "bystander", "after": ["announce"]},
            {"id": "again", "agent": "announcer", "after": ["listen", "overhear"]},
        ],
    )
    outputs = handle.context().outputs
    direct = {"hello": "listener", "from": "announce"}
    assert [m["content"] for m in outputs["listen"]] == [direct, "to everyone"]
    assert [m["content"] for m in outputs["overhear"]] == ["to everyone"]
    assert outputs["announce"] == outputs["again"] == []  # its own broadcast is not news
    sent = handle.messages()
    assert [(m.sender, m.to, m.type) for m in sent[:2]] == [
        ("announcer", "listener", "message"),
        ("announcer", None, "note"),
    ]


def test_each_attempt_records_the_version_it_saw_and_context_at_shows_it(runtime: Any) -> None:
    handle = run_team(
        {"contributor": "contributor", "reader": "reads_memory", "quiet": "touches_nothing"},
        [
            {"id": "first", "agent": "contributor"},
            {"id": "read", "agent": "reader", "after": ["first"]},
            {"id": "quiet", "agent": "quiet", "after": ["first"]},
            {"id": "second", "agent": "contributor", "after": ["read", "quiet"]},
        ],
        memory={"log": "append", "total": "sum", "seen": "merge"},
    )
    versions = {a.step: a.context_version for a in handle.attempts()}
    assert versions == {"first": 0, "read": 1, "quiet": None, "second": 1}

    seen = handle.context(at="read")
    assert seen.at is not None and seen.at.context_version == 1
    assert seen.memory == {
        "log": ["first"],
        "total": 1,
        "seen": {"first": 1},
        "last": "first",
        "own/first": 1,
    }
    assert seen.memory == handle.context().outputs["read"]  # what the agent was given
    assert set(seen.outputs) == {"first"}
    assert handle.context(at="quiet").memory is None

    now = handle.context()
    assert now.memory_version == 2 and now.memory is not None
    assert now.memory["log"] == ["first", "second"]
    assert now.memory["total"] == 2
    assert {key.key: key.version for key in now.keys}["total"] == 2


def test_context_updates_in_the_result_are_written_by_their_rules(runtime: Any) -> None:
    handle = run_team(
        {"noter": "returns_updates"},
        [{"id": "a", "agent": "noter"}, {"id": "b", "agent": "noter", "after": ["a"]}],
        memory={"notes": "append", "total": "sum"},
    )
    assert handle.context().memory == {"notes": ["a", "b"], "total": 10}


def test_a_parallel_step_does_not_see_a_write_still_staged(runtime: Any) -> None:
    handle = run_team(
        {"stager": "stager", "peer": "peer"},
        [{"id": "stage", "agent": "stager"}, {"id": "look", "agent": "peer"}],
        input={"token": uuid.uuid4().hex},
    )
    outputs = handle.context().outputs
    assert outputs["stage"] == {"own_read": "staged by stager"}
    assert outputs["look"] == {"peer_read": "absent"}
    assert handle.context().memory == {"draft": "staged by stager"}
