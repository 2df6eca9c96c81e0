"""executions record a digest of their team spec

Workers keep one planned team per spec digest: an execution of a team they already
know costs one small read instead of reading and validating the whole spec (~2 ms for
every new execution, in every worker process).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("spec_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_column("spec_digest")
