"""teams run as Celery signatures

- ``troupe_canvas``: an execution started by a Celery signature (``Team.s()``): the
  Celery task that completes it (its result, chain, callbacks, chord) as a signature,
  sent once the execution ends; ``sent_at`` is set by whoever sends it
  (compare-and-set), so it is sent once, and a sweep finds one never sent.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "troupe_canvas",
        sa.Column(
            "execution_id",
            sa.String(36),
            sa.ForeignKey("troupe_executions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("completion", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    # The sweep looks for the unsent ones only.
    op.create_index(
        "ix_troupe_canvas_unsent",
        "troupe_canvas",
        ["created_at"],
        postgresql_where=sa.text("sent_at IS NULL"),
        sqlite_where=sa.text("sent_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_troupe_canvas_unsent", table_name="troupe_canvas")
    op.drop_table("troupe_canvas")
