"""drop the (execution, level) index of steps: delegations read steps by primary key

A delegation now reads its own step and its ancestors by (execution_id, step_id). With
the level index beside the primary key, PostgreSQL picked the smaller level index on a
table without statistics yet and filtered every step of the execution for each
delegation (0.5 ms per read at 2,000 steps, quadratic over an execution).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_troupe_steps_execution_level", table_name="troupe_steps")


def downgrade() -> None:
    op.create_index("ix_troupe_steps_execution_level", "troupe_steps", ["execution_id", "level"])
