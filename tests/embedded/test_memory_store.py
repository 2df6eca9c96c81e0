"""The shared memory's and the messages' records: batches applied by their keys' rules
without losing an update, once per step whatever the retries, the memory rebuilt at
any version, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import uuid

import pytest

from orchestration.collaboration.attempt import AttemptCollaboration
from orchestration.spec import MemoryRule, TeamSpec
from orchestration.store.executions import ExecutionRecords
from orchestration.store.memory import MemoryRecords
from orchestration.store.repository import Store
from workflows.plan import build_plan

pytestmark = pytest.mark.timeout(120)

RULES = {
    "log": MemoryRule.APPEND,
    "total": MemoryRule.SUM,
    "seen": MemoryRule.MERGE,
}
AGENTS = ("writer", "listener")


def _execution(url: str) -> tuple[MemoryRecords, str]:
    spec = TeamSpec.model_validate(
        {
            "name": "memory",
            "agents": {
                name: {"kind": "python", "target": "tests.support.agents:noop"} for name in AGENTS
            },
            "workflow": {"strategy": "parallel", "steps": [{"id": "s", "agent": "writer"}]},
        }
    )
    store = Store(url, connections=30)
    execution_id = str(uuid.uuid4())
    ExecutionRecords(store).create_execution(
        execution_id, spec.model_dump(mode="json"), build_plan(spec), None
    )
    return MemoryRecords(store), execution_id


def _attempt(
    records: MemoryRecords, execution_id: str, step_id: str, attempt: int = 1
) -> AttemptCollaboration:
    return AttemptCollaboration(
        records, execution_id, step_id, attempt, "writer", rules=RULES, agents=AGENTS
    )


def test_twenty_parallel_batches_lose_no_update(url: str) -> None:
    """20 steps read the memory, then apply their batches at once: every append, sum and
    merge lands, the last writer's 20 writes are each in the history, each step's own
    key is at version 1, and the memory went through versions 1 to 20."""
    records, execution_id = _execution(url)
    steps = [f"s{i:02d}" for i in range(20)]
    start = threading.Barrier(len(steps))
    errors: list[BaseException] = []

    def one(step_id: str) -> None:
        try:
            team = _attempt(records, execution_id, step_id)
            assert team.memory.get("total") is None  # read before anyone wrote
            team.memory.update("log", step_id)
            team.memory.update("total", 1)
            team.memory.update("seen", {step_id: True})
            team.memory.set("last", step_id)
            team.memory.set(f"own/{step_id}", step_id)
            start.wait(30)
            assert records.apply(team.batch()) is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(step_id,)) for step_id in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[0]

    entries = {entry.key: entry for entry in records.entries(execution_id)}
    assert sorted(entries["log"].value) == steps
    assert entries["total"].value == 20
    assert entries["seen"].value == dict.fromkeys(steps, True)
    for key in ("log", "total", "seen", "last"):
        assert entries[key].version == 20, key
    assert records.memory_version(execution_id) == 20
    for step_id in steps:
        own = entries[f"own/{step_id}"]
        assert (own.value, own.version, own.writer_step) == (step_id, 1, step_id)

    last = records.history(execution_id, "last")
    assert [write.version for write in last] == list(range(1, 21))
    # Each write's memory version is its batch's: one per step, in the order applied.
    assert sorted(write.memory_version for write in last) == list(range(1, 21))
    assert sorted(write.writer_step for write in last) == steps
    # 20 writes: the first found nothing, each other one overwrote the one before it.
    assert last[0].previous is None
    assert [write.previous for write in last[1:]] == [write.value for write in last[:-1]]
    assert entries["last"].value == last[-1].value == last[-1].writer_step


def test_a_steps_batch_applies_once_whatever_its_attempts(url: str) -> None:
    """An attempt applied its batch and its worker died before recording its success:
    the step's next attempt runs again, and its batch is refused whole."""
    records, execution_id = _execution(url)
    first = _attempt(records, execution_id, "s", attempt=1)
    first.memory.update("total", 1)
    first.channel.send("listener", "from attempt 1")
    applied = records.apply(first.batch())
    assert applied is not None and applied.memory_version == 1

    second = _attempt(records, execution_id, "s", attempt=2)
    second.memory.update("total", 1)
    second.channel.send("listener", "from attempt 2")
    assert records.apply(second.batch()) is None

    assert [entry.value for entry in records.entries(execution_id)] == [1]
    assert records.memory_version(execution_id) == 1
    assert [m.content for m in records.messages(execution_id)] == ["from attempt 1"]
    # Another step's batch is its own.
    other = _attempt(records, execution_id, "t")
    other.memory.update("total", 1)
    assert records.apply(other.batch()) is not None
    assert records.entries(execution_id)[0].value == 2


def test_own_staged_writes_are_seen_and_other_steps_are_not(url: str) -> None:
    records, execution_id = _execution(url)
    mine = _attempt(records, execution_id, "a")
    mine.memory.set("draft", "mine")
    assert mine.memory.get("draft") == "mine"

    parallel = _attempt(records, execution_id, "b")
    assert parallel.memory.get("draft") is None  # staged, not applied
    records.apply(mine.batch())
    # An attempt keeps the memory it first read: one consistent view.
    assert parallel.memory.get("draft") is None
    assert parallel.context_version == 0
    later = _attempt(records, execution_id, "c")
    assert later.memory.get("draft") == "mine"
    assert later.context_version == 1


def test_the_memory_at_each_version_is_rebuilt_from_the_history(url: str) -> None:
    records, execution_id = _execution(url)
    for step_id, writes in [
        ("a", {"log": "a1", "note": "first"}),
        ("b", {"log": "b1", "total": 2}),
        ("c", {"note": "third", "total": 3}),
    ]:
        team = _attempt(records, execution_id, step_id)
        for key, value in writes.items():
            team.memory.update(key, value)
        records.apply(team.batch())
    assert records.values_at(execution_id, 0) == {}
    assert records.values_at(execution_id, 1) == {"log": ["a1"], "note": "first"}
    assert records.values_at(execution_id, 2) == {"log": ["a1", "b1"], "note": "first", "total": 2}
    assert records.values_at(execution_id, 3) == {
        "log": ["a1", "b1"],
        "note": "third",
        "total": 5,
    }


def test_messages_only_deliver_without_a_memory_version(url: str) -> None:
    records, execution_id = _execution(url)
    team = _attempt(records, execution_id, "a")
    team.channel.send("listener", {"n": 1})
    team.channel.broadcast("all")
    applied = records.apply(team.batch())
    assert applied is not None and applied.memory_version is None
    assert records.memory_version(execution_id) == 0
    assert [m.to for m in records.inbox(execution_id, "listener").messages] == ["listener", None]
    # A broadcast does not come back to its sender.
    assert records.inbox(execution_id, "writer").messages == ()
