"""Test-session isolation and the services the integration tests need.

In-process tests run Troupe on a ``Settings`` object given explicitly (the ``settings``
fixture: embedded, SQLite state in a temporary directory, nothing read from the
environment), made the process's default before any test runs; no TROUPE_* variable of
the developer's shell reaches them. Subprocesses get their settings as users give them,
in TROUPE_* environment variables (``subprocess_env`` drops the shell's own).

Distributed tests talk to real Redis and PostgreSQL only through subprocesses, each session
on its own Redis database number, its own PostgreSQL database and its own queue name, so
they never meet a developer's workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from orchestration.settings import Settings
from tests.support.services import WorkerProcess, run_manage, subprocess_env, tail
from tests.support.settings import given_settings

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# RabbitMQ's default vhost: sessions keep apart by their queue names (QUEUE).
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
PID = os.getpid()
QUEUE = f"troupe-test-{PID}"
DATABASE = f"troupe_test_{PID}"
# Redis database numbers this suite may use; one per concurrent session, held by a lock.
REDIS_DBS = range(9, 16)

_worker_log: Path | None = None


def unavailable(message: str) -> None:
    """Skip when a service is missing, but fail on CI, where it must be there."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --- embedded -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded runtime's state directory for this session."""
    return tmp_path_factory.mktemp("troupe-state")


@pytest.fixture(scope="session")
def settings(state_dir: Path) -> Settings:
    """The settings of every in-process test: embedded, state under ``state_dir``."""
    return given_settings(state_dir=state_dir)


@pytest.fixture(scope="session", autouse=True)
def _process_settings(settings: Settings) -> Iterator[None]:
    """Make ``settings`` the process's default before any test runs, so a test that
    calls ``Team.run()`` with no runtime, or a worker task, runs on them too."""
    from orchestration.client import runtime as process

    process.configure(settings)
    yield
    with contextlib.suppress(Exception):
        process.shutdown()


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Any:
    """The process's default runtime: embedded, made from ``settings``."""
    from orchestration.client.runtime import get_runtime

    rt = get_runtime()
    assert rt.settings is settings
    return rt


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for an embedded `manage.py` subprocess with its own state directory."""
    return subprocess_env({"TROUPE_STATE_DIR": str(tmp_path / "state")})


# --- services -------------------------------------------------------------------------


def _redis_client(db: int = 0) -> Any:
    import redis

    return redis.Redis(
        host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=2, socket_connect_timeout=2
    )


def _check_redis() -> None:
    try:
        _redis_client().ping()
    except Exception as exc:
        unavailable(f"Redis does not answer on {REDIS_HOST}:{REDIS_PORT}: {exc}")


@contextlib.contextmanager
def _own_redis_db() -> Iterator[str]:
    """Lock one of REDIS_DBS for this process (an flock held while in use), flush it,
    and give its URL; flushed again at the end."""
    lock: IO[str] | None = None
    db = None
    for candidate in REDIS_DBS:
        handle = open(  # noqa: SIM115  (held while the database is in use)
            Path(tempfile.gettempdir()) / f"troupe-test-redis-db{candidate}.lock", "w"
        )
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        lock, db = handle, candidate
        break
    if lock is None or db is None:
        pytest.fail(f"every Redis database in {list(REDIS_DBS)} is in use by other test runs")
    client = _redis_client(db)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        with contextlib.suppress(Exception):
            client.flushdb()
        client.close()
        lock.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number of this session's own (flushed at start and end)."""
    _check_redis()
    with _own_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def spare_redis_url(redis_url: str) -> Iterator[str]:
    """A second Redis database of our own, on which no worker ever listens."""
    with _own_redis_db() as url:
        yield url


def _admin_engine() -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(
        POSTGRES_ADMIN_URL,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
        poolclass=NullPool,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Postgres:
    admin: Any

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"

    def create(self, database: str) -> str:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        return self.url(database)

    def drop(self, database: str) -> None:
        from sqlalchemy import text

        with self.admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Administrative access to the local PostgreSQL (user postgres, trust auth)."""
    from sqlalchemy import text

    admin = _admin_engine()
    try:
        with admin.connect() as connection:
            names = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'troupe\\_test\\_%'")
            ).scalars()
            leftovers = list(names)
    except Exception as exc:
        admin.dispose()
        unavailable(f"PostgreSQL does not answer on 127.0.0.1:5432 as postgres: {exc}")
    pg = Postgres(admin)
    # Databases of earlier sessions that were killed before their teardown.
    for name in leftovers:
        pid = name.removeprefix("troupe_test_").split("_")[0]
        if pid.isdigit() and int(pid) != PID and not _pid_alive(int(pid)):
            with contextlib.suppress(Exception):
                pg.drop(name)
    try:
        yield pg
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> Iterator[str]:
    """A freshly created database of this session's own, dropped at the end."""
    url = postgres.create(DATABASE)
    try:
        yield url
    finally:
        postgres.drop(DATABASE)


@dataclass
class RabbitMQ:
    url: str
    queue: str  # this session's own


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQ]:
    """RabbitMQ and a queue name of this session's own, deleted at the end: RabbitMQ keeps
    a durable queue after its last consumer leaves."""
    from kombu import Connection

    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.connect()
    except Exception as exc:
        unavailable(f"RabbitMQ does not answer on {RABBITMQ_URL}: {exc}")
    try:
        yield RabbitMQ(url=RABBITMQ_URL, queue=QUEUE)
    finally:
        with contextlib.suppress(Exception), Connection(RABBITMQ_URL) as connection:
            connection.default_channel.queue_delete(QUEUE)


@dataclass
class Distributed:
    """A migrated database, a broker, a queue and a worker answering on them."""

    env: dict[str, str]
    redis_url: str
    database_url: str
    queue: str
    worker: WorkerProcess


@pytest.fixture(scope="session")
def distributed_env(
    redis_url: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for a distributed `manage.py` subprocess of this session."""
    return subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            "TROUPE_DATABASE_URL": postgres_url,
            "TROUPE_QUEUE": QUEUE,
            "TROUPE_STATE_DIR": str(tmp_path_factory.mktemp("distributed-state")),
        }
    )


@pytest.fixture(scope="session")
def distributed(
    distributed_env: dict[str, str],
    redis_url: str,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Distributed]:
    """`manage.py db upgrade`, then a `manage.py worker -c 2` until the session ends."""
    global _worker_log
    upgrade = run_manage(["db", "upgrade"], distributed_env, timeout=60)
    assert upgrade.returncode == 0, f"db upgrade failed:\n{upgrade.stdout}\n{upgrade.stderr}"
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    _worker_log = log_path
    worker = WorkerProcess(
        env=distributed_env,
        hostname=f"troupe-test-{PID}@{socket.gethostname()}",
        log_path=log_path,
    )
    worker.start()
    try:
        try:
            worker.wait_ready(25)
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        yield Distributed(
            env=distributed_env,
            redis_url=redis_url,
            database_url=postgres_url,
            queue=QUEUE,
            worker=worker,
        )
    finally:
        worker.stop()
        _worker_log = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _worker_log is not None and "distributed" in item.fixturenames:
        report.sections.append(("worker log (tail)", tail(_worker_log, 80)))
    return report
