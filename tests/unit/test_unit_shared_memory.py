"""The shared memory as an attempt sees it, without a database: the rules that combine
writes, what a write may be, the lazy read, and staged messages."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration.agents.call import AgentCall, AgentResult
from orchestration.agents.team_channel import NO_TEAM
from orchestration.collaboration.attempt import AttemptCollaboration
from orchestration.collaboration.memory import combine
from orchestration.collaboration.messages import StagedMessage
from orchestration.errors import InvalidTeamWrite, PermanentAgentError
from orchestration.spec import MemoryRule
from tests.support.team_reads import RULES, Reads


def collaboration(reads: Reads, attempt: int = 1) -> AttemptCollaboration:
    return AttemptCollaboration(
        reads, "e", "s", attempt, "writer", rules=RULES, agents=("writer", "reader")
    )


@pytest.mark.parametrize(
    ("rule", "current", "value", "after"),
    [
        (MemoryRule.LAST_WRITER, [1], 2, 2),
        (MemoryRule.APPEND, None, "a", ["a"]),
        (MemoryRule.APPEND, ["a"], ["b"], ["a", ["b"]]),
        (MemoryRule.APPEND, 7, "a", ["a"]),  # cannot combine: replaced
        (MemoryRule.MERGE, None, {"a": 1}, {"a": 1}),
        (MemoryRule.MERGE, {"a": 1, "b": 1}, {"b": 2}, {"a": 1, "b": 2}),
        (MemoryRule.MERGE, "text", {"a": 1}, {"a": 1}),
        (MemoryRule.SUM, None, 2, 2),
        (MemoryRule.SUM, 2, 0.5, 2.5),
        (MemoryRule.SUM, True, 1, 1),  # a boolean is not a number here
    ],
)
def test_each_rule_combines_a_write_with_what_is_there(
    rule: MemoryRule, current: Any, value: Any, after: Any
) -> None:
    assert combine(rule, current, value) == after


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("", 1, "a string of 1 to 200"),
        ("k" * 201, 1, "a string of 1 to 200"),
        ("facts", [1], "'facts' is merged"),
        ("total", "1", "'total' is summed"),
        ("total", True, "'total' is summed"),
        ("any", {1, 2}, "is not JSON"),
        ("any", float("nan"), "is not JSON"),
    ],
)
def test_a_write_that_cannot_be_made_is_refused_at_once(key: str, value: Any, problem: str) -> None:
    team = collaboration(Reads())
    with pytest.raises(InvalidTeamWrite, match=problem):
        team.memory.update(key, value)
    assert team.batch().writes == ()


def test_reads_are_lazy_and_see_the_attempts_own_writes() -> None:
    reads = Reads({"log": ["old"], "total": 10})
    team = collaboration(reads)
    team.memory.update("log", "mine")
    team.memory.update("total", 5)
    team.memory.set("note", {"n": 1})
    assert reads.memory_reads == 0  # writing reads nothing
    assert team.memory.get("log") == ["old", "mine"]
    assert team.memory.get("total") == 15
    team.memory.update("total", 1)
    assert team.memory.all() == {"log": ["old", "mine"], "total": 16, "note": {"n": 1}}
    assert reads.memory_reads == 1
    assert team.context_version == 3


def test_set_replaces_whatever_the_key_declares() -> None:
    team = collaboration(Reads({"log": ["a"]}))
    team.memory.set("log", "reset")
    assert team.memory.get("log") == "reset"
    assert [w.rule for w in team.batch().writes] == [MemoryRule.LAST_WRITER]


def test_a_value_read_or_written_is_a_copy() -> None:
    team = collaboration(Reads({"facts": {"a": [1]}}))
    mine = {"b": [2]}
    team.memory.update("facts", mine)
    mine["b"].append(3)
    got = team.memory.get("facts")
    got["a"].append(99)
    assert team.memory.get("facts") == {"a": [1], "b": [2]}
    assert team.batch().writes[0].value == {"b": [2]}


def test_an_attempt_that_touches_nothing_reads_nothing_and_saw_no_version() -> None:
    reads = Reads()
    team = collaboration(reads)
    batch = team.batch()
    assert batch.empty
    assert team.context_version is None
    assert (reads.memory_reads, reads.inbox_reads) == (0, 0)


def test_the_inbox_alone_gives_the_version_it_was_read_at() -> None:
    reads = Reads()
    team = collaboration(reads)
    assert team.channel.inbox() == ()
    assert team.channel.inbox() == ()
    assert reads.inbox_reads == 1
    assert team.context_version == 4


def test_context_updates_are_staged_by_their_keys_rules() -> None:
    team = collaboration(Reads())
    team.with_updates(AgentResult("ok", context_updates={"log": "x", "total": 2}))
    writes = team.batch().writes
    assert [(w.key, w.value, w.rule) for w in writes] == [
        ("log", "x", MemoryRule.APPEND),
        ("total", 2, MemoryRule.SUM),
    ]


def test_messages_are_checked_and_staged_and_nothing_comes_after_the_end() -> None:
    team = collaboration(Reads())
    team.channel.send("reader", {"n": 1}, reply_to=4)
    team.channel.broadcast("all", type="note")
    with pytest.raises(InvalidTeamWrite, match="no agent 'nobody'"):
        team.channel.send("nobody", "x")
    with pytest.raises(InvalidTeamWrite, match="a message type"):
        team.channel.broadcast("x", type="t" * 51)
    batch = team.batch()
    assert batch.messages == (
        StagedMessage("reader", "message", {"n": 1}, 4),
        StagedMessage(None, "note", "all"),
    )
    with pytest.raises(InvalidTeamWrite, match="the attempt has ended"):
        team.memory.set("late", 1)
    with pytest.raises(InvalidTeamWrite, match="the attempt has ended"):
        team.channel.broadcast("late")


def test_ask_is_refused_without_an_asker() -> None:
    with pytest.raises(PermanentAgentError, match="ask is not available"):
        collaboration(Reads()).channel.ask("reader", "?")


def test_a_call_outside_an_execution_has_no_team() -> None:
    call = AgentCall("e", "s", "a", None, None, {}, 1)
    with pytest.raises(PermanentAgentError, match="not part of an execution"):
        call.shared.get("k")
    assert call.inbox == ()
    assert NO_TEAM.inbox() == ()
