"""shared circuit breakers, the agent registry, heartbeats and attempt leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "troupe_breakers",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("outcomes", sa.String(1000), nullable=False),
        sa.Column("opened_at", TS, nullable=True),
        sa.Column("next_trial_at", TS, nullable=True),
        sa.Column("half_open_calls", sa.Integer(), nullable=False),
        sa.Column("probe_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "troupe_agents",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "troupe_heartbeats",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_troupe_heartbeats_agent_at", "troupe_heartbeats", ["agent", "at"])
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.add_column(sa.Column("heartbeat_at", TS, nullable=True))
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.drop_column("progress")
        batch.drop_column("heartbeat_at")
    op.drop_index("ix_troupe_heartbeats_agent_at", table_name="troupe_heartbeats")
    op.drop_table("troupe_heartbeats")
    op.drop_table("troupe_agents")
    op.drop_table("troupe_breakers")
