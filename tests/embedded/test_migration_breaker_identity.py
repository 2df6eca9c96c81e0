"""Migration 0008 on SQLite and PostgreSQL: a database at 0007 holding name-keyed agents,
breakers and heartbeats comes out keyed by identity, and goes back on downgrade."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from orchestration.agents.identity import agent_identity, bounded
from orchestration.spec import parse_agent
from orchestration.store.agent_registry import AgentRegistry
from orchestration.store.breakers import BreakerStore
from orchestration.store.database import MIGRATIONS_DIR, get_engine
from orchestration.store.models import Base
from orchestration.store.repository import Store, now

pytestmark = pytest.mark.timeout(60)

TS = sa.DateTime(timezone=True)
# Longer than a team file takes today; an old row may hold one.
LONG_TARGET = "pkg." + "m" * 250 + ":fn"
# Old rows: agent name → (team, target). `e` and `scanner` call the same thing.
OLD_AGENTS = {
    "e": ("alpha", "pkg.mod:scan"),
    "scanner": ("beta", "pkg.mod:scan"),
    "g": ("beta", "pkg.other:g"),
    "long": ("beta", LONG_TARGET),
}
SCAN, G = "python:pkg.mod:scan", "python:pkg.other:g"
OWN_TABLES = {"troupe_agents", "troupe_breakers", "troupe_heartbeats"}


def alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    postgres = request.getfixturevalue("postgres")
    database = f"troupe_test_{os.getpid()}_migration_0008"
    created = postgres.create(database)
    try:
        yield created
    finally:
        get_engine(created).dispose()
        postgres.drop(database)


def spec(target: str) -> dict[str, Any]:
    """An agent spec as a team stored it (the migration reads only kind and target)."""
    return {"kind": "python", "target": target, "timeout": 60.0, "fallback": None}


def seed_old_rows(url: str) -> None:
    """What a 0007 database holds: everything keyed by agent name."""
    t0 = now() - timedelta(minutes=5)
    agents = sa.table(
        "troupe_agents",
        sa.column("name", sa.String),
        sa.column("team", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("updated_at", TS),
    )
    breaker_columns = ("key", "state", "consecutive_failures", "outcomes", "opened_at")
    breakers = sa.table(
        "troupe_breakers",
        *(sa.column(name) for name in breaker_columns),
        sa.column("next_trial_at", TS),
        sa.column("half_open_calls"),
        sa.column("probe_failures"),
        sa.column("last_error"),
        sa.column("version"),
        sa.column("updated_at", TS),
    )
    heartbeats = sa.table(
        "troupe_heartbeats",
        sa.column("agent"),
        sa.column("at", TS),
        sa.column("healthy"),
        sa.column("latency_ms"),
    )

    def breaker(key: str, state: str, failures: int, age: int, error: str) -> dict[str, Any]:
        return {
            "key": key,
            "state": state,
            "consecutive_failures": failures,
            "outcomes": "1" * failures,
            "opened_at": t0 if state != "closed" else None,
            "next_trial_at": t0 + timedelta(hours=1) if state != "closed" else None,
            "half_open_calls": 0,
            "probe_failures": 0,
            "last_error": error,
            "version": 3,
            "updated_at": t0 + timedelta(seconds=age),
        }

    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(agents),
            [
                {"name": name, "team": team, "spec": spec(target), "updated_at": t0}
                for name, (team, target) in OLD_AGENTS.items()
            ],
        )
        connection.execute(
            sa.insert(breakers),
            [
                # `scanner` opened earlier; `e` failed once since, newer but closed.
                breaker("scanner", "open", 5, 0, "RuntimeError: scan is down"),
                breaker("e", "closed", 1, 60, "RuntimeError: once"),
                breaker("g", "half_open", 0, 0, "probe"),
                breaker("ghost", "open", 5, 0, "nobody registered me"),
            ],
        )
        connection.execute(
            sa.insert(heartbeats),
            [
                {"agent": "e", "at": t0, "healthy": True, "latency_ms": 3},
                {"agent": "g", "at": t0, "healthy": False, "latency_ms": 4},
                {"agent": "ghost", "at": t0, "healthy": False, "latency_ms": 5},
            ],
        )
    engine.dispose()


def breaker_rows(url: str) -> dict[str, tuple[str, str]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT key, state, last_error FROM troupe_breakers"))
        found = {row.key: (row.state, row.last_error) for row in rows}
    engine.dispose()
    return found


def heartbeat_keys(url: str, column: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        keys = connection.execute(sa.text(f"SELECT {column} FROM troupe_heartbeats ORDER BY id"))
        found = list(keys.scalars())
    engine.dispose()
    return found


def schema_drift(url: str) -> list[Any]:
    """Differences between models.py and the migrated tables this migration owns."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()

    def table_of(diff: Any) -> str | None:
        for item in diff if isinstance(diff, list) else [diff]:
            for part in item:
                name = getattr(part, "name", None) if not isinstance(part, str) else part
                table = getattr(part, "table", None)
                if table is not None:
                    return str(table.name)
                if name in OWN_TABLES:
                    return str(name)
        return None

    return [diff for diff in diffs if table_of(diff) in OWN_TABLES]


def test_upgrade_keys_old_rows_by_identity_and_downgrade_restores_names(url: str) -> None:
    config = alembic(url)
    command.upgrade(config, "0007")
    seed_old_rows(url)

    command.upgrade(config, "0008")

    # The registry: one row per (team, name), its identity computed from its spec.
    store = Store(url)
    registry = AgentRegistry(store)
    rows = {(row.team, row.name): row.identity for row in registry.agents()}
    assert rows == {
        (team, name): bounded(f"python:{target}") for name, (team, target) in OLD_AGENTS.items()
    }
    # The same keys the code computes for the agents a team file can still declare.
    assert rows[("beta", "g")] == agent_identity(parse_agent(spec("pkg.other:g")))
    assert rows[("alpha", "e")] == rows[("beta", "scanner")] == SCAN
    assert len(rows[("beta", "long")]) == 200

    # Breakers: `e` and `scanner` call one thing, so they are one breaker, the open one.
    assert breaker_rows(url) == {
        SCAN: ("open", "RuntimeError: scan is down"),
        G: ("half_open", "probe"),
        "ghost": ("open", "nobody registered me"),
    }
    view = BreakerStore(store).get(SCAN)
    assert view is not None and view.snapshot.consecutive_failures == 5

    assert heartbeat_keys(url, "identity") == [SCAN, G, "ghost"]
    assert set(registry.last_heartbeats()) == {SCAN, G, "ghost"}
    assert schema_drift(url) == []

    # The migrated tables take new registrations as the code writes them.
    registry.register_agents("gamma", {"e": spec("pkg.mod:scan")})
    assert ("gamma", "e") in {(row.team, row.name) for row in registry.agents()}
    get_engine(url).dispose()

    command.downgrade(config, "0007")

    engine = sa.create_engine(url)
    with engine.connect() as connection:
        names = dict(connection.execute(sa.text("SELECT name, team FROM troupe_agents")).all())
    engine.dispose()
    # `e` of gamma was registered last, so it is the `e` a name-keyed table keeps.
    assert names == {"e": "gamma", "scanner": "beta", "g": "beta", "long": "beta"}
    assert breaker_rows(url) == {
        "e": ("open", "RuntimeError: scan is down"),
        "scanner": ("open", "RuntimeError: scan is down"),
        "g": ("half_open", "probe"),
        "ghost": ("open", "nobody registered me"),
    }
    assert heartbeat_keys(url, "agent") == ["e", "g", "ghost"]
