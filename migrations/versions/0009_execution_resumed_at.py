"""executions record when a reaper last resumed them

Every worker now runs the reaper (beat is no longer needed for recovery), so several
may find the same execution stalled at once; the one whose compare-and-set on
``resumed_at`` wins resumes it, and a resumed execution counts as active from then on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_column("resumed_at")
