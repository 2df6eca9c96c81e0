"""Table definitions. Alembic migrations in migrations/ create them; keep both in step."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        Any: JSON,
        datetime: DateTime(timezone=True),
    }


class ExecutionRow(Base):
    __tablename__ = "troupe_executions"
    # `executions` lists the latest first; `purge` finds the old ones.
    __table_args__ = (Index("ix_troupe_executions_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    team: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(20))
    # The validated team spec: workers plan from it, so a step needs only ids on the wire.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # sha256 of the spec's canonical JSON: workers plan each distinct spec once.
    spec_digest: Mapped[str | None] = mapped_column(String(64))
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    # Sink steps (nothing depends on them) not yet decided: the write that brings this
    # to zero ends the execution.
    sinks_left: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    cancel_requested_at: Mapped[datetime | None]
    # When a reaper last resumed it (compare-and-set: one reaper at a time).
    resumed_at: Mapped[datetime | None]
    # When a reaper last sent its waiting steps again above every priority, because
    # nothing of it had started or ended for max_wait (compare-and-set, likewise).
    promoted_at: Mapped[datetime | None]
    # The budget (None: no limit), and what calls spent plus what calls in flight hold
    # reserved: a reservation is one conditional UPDATE of this row.
    max_cost_usd: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int | None] = mapped_column(BigInteger)
    committed_cost_usd: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    committed_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Batches of shared-memory writes applied so far: a version of the whole memory.
    memory_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The execution this one retries (`manage.py retry`): an id, not a foreign key, so
    # purging the old one leaves the link as a name.
    retry_of: Mapped[str | None] = mapped_column(String(36), index=True)


class StepRow(Base):
    __tablename__ = "troupe_steps"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"), primary_key=True
    )
    # A plan step's id, or a map item's: its map step's id and its index, "split[3]".
    step_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    agent: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(Integer)
    # Depth in the plan, for display; scheduling follows ``waiting``.
    level: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    # Steps this one waits for that are not decided yet; zero: ready to run.
    waiting: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Steps added at run time: the step that added it (a map item's map step), its
    # index and item, who added it and why, and the steps it counts down when decided
    # (a plan step's come from the plan).
    parent_id: Mapped[str | None] = mapped_column(String(200))
    item_index: Mapped[int | None] = mapped_column(Integer)
    item: Mapped[Any] = mapped_column(JSON, nullable=True)
    origin: Mapped[Any] = mapped_column(JSON, nullable=True)
    dependents: Mapped[Any] = mapped_column(JSON, nullable=True)
    # A map step: how many items its expansion added (None until it expanded).
    fan_out: Mapped[int | None] = mapped_column(Integer)
    skip_cause: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    output: Mapped[Any] = mapped_column(JSON, nullable=True)
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None]


class AttemptRow(Base):
    """The audit trail: one row per attempt of every delegation."""

    __tablename__ = "troupe_attempts"
    __table_args__ = (
        UniqueConstraint("execution_id", "step_id", "attempt", name="uq_troupe_attempt"),
        Index("ix_troupe_attempts_agent_started", "agent", "started_at"),
        # Windows of attempts by time (audit export pages through it by (started_at, id)).
        Index("ix_troupe_attempts_started", "started_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE")
    )
    step_id: Mapped[str] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(200))
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(200))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The lease: renewed while the agent runs, so a redelivered message can tell a
    # running attempt from one whose worker died.
    heartbeat_at: Mapped[datetime | None]
    progress: Mapped[Any] = mapped_column(JSON, nullable=True)
    # What the attempt consumed (tokens, cost, model, endpoint), and its tool calls.
    usage: Mapped[Any] = mapped_column(JSON, nullable=True)
    tool_calls: Mapped[Any] = mapped_column(JSON, nullable=True)
    # The execution's memory_version when the attempt began: what it saw.
    context_version: Mapped[int | None] = mapped_column(Integer)


class BreakerRow(Base):
    """One circuit breaker, shared by every worker. Changed only by compare-and-set."""

    __tablename__ = "troupe_breakers"

    # The identity of what is called (orchestration.agents.identity), not an agent's name.
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    # The sliding window, oldest first: "1" a failure, "0" a success.
    outcomes: Mapped[str] = mapped_column(String(1000), default="")
    opened_at: Mapped[datetime | None]
    next_trial_at: Mapped[datetime | None]
    half_open_calls: Mapped[int] = mapped_column(Integer, default=0)
    probe_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class BreakerEventRow(Base):
    """A change of a breaker's state, written with the change: the breaker's row holds
    only its latest state, and `report` needs to see one that keeps opening."""

    __tablename__ = "troupe_breaker_events"
    __table_args__ = (Index("ix_troupe_breaker_events_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime]
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class AgentRow(Base):
    """Agents seen in enqueued teams, one row per agent of each team, with the identity
    of what it calls (orchestration.agents.identity): the heartbeat probes each identity
    once, and one identity lists every name and team that uses it."""

    __tablename__ = "troupe_agents"

    team: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    identity: Mapped[str] = mapped_column(String(200), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime]


class HeartbeatRow(Base):
    """One health probe of an identity (what agents call, not an agent's name)."""

    __tablename__ = "troupe_heartbeats"
    __table_args__ = (Index("ix_troupe_heartbeats_identity_at", "identity", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identity: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime]
    healthy: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


def _execution_fk() -> Mapped[str]:
    return mapped_column(String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"))


class MemoryRow(Base):
    """One key of an execution's shared memory, at its latest version."""

    __tablename__ = "troupe_memory"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer)
    rule: Mapped[str] = mapped_column(String(16))
    writer_step: Mapped[str] = mapped_column(String(200))
    writer_attempt: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime]


class MemoryHistoryRow(Base):
    """Every write to the shared memory: the value after it, and what it replaced."""

    __tablename__ = "troupe_memory_history"
    __table_args__ = (Index("ix_troupe_memory_history_key", "execution_id", "key", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = _execution_fk()
    key: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    memory_version: Mapped[int] = mapped_column(Integer)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    rule: Mapped[str] = mapped_column(String(16))
    previous: Mapped[Any] = mapped_column(JSON, nullable=True)
    writer_step: Mapped[str] = mapped_column(String(200))
    writer_attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]


class MemoryAppliedRow(Base):
    """A step whose memory writes and messages were applied (once, whatever retries)."""

    __tablename__ = "troupe_memory_applied"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]


class MessageRow(Base):
    """A message between agents of one execution (``recipient`` None: everyone)."""

    __tablename__ = "troupe_messages"
    __table_args__ = (Index("ix_troupe_messages_recipient", "execution_id", "recipient"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = _execution_fk()
    sender: Mapped[str] = mapped_column(String(200))
    sender_step: Mapped[str] = mapped_column(String(200))
    recipient: Mapped[str | None] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(50))
    content: Mapped[Any] = mapped_column(JSON, nullable=True)
    reply_to: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]


class HandoffRow(Base):
    """A handoff taken or refused, with the path that led to it."""

    __tablename__ = "troupe_handoffs"
    __table_args__ = (Index("ix_troupe_handoffs_execution", "execution_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = _execution_fk()
    step_id: Mapped[str] = mapped_column(String(200))
    from_agent: Mapped[str] = mapped_column(String(200))
    to_agent: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float | None] = mapped_column(Float)
    path: Mapped[Any] = mapped_column(JSON, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class ApprovalRow(Base):
    """A step waiting for a person's decision, and the decision."""

    __tablename__ = "troupe_approvals"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"), primary_key=True
    )
    step_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime]
    timeout_at: Mapped[datetime]
    # None while waiting; "approved" or "rejected" (decided_by "timeout": by the
    # approval's on_timeout).
    decision: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[str | None] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None]


class CanvasRow(Base):
    """An execution started by a Celery signature (``Team.s()``), and the Celery task
    that completes that signature once the execution ends."""

    __tablename__ = "troupe_canvas"
    __table_args__ = (
        Index(
            "ix_troupe_canvas_unsent",
            "created_at",
            postgresql_where=text("sent_at IS NULL"),
            sqlite_where=text("sent_at IS NULL"),
        ),
    )

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("troupe_executions.id", ondelete="CASCADE"), primary_key=True
    )
    # A Celery signature, as JSON: Celery's own replacement of the signature's task
    # (its id, chain, callbacks, error callbacks, group and chord).
    completion: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    # Set by whoever sends it (compare-and-set); None: not sent yet.
    sent_at: Mapped[datetime | None]
