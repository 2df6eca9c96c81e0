"""index steps by (execution, level): a delegation reads the levels before its own

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_troupe_steps_execution_level", "troupe_steps", ["execution_id", "level"])


def downgrade() -> None:
    op.drop_index("ix_troupe_steps_execution_level", table_name="troupe_steps")
