"""a countdown per parallel level: the delegation that finishes a level moves on

Each level of more than one step gets a row with the number of its steps not yet
decided. The write that decides a step counts it down in the same round trip, and the
delegation that brings it to zero publishes the next level (or finishes the execution).
This replaces Celery's chord: its counter and result list in Redis, the stored result of
every member and the join task.

Executions already under way get their rows here, counted from their steps, so they
carry on across the upgrade.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "troupe_levels",
        sa.Column(
            "execution_id",
            sa.String(36),
            sa.ForeignKey("troupe_executions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("level", sa.Integer, primary_key=True),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("remaining", sa.Integer, nullable=False),
    )
    op.execute(
        """
        INSERT INTO troupe_levels (execution_id, level, size, remaining)
        SELECT s.execution_id, s.level, COUNT(*),
            SUM(CASE WHEN s.status IN ('completed', 'failed', 'skipped', 'cancelled')
                THEN 0 ELSE 1 END)
        FROM troupe_steps s JOIN troupe_executions e ON e.id = s.execution_id
        WHERE e.status IN ('pending', 'running')
        GROUP BY s.execution_id, s.level
        HAVING COUNT(*) > 1
        """
    )


def downgrade() -> None:
    op.drop_table("troupe_levels")
