"""An execution's shared memory and messages: what an attempt reads when it first looks,
the one transaction that applies what a successful attempt staged, and the client's
reads (the memory now or at a version, a key's history, the messages).

Applying a batch, in one transaction:

1. insert the step's marker in ``troupe_memory_applied`` (primary key: execution, step).
   If it is there already, the step's batch was applied by an earlier attempt or copy
   and nothing is applied: a retry's writes never apply twice.
2. with memory writes, raise the execution's ``memory_version`` by one. The UPDATE locks
   the execution's row until the commit, so the batches of parallel steps apply one
   after another (on SQLite, the one writer at a time does the same), and each reads
   the keys as the one before left them: no update is lost, and the batches' order is
   the order of their memory versions.
3. each write, in the order staged, by its rule onto the key's current value: the key's
   row (value, version + 1, rule, writer, time) and a history row (the value after, the
   one it replaced, the memory version), so the memory at any version can be rebuilt.
4. insert the messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import DateTime, Table, and_, bindparam, insert, or_, select, text, update

from orchestration.agents.team_channel import Message
from orchestration.collaboration.attempt import Batch
from orchestration.collaboration.memory import MemorySnapshot, combine
from orchestration.collaboration.messages import Inbox
from orchestration.errors import ExecutionNotFound
from orchestration.store.models import (
    ExecutionRow,
    MemoryHistoryRow,
    MemoryRow,
    MessageRow,
)
from orchestration.store.repository import Store, _retrying, aware, now

_memory: Table = MemoryRow.__table__  # type: ignore[assignment]

_MARK_APPLIED: Final = text(
    """
INSERT INTO troupe_memory_applied (execution_id, step_id, attempt, at)
VALUES (:eid, :sid, :att, :ts)
ON CONFLICT (execution_id, step_id) DO NOTHING"""
).bindparams(bindparam("ts", type_=DateTime(timezone=True)))

_NEXT_VERSION: Final = text(
    """
UPDATE troupe_executions SET memory_version = memory_version + 1
WHERE id = :eid
RETURNING memory_version"""
)

_UPDATE_KEY: Final = (
    update(_memory)
    .where(_memory.c.execution_id == bindparam("b_eid"), _memory.c.key == bindparam("b_key"))
    .values(
        value=bindparam("b_value", type_=_memory.c.value.type),
        version=bindparam("b_version"),
        rule=bindparam("b_rule"),
        writer_step=bindparam("b_step"),
        writer_attempt=bindparam("b_attempt"),
        updated_at=bindparam("b_at", type_=_memory.c.updated_at.type),
    )
)


@dataclass(frozen=True)
class Applied:
    """A batch applied: the execution's memory version after it (None: it had no
    memory writes, only messages)."""

    memory_version: int | None


@dataclass(frozen=True)
class MemoryEntry:
    """One key of the memory as it stands."""

    key: str
    value: Any
    version: int
    rule: str
    writer_step: str
    writer_attempt: int
    updated_at: datetime


@dataclass(frozen=True)
class MemoryWrite:
    """One write of a key's history."""

    key: str
    version: int
    memory_version: int
    value: Any
    previous: Any
    rule: str
    writer_step: str
    writer_attempt: int
    at: datetime


class MemoryRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    # --- an attempt's reads (each one statement: one snapshot of the database) ----------

    @_retrying
    def memory_snapshot(self, execution_id: str) -> MemorySnapshot:
        query = (
            select(ExecutionRow.memory_version, MemoryRow.key, MemoryRow.value)
            .select_from(ExecutionRow)
            .outerjoin(MemoryRow, MemoryRow.execution_id == ExecutionRow.id)
            .where(ExecutionRow.id == execution_id)
        )
        with self._store.reader.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            raise ExecutionNotFound(execution_id)
        values = {key: value for _, key, value in rows if key is not None}
        return MemorySnapshot(version=int(rows[0][0]), values=values)

    @_retrying
    def inbox(self, execution_id: str, agent: str) -> Inbox:
        """Messages to ``agent``, and broadcasts from any other agent, oldest first."""
        query = (
            select(ExecutionRow.memory_version, *_MESSAGE_COLUMNS)
            .select_from(ExecutionRow)
            .outerjoin(
                MessageRow,
                and_(
                    MessageRow.execution_id == ExecutionRow.id,
                    or_(
                        MessageRow.recipient == agent,
                        and_(MessageRow.recipient.is_(None), MessageRow.sender != agent),
                    ),
                ),
            )
            .where(ExecutionRow.id == execution_id)
            .order_by(MessageRow.id)
        )
        with self._store.reader.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            raise ExecutionNotFound(execution_id)
        found = tuple(_message(row) for row in rows if row.id is not None)
        return Inbox(version=int(rows[0][0]), messages=found)

    # --- a successful attempt's batch ----------------------------------------------------

    @_retrying
    def apply(self, batch: Batch) -> Applied | None:
        """Apply ``batch`` (see the module's docstring). None: this step's batch was
        applied before, and nothing was applied now."""
        if batch.empty:
            return Applied(None)
        eid = batch.execution_id
        with self._store.engine.begin() as connection:
            marked = connection.execute(
                _MARK_APPLIED,
                {"eid": eid, "sid": batch.step_id, "att": batch.attempt, "ts": now()},
            )
            if not marked.rowcount:
                return None
            version = None
            if batch.writes:
                version = connection.execute(_NEXT_VERSION, {"eid": eid}).scalar()
                if version is None:
                    raise ExecutionNotFound(eid)
            # Read once the batches before this one have committed, so that times
            # follow memory versions (on one clock).
            stamp = now()
            if version is not None:
                self._write(connection, batch, int(version), stamp)
            if batch.messages:
                connection.execute(
                    insert(MessageRow),
                    [
                        {
                            "execution_id": eid,
                            "sender": batch.agent,
                            "sender_step": batch.step_id,
                            "recipient": message.to,
                            "type": message.type,
                            "content": message.content,
                            "reply_to": message.reply_to,
                            "created_at": stamp,
                        }
                        for message in batch.messages
                    ],
                )
        return Applied(None if version is None else int(version))

    def _write(self, connection: Any, batch: Batch, version: int, stamp: datetime) -> None:
        keys = sorted({write.key for write in batch.writes})
        current: dict[str, tuple[Any, int]] = {
            key: (value, key_version)
            for key, value, key_version in connection.execute(
                select(MemoryRow.key, MemoryRow.value, MemoryRow.version).where(
                    MemoryRow.execution_id == batch.execution_id, MemoryRow.key.in_(keys)
                )
            )
        }
        existed = set(current)
        history: list[dict[str, Any]] = []
        last: dict[str, dict[str, Any]] = {}
        for write in batch.writes:
            previous, key_version = current.get(write.key, (None, 0))
            value = combine(write.rule, previous, write.value)
            current[write.key] = (value, key_version + 1)
            writer = {
                "rule": write.rule.value,
                "writer_step": batch.step_id,
                "writer_attempt": batch.attempt,
            }
            history.append(
                {
                    "execution_id": batch.execution_id,
                    "key": write.key,
                    "version": key_version + 1,
                    "memory_version": version,
                    "value": value,
                    "previous": previous,
                    "at": stamp,
                    **writer,
                }
            )
            last[write.key] = {"value": value, "version": key_version + 1, **writer}
        added = [
            {"execution_id": batch.execution_id, "key": key, "updated_at": stamp, **row}
            for key, row in last.items()
            if key not in existed
        ]
        if added:
            connection.execute(insert(MemoryRow), added)
        changed = [
            {
                "b_eid": batch.execution_id,
                "b_key": key,
                "b_value": row["value"],
                "b_version": row["version"],
                "b_rule": row["rule"],
                "b_step": row["writer_step"],
                "b_attempt": row["writer_attempt"],
                "b_at": stamp,
            }
            for key, row in last.items()
            if key in existed
        ]
        if changed:
            connection.execute(_UPDATE_KEY, changed)
        connection.execute(insert(MemoryHistoryRow), history)

    # --- the client's reads --------------------------------------------------------------

    @_retrying
    def memory_version(self, execution_id: str) -> int:
        with self._store.reader.connect() as connection:
            version = connection.execute(
                select(ExecutionRow.memory_version).where(ExecutionRow.id == execution_id)
            ).scalar()
        if version is None:
            raise ExecutionNotFound(execution_id)
        return int(version)

    @_retrying
    def entries(self, execution_id: str) -> list[MemoryEntry]:
        """Every key as it stands, by key."""
        query = (
            select(MemoryRow).where(MemoryRow.execution_id == execution_id).order_by(MemoryRow.key)
        )
        with self._store.session() as session:
            return [
                MemoryEntry(
                    key=row.key,
                    value=row.value,
                    version=row.version,
                    rule=row.rule,
                    writer_step=row.writer_step,
                    writer_attempt=row.writer_attempt,
                    updated_at=aware(row.updated_at),
                )
                for row in session.scalars(query)
            ]

    @_retrying
    def values_at(self, execution_id: str, memory_version: int) -> dict[str, Any]:
        """The memory as it was at ``memory_version``: each key's last write at or
        before it, by key."""
        query = (
            select(MemoryHistoryRow.key, MemoryHistoryRow.value)
            .where(
                MemoryHistoryRow.execution_id == execution_id,
                MemoryHistoryRow.memory_version <= memory_version,
            )
            .order_by(MemoryHistoryRow.key, MemoryHistoryRow.version)
        )
        with self._store.reader.connect() as connection:
            rows = connection.execute(query).all()
        # Ordered by version within each key: the last one seen is the key's value.
        return {key: value for key, value in rows}

    @_retrying
    def history(self, execution_id: str, key: str) -> list[MemoryWrite]:
        query = (
            select(MemoryHistoryRow)
            .where(MemoryHistoryRow.execution_id == execution_id, MemoryHistoryRow.key == key)
            .order_by(MemoryHistoryRow.version)
        )
        with self._store.session() as session:
            return [_write_of(row) for row in session.scalars(query)]

    @_retrying
    def messages(self, execution_id: str) -> list[Message]:
        query = (
            select(*_MESSAGE_COLUMNS)
            .where(MessageRow.execution_id == execution_id)
            .order_by(MessageRow.id)
        )
        with self._store.reader.connect() as connection:
            return [_message(row) for row in connection.execute(query)]


_MESSAGE_COLUMNS: Final = (
    MessageRow.id,
    MessageRow.sender,
    MessageRow.sender_step,
    MessageRow.recipient,
    MessageRow.type,
    MessageRow.content,
    MessageRow.reply_to,
    MessageRow.created_at,
)


def _message(row: Any) -> Message:
    return Message(
        id=row.id,
        sender=row.sender,
        sender_step=row.sender_step,
        to=row.recipient,
        type=row.type,
        content=row.content,
        reply_to=row.reply_to,
        at=aware(row.created_at),
    )


def _write_of(row: MemoryHistoryRow) -> MemoryWrite:
    return MemoryWrite(
        key=row.key,
        version=row.version,
        memory_version=row.memory_version,
        value=row.value,
        previous=row.previous,
        rule=row.rule,
        writer_step=row.writer_step,
        writer_attempt=row.writer_attempt,
        at=aware(row.at),
    )
