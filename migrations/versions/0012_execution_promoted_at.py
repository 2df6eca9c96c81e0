"""executions record when a reaper last promoted their waiting steps

A step of a below-critical execution waits while higher priorities keep coming; once
nothing of its execution has started or ended for ``max_wait``, a reaper sends its
waiting steps again above every priority. One reaper does so at a time, at most once
per ``max_wait``: the one whose compare-and-set on ``promoted_at`` wins.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_column("promoted_at")
