"""what the operator commands read: retries' links, breaker history, time indexes

- ``troupe_executions.retry_of``: the execution a retry was made from (``manage.py
  retry``); a plain id, not a foreign key, so purging the old execution leaves the
  link as a name.
- ``troupe_breaker_events``: every change of a breaker's state, written in the same
  transaction as the change, so ``report`` can tell a breaker that opened once from one
  that flaps (the breaker's row holds only its latest state).
- Indexes by time: executions by creation (``executions``, ``purge``), attempts by
  start (``audit export``, ``metrics``, ``report`` read a window of them; the export
  pages through it by (started_at, id)).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("retry_of", sa.String(36), nullable=True))
        batch.create_index("ix_troupe_executions_retry_of", ["retry_of"])
        batch.create_index("ix_troupe_executions_created_at", ["created_at"])
    op.create_index("ix_troupe_attempts_started", "troupe_attempts", ["started_at", "id"])
    op.create_table(
        "troupe_breaker_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=False),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_troupe_breaker_events_at", "troupe_breaker_events", ["at"])


def downgrade() -> None:
    op.drop_index("ix_troupe_breaker_events_at", table_name="troupe_breaker_events")
    op.drop_table("troupe_breaker_events")
    op.drop_index("ix_troupe_attempts_started", table_name="troupe_attempts")
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_index("ix_troupe_executions_created_at")
        batch.drop_index("ix_troupe_executions_retry_of")
        batch.drop_column("retry_of")
