"""Migration 0013 on SQLite: it adds the retry link, the breaker history and the time
indexes as models.py declares them, keeps the rows there were, and goes back on
downgrade."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from orchestration.store.database import MIGRATIONS_DIR
from orchestration.store.models import Base

OWN_TABLES = {"troupe_executions", "troupe_attempts", "troupe_breaker_events"}


def alembic(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


def drift(url: str) -> list[Any]:
    """Differences between models.py and the migrated tables this migration touches."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()

    def touches(diff: Any) -> bool:
        # A later migration's table may refer to these (a foreign key): only a diff
        # about one of them counts.
        return _table_of(diff[0] if isinstance(diff, list) else diff) in OWN_TABLES

    return [diff for diff in diffs if touches(diff)]


def _table_of(diff: Any) -> str | None:
    """The table an alembic autogenerate diff is about."""
    for part in diff[1:]:
        if isinstance(part, sa.Table):
            return str(part.name)
        if isinstance(part, sa.Index | sa.Column) and part.table is not None:
            return str(part.table.name)
        if isinstance(part, str) and part.startswith("troupe_"):
            return part
    return None


def test_upgrade_adds_what_models_declare_and_downgrade_takes_it_away(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = alembic(url)
    command.upgrade(config, "0012")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO troupe_executions (id, team, strategy, spec, status, created_at) "
                "VALUES ('old', 't', 'dag', '{}', 'completed', '2026-01-01 00:00:00')"
            )
        )

    command.upgrade(config, "0013")
    assert drift(url) == []
    with engine.connect() as connection:
        row = connection.execute(sa.text("SELECT id, retry_of FROM troupe_executions")).one()
        assert tuple(row) == ("old", None)
        indexes = {index["name"] for index in sa.inspect(connection).get_indexes("troupe_attempts")}
        assert "ix_troupe_attempts_started" in indexes

    command.downgrade(config, "0012")
    with engine.connect() as connection:
        inspector = sa.inspect(connection)
        assert not inspector.has_table("troupe_breaker_events")
        columns = {column["name"] for column in inspector.get_columns("troupe_executions")}
        assert "retry_of" not in columns
        assert connection.execute(sa.text("SELECT id FROM troupe_executions")).scalar() == "old"
    engine.dispose()
