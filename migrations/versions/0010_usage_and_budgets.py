"""attempts record usage and tool calls; executions carry a budget

Every attempt keeps what it consumed (tokens, model, endpoint, cost) and the tools it
called. An execution may have a budget (cost, tokens); ``committed_*`` holds what its
calls spent plus what calls in flight have reserved, so a reservation is one
conditional UPDATE of the execution's row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.add_column(sa.Column("usage", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("tool_calls", sa.JSON(), nullable=True))
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("max_cost_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_tokens", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("committed_cost_usd", sa.Float(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("committed_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        for column in ("committed_tokens", "committed_cost_usd", "max_tokens", "max_cost_usd"):
            batch.drop_column(column)
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.drop_column("tool_calls")
        batch.drop_column("usage")
