"""each step waits for its own dependencies, not its level; steps can be added at run time

Every step row gets ``waiting``: how many of the steps it waits for are not yet decided.
The write that decides a step counts down the steps that wait for it, and a step whose
count reaches zero is sent at once; an execution gets ``sinks_left``, counted down by
its sink steps, which ends it at zero. This replaces the per-level countdown
(``troupe_levels``), which made a step wait for every step of its level.

Steps added to a running execution (a map step's items) record the step that added
them, their index and item, their origin and the steps they count down. Step ids grow
to 200 characters so that an item's id ("split[41]") fits beside a 100-character step id.

Executions under way get their counts here, from their specs and their steps' states,
so they carry on across the upgrade.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from alembic import op

from workflows.graph import sinks
from workflows.plan import Strategy, dependencies

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_FINAL = ("completed", "failed", "skipped", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("troupe_executions") as batch:
        batch.add_column(sa.Column("sinks_left", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("troupe_steps") as batch:
        batch.alter_column("step_id", type_=sa.String(200), existing_type=sa.String(100))
        batch.add_column(sa.Column("waiting", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("parent_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("item_index", sa.Integer, nullable=True))
        batch.add_column(sa.Column("item", sa.JSON, nullable=True))
        batch.add_column(sa.Column("origin", sa.JSON, nullable=True))
        batch.add_column(sa.Column("dependents", sa.JSON, nullable=True))
        batch.add_column(sa.Column("fan_out", sa.Integer, nullable=True))
    with op.batch_alter_table("troupe_attempts") as batch:
        batch.alter_column("step_id", type_=sa.String(200), existing_type=sa.String(100))
    _count_unfinished(op.get_bind())
    op.drop_table("troupe_levels")


def _count_unfinished(connection: Any) -> None:
    executions = connection.execute(
        sa.text("SELECT id, spec FROM troupe_executions WHERE status IN ('pending', 'running')")
    ).fetchall()
    for execution_id, spec in executions:
        if isinstance(spec, str):
            import json

            spec = json.loads(spec)
        workflow = spec["workflow"]
        steps = [
            SimpleNamespace(
                id=s["id"],
                after=tuple(s.get("after") or ()),
                when=s.get("when"),
                for_each=s.get("for_each"),
            )
            for s in workflow["steps"]
        ]
        deps = dependencies(Strategy(workflow["strategy"]), steps)  # type: ignore[arg-type]
        status = dict(
            connection.execute(
                sa.text("SELECT step_id, status FROM troupe_steps WHERE execution_id = :e"),
                {"e": execution_id},
            ).fetchall()
        )
        for step_id, needs in deps.items():
            waiting = sum(1 for dep in needs if status.get(dep) not in _FINAL)
            if waiting:
                connection.execute(
                    sa.text(
                        "UPDATE troupe_steps SET waiting = :w "
                        "WHERE execution_id = :e AND step_id = :s"
                    ),
                    {"w": waiting, "e": execution_id, "s": step_id},
                )
        order = [s.id for s in steps]
        left = sum(1 for sid in sinks(order, deps) if status.get(sid) not in _FINAL)
        connection.execute(
            sa.text("UPDATE troupe_executions SET sinks_left = :n WHERE id = :e"),
            {"n": left, "e": execution_id},
        )


def downgrade() -> None:
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
    with op.batch_alter_table("troupe_steps") as batch:
        for column in ("fan_out", "dependents", "origin", "item", "item_index", "parent_id"):
            batch.drop_column(column)
        batch.drop_column("waiting")
    with op.batch_alter_table("troupe_executions") as batch:
        batch.drop_column("sinks_left")
