"""State databases for the race tests: each test module gets a migrated SQLite file and a
migrated PostgreSQL database of its own, and ``url`` runs a test on each in turn."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from orchestration.store.database import ensure_schema, get_engine


def _module_name(request: pytest.FixtureRequest) -> str:
    return str(request.module.__name__).rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> str:
    name = _module_name(request)
    url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'state.db'}"
    ensure_schema(url, auto_upgrade=True)
    return url


@pytest.fixture(scope="module")
def pg_url(postgres: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    database = f"troupe_test_{os.getpid()}_{_module_name(request)}"
    url = postgres.create(database)
    try:
        ensure_schema(url, auto_upgrade=True)
        yield url
    finally:
        get_engine(url).dispose()
        postgres.drop(database)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
