"""shared memory, messages, handoffs and approvals

- ``troupe_memory``: an execution's shared memory, one row per key with its version and
  last writer; ``troupe_memory_history`` every write (what it replaced, by which rule);
  ``troupe_memory_applied`` marks a step whose writes and messages were applied, so a
  retry or a redelivery never applies them twice. ``memory_version`` counts an
  execution's applied write batches; each attempt records the version it saw.
- ``troupe_messages``: messages between agents (a broadcast has no recipient).
- ``troupe_handoffs``: every handoff taken or refused, with its path and confidence.
- ``troupe_approvals``: a step waiting for a person, and the decision.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _execution() -> sa.Column[str]:
    return sa.Column(
        "execution_id",
        sa.String(36),
        sa.ForeignKey("troupe_executions.id", ondelete="CASCADE"),
        nullable=False,
    )


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(
            sa.Column("memory_version", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.add_column(sa.Column("context_version", sa.Integer(), nullable=True))
    op.create_table(
        "troupe_memory",
        _execution(),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(16), nullable=False),
        sa.Column("writer_step", sa.String(200), nullable=False),
        sa.Column("writer_attempt", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "key"),
    )
    op.create_table(
        "troupe_memory_history",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _execution(),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        # The execution's memory_version this write was applied in.
        sa.Column("memory_version", sa.Integer(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("rule", sa.String(16), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("writer_step", sa.String(200), nullable=False),
        sa.Column("writer_attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_troupe_memory_history_key", "troupe_memory_history", ["execution_id", "key", "version"]
    )
    op.create_table(
        "troupe_memory_applied",
        _execution(),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", "step_id"),
    )
    op.create_table(
        "troupe_messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _execution(),
        sa.Column("sender", sa.String(200), nullable=False),
        sa.Column("sender_step", sa.String(200), nullable=False),
        sa.Column("recipient", sa.String(200), nullable=True),
        sa.Column("type", sa.String(50), nullable=False),
        sa.Column("content", sa.JSON(), nullable=True),
        sa.Column("reply_to", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_troupe_messages_recipient", "troupe_messages", ["execution_id", "recipient"]
    )
    op.create_table(
        "troupe_handoffs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _execution(),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("from_agent", sa.String(200), nullable=False),
        sa.Column("to_agent", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("path", sa.JSON(), nullable=True),
        # "taken" or "refused"
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_troupe_handoffs_execution", "troupe_handoffs", ["execution_id"])
    op.create_table(
        "troupe_approvals",
        _execution(),
        sa.Column("step_id", sa.String(200), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=False),
        # None while waiting; "approved" or "rejected" (decided_by "timeout": by its
        # timeout's on_timeout)
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("execution_id", "step_id"),
    )


def downgrade() -> None:
    op.drop_table("troupe_approvals")
    op.drop_index("ix_troupe_handoffs_execution", table_name="troupe_handoffs")
    op.drop_table("troupe_handoffs")
    op.drop_index("ix_troupe_messages_recipient", table_name="troupe_messages")
    op.drop_table("troupe_messages")
    op.drop_table("troupe_memory_applied")
    op.drop_index("ix_troupe_memory_history_key", table_name="troupe_memory_history")
    op.drop_table("troupe_memory_history")
    op.drop_table("troupe_memory")
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.drop_column("context_version")
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_column("memory_version")
