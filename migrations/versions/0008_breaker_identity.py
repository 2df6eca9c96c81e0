"""breakers and health belong to what is called, not to an agent's name

A breaker, a heartbeat and the agent registry were keyed by an agent's name in a team
file, so two teams' unrelated agents of the same name shared a breaker. They are now
keyed by the agent's identity (``python:<module>:<callable>`` for a python agent; see
orchestration/agents/identity.py).

- ``troupe_agents`` holds one row per (team, agent name) with its identity, computed
  here from each old row's spec.
- ``troupe_breakers``: a row keyed by a registered agent name moves to that agent's
  identity. Where several names call the same thing, their breakers become one: the
  most severe state (open, then half-open, then closed) is kept, the latest first. A
  row whose key names no registered agent is left as it is.
- ``troupe_heartbeats.agent`` becomes ``identity``; rows of registered names move to
  their identity.

The downgrade keeps, per agent name, its most recently registered row, and gives each
name a copy of its identity's breaker.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
_MAX_LENGTH = 200
_DIGEST_CHARS = 32
_SEVERITY = {"open": 2, "half_open": 1, "closed": 0}

_BREAKER_COLUMNS = (
    sa.column("key", sa.String),
    sa.column("state", sa.String),
    sa.column("consecutive_failures", sa.Integer),
    sa.column("outcomes", sa.String),
    sa.column("opened_at", TS),
    sa.column("next_trial_at", TS),
    sa.column("half_open_calls", sa.Integer),
    sa.column("probe_failures", sa.Integer),
    sa.column("last_error", sa.Text),
    sa.column("version", sa.Integer),
    sa.column("updated_at", TS),
)
breakers = sa.table("troupe_breakers", *_BREAKER_COLUMNS)


def identity_of(name: str, spec: dict[str, Any]) -> str:
    """orchestration.agents.identity.agent_identity as of this revision, frozen here so
    that the upgrade gives the same keys whatever that module becomes. A spec it cannot
    read keeps the agent's name as its identity."""
    kind, target = spec.get("kind", "python"), spec.get("target")
    if kind != "python" or not isinstance(target, str):
        return name
    identity = f"python:{target}"
    if len(identity) <= _MAX_LENGTH:
        return identity
    digest = hashlib.sha256(identity.encode()).hexdigest()[:_DIGEST_CHARS]
    return f"{identity[: _MAX_LENGTH - _DIGEST_CHARS - 1]}~{digest}"


def upgrade() -> None:
    bind = op.get_bind()
    old = sa.table(
        "troupe_agents",
        sa.column("name", sa.String),
        sa.column("team", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("updated_at", TS),
    )
    rows = bind.execute(sa.select(old.c.name, old.c.team, old.c.spec, old.c.updated_at)).all()
    identities = {row.name: identity_of(row.name, dict(row.spec)) for row in rows}

    # The primary key changes, so the table is made anew (as SQLite would have to).
    op.drop_table("troupe_agents")
    agents = _create_agents_table()
    op.create_index("ix_troupe_agents_identity", "troupe_agents", ["identity"])
    if rows:
        op.bulk_insert(
            agents,
            [
                {
                    "team": row.team,
                    "name": row.name,
                    "identity": identities[row.name],
                    "spec": row.spec,
                    "updated_at": row.updated_at,
                }
                for row in rows
            ],
        )

    _merge_breakers(bind, identities)

    op.drop_index("ix_troupe_heartbeats_agent_at", table_name="troupe_heartbeats")
    with op.batch_alter_table("troupe_heartbeats") as batch:
        batch.alter_column(
            "agent",
            new_column_name="identity",
            existing_type=sa.String(200),
            existing_nullable=False,
        )
    op.create_index("ix_troupe_heartbeats_identity_at", "troupe_heartbeats", ["identity", "at"])
    _rename_heartbeats(bind, "identity", identities)


def _create_agents_table() -> Any:
    return op.create_table(
        "troupe_agents",
        sa.Column("team", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("identity", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )


def _merge_breakers(bind: Any, identities: dict[str, str]) -> None:
    """Each breaker keyed by a registered name moves to its identity, one per identity."""
    rows = bind.execute(
        sa.select(breakers.c.key, breakers.c.state, breakers.c.updated_at).where(
            breakers.c.key.in_(list(identities))
        )
    ).all()
    groups: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        groups[identities[row.key]].append(row)
    for identity, members in groups.items():
        kept = max(members, key=lambda row: (_SEVERITY.get(row.state, 0), row.updated_at))
        others = [row.key for row in members if row.key != kept.key]
        if others:
            bind.execute(sa.delete(breakers).where(breakers.c.key.in_(others)))
        bind.execute(sa.update(breakers).where(breakers.c.key == kept.key).values(key=identity))


def _rename_heartbeats(bind: Any, column: str, renames: dict[str, str]) -> None:
    heartbeats = sa.table("troupe_heartbeats", sa.column(column, sa.String))
    for old, new in renames.items():
        if old != new:
            bind.execute(
                sa.update(heartbeats).where(heartbeats.c[column] == old).values({column: new})
            )


def downgrade() -> None:
    bind = op.get_bind()
    agents = sa.table(
        "troupe_agents",
        sa.column("team", sa.String),
        sa.column("name", sa.String),
        sa.column("identity", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("updated_at", TS),
    )
    rows = bind.execute(sa.select(agents).order_by(agents.c.updated_at)).all()
    # Names were unique: the most recently registered row of each name wins.
    latest = {row.name: row for row in rows}

    op.drop_index("ix_troupe_agents_identity", table_name="troupe_agents")
    op.drop_table("troupe_agents")
    old = op.create_table(
        "troupe_agents",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    if latest:
        op.bulk_insert(
            old,
            [
                {"name": r.name, "team": r.team, "spec": r.spec, "updated_at": r.updated_at}
                for r in latest.values()
            ],
        )

    # Each name gets a copy of its identity's breaker; the identity's row goes.
    found = {
        row.key: row
        for row in bind.execute(
            sa.select(breakers).where(breakers.c.key.in_({r.identity for r in rows}))
        ).all()
    }
    copies = [
        {**found[row.identity]._asdict(), "key": row.name}
        for row in latest.values()
        if row.identity in found and row.name != row.identity
    ]
    # (An identity that is a name, from a spec the upgrade could not read, stays.)
    moved = [key for key in found if key not in latest]
    if moved:
        bind.execute(sa.delete(breakers).where(breakers.c.key.in_(moved)))
    if copies:
        bind.execute(sa.insert(breakers), copies)

    op.drop_index("ix_troupe_heartbeats_identity_at", table_name="troupe_heartbeats")
    with op.batch_alter_table("troupe_heartbeats") as batch:
        batch.alter_column(
            "identity",
            new_column_name="agent",
            existing_type=sa.String(200),
            existing_nullable=False,
        )
    op.create_index("ix_troupe_heartbeats_agent_at", "troupe_heartbeats", ["agent", "at"])
    # An identity's probes go to the first name, alphabetically, that calls it.
    names: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r.name):
        names.setdefault(row.identity, row.name)
    _rename_heartbeats(bind, "agent", names)
