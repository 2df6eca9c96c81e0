"""Where a benchmark run lives: its own Redis database, PostgreSQL database and queues.

Redis: the URL the settings point to (``TROUPE_BROKER_URL``) is used as given and never
flushed, only our queues' keys are deleted at the end. Without it, a database number of
127.0.0.1:6379 is locked the way the test suite does it (an flock on
``/tmp/troupe-test-redis-db<N>.lock``, taken from 15 downwards while the tests start at 9),
flushed, and flushed again at the end.

PostgreSQL: a database ``troupe_bench_<pid>`` is created on the server the settings point
to (``TROUPE_DATABASE_URL``, else postgres@127.0.0.1:5432), migrated with
``manage.py db upgrade``, and dropped at the end.

The settings are exported to ``os.environ`` (the raw Celery side reads them there) and
given to Troupe's client as this process's settings (``configure``); child processes get
them in their environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MANAGE = ROOT / "manage.py"

DEFAULT_REDIS_HOST = "redis://127.0.0.1:6379"
DEFAULT_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
LOCKABLE_REDIS_DBS = range(15, 8, -1)
DB_PREFIX = "troupe_bench_"

# Troupe's tables are whichever the migrations made (troupe_levels came and went): all
# tables named troupe_* in the bench database are emptied between benchmarks.
TROUPE_TABLE_PATTERN = "troupe\\_%"


class BenchError(RuntimeError):
    """A benchmark could not run or did not finish in time."""


@dataclass
class BenchEnv:
    broker_url: str
    database_url: str
    database: str
    troupe_queue: str
    raw_queue: str
    workdir: Path
    owns_redis_db: bool
    # Extra TROUPE_* settings for the client and every process started (e.g. short
    # recovery intervals).
    settings: dict[str, str] = field(default_factory=dict)
    # Set when something failed: the workers' logs are then kept for a look.
    keep_workdir: bool = False

    def troupe_env(self) -> dict[str, str]:
        return {
            "TROUPE_BROKER_URL": self.broker_url,
            "TROUPE_DATABASE_URL": self.database_url,
            "TROUPE_QUEUE": self.troupe_queue,
            "TROUPE_STATE_DIR": str(self.workdir / "state"),
            # Clients poll the database for completion; 10 ms keeps that out of the way.
            "TROUPE_POLL_INTERVAL": "0.01",
            **self.settings,
        }

    def raw_env(self) -> dict[str, str]:
        return {"BENCH_RAW_BROKER_URL": self.broker_url, "BENCH_RAW_QUEUE": self.raw_queue}

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess: ours, none of the caller's TROUPE_*/BENCH_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TROUPE_", "BENCH_RAW_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.troupe_env())
        env.update(self.raw_env())
        env.update(extra or {})
        return env

    def export(self) -> None:
        """Put the settings into this process's environment, and make them Troupe's
        settings for this process (its default runtime and Celery app)."""
        os.environ.update(self.troupe_env())
        os.environ.update(self.raw_env())
        from orchestration.client.runtime import configure
        from orchestration.settings import Settings

        # Refused (TroupeError) if Troupe's app already runs with other settings.
        configure(Settings())


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@contextlib.contextmanager
def _redis_database(explicit: str | None) -> Iterator[tuple[str, bool]]:
    if explicit:
        yield explicit, False
        return
    lock: IO[str] | None = None
    chosen = None
    for candidate in LOCKABLE_REDIS_DBS:
        handle = open(  # noqa: SIM115  (held while the database is in use)
            Path(tempfile.gettempdir()) / f"troupe-test-redis-db{candidate}.lock", "w"
        )
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        lock, chosen = handle, candidate
        break
    if lock is None or chosen is None:
        raise BenchError(f"every Redis database in {list(LOCKABLE_REDIS_DBS)} is locked")
    url = f"{DEFAULT_REDIS_HOST}/{chosen}"
    try:
        client = redis_client(url)
        client.flushdb()
        client.close()
        yield url, True
    finally:
        with contextlib.suppress(Exception):
            client = redis_client(url)
            client.flushdb()
            client.close()
        lock.close()


def _admin_url(database_url: str | None) -> str:
    from sqlalchemy.engine import make_url

    if not database_url:
        return DEFAULT_POSTGRES
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise BenchError(f"the benchmarks need PostgreSQL, not {url.get_backend_name()}")
    return url.set(database="postgres").render_as_string(hide_password=False)


def _admin_engine(admin_url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _postgres_database(database_url: str | None, name: str) -> Iterator[str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    admin_url = _admin_url(database_url)
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as connection:
            names = connection.execute(
                text("SELECT datname FROM pg_database WHERE datname LIKE 'troupe\\_bench\\_%'")
            ).scalars()
            for leftover in list(names):
                # Databases of earlier runs that were killed before their clean-up.
                pid = leftover.removeprefix(DB_PREFIX).split("_")[-1]
                if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)'))
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        yield url
    finally:
        with contextlib.suppress(Exception), engine.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _delete_queue_keys(url: str, queues: list[str]) -> None:
    client = redis_client(url)
    try:
        for queue in queues:
            for key in client.scan_iter(match=f"*{queue}*", count=1000):
                client.delete(key)
    finally:
        client.close()


def migrate(env: BenchEnv) -> None:
    result = subprocess.run(
        [PYTHON, str(MANAGE), "db", "upgrade"],
        cwd=ROOT,
        env=env.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(f"manage.py db upgrade failed:\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def prepare(
    *,
    name: str = "bench",
    redis_url: str | None = None,
    database_url: str | None = None,
    settings: Mapping[str, str] | None = None,
    keep_workdir: bool = False,
) -> Iterator[BenchEnv]:
    """Lock a Redis database, create and migrate a PostgreSQL database, export the
    settings; undo all of it at the end, whatever happened."""
    pid = os.getpid()
    explicit_redis = redis_url or os.environ.get("TROUPE_BROKER_URL") or None
    explicit_database = database_url or os.environ.get("TROUPE_DATABASE_URL") or None
    workdir = Path(tempfile.mkdtemp(prefix=f"troupe-{name}-{pid}-"))
    failed = False
    env: BenchEnv | None = None
    try:
        with (
            _redis_database(explicit_redis) as (broker_url, owned),
            _postgres_database(explicit_database, f"{DB_PREFIX}{pid}") as db_url,
        ):
            env = BenchEnv(
                broker_url=broker_url,
                database_url=db_url,
                database=f"{DB_PREFIX}{pid}",
                troupe_queue=f"{name}-troupe-{pid}",
                raw_queue=f"{name}-raw-{pid}",
                workdir=workdir,
                owns_redis_db=owned,
                settings=dict(settings or {}),
            )
            migrate(env)
            env.export()
            try:
                yield env
            finally:
                if not owned:
                    with contextlib.suppress(Exception):
                        _delete_queue_keys(broker_url, [env.troupe_queue, env.raw_queue])
    except BaseException:
        failed = True
        raise
    finally:
        if keep_workdir or failed or (env is not None and env.keep_workdir):
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def reset_state(env: BenchEnv) -> None:
    """Empty Troupe's tables and our queues between benchmarks (no worker running)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(env.database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            tables = list(
                connection.execute(
                    text(
                        "SELECT quote_ident(tablename) FROM pg_tables"
                        " WHERE schemaname = current_schema() AND tablename LIKE :pattern"
                    ),
                    {"pattern": TROUPE_TABLE_PATTERN},
                ).scalars()
            )
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))
    finally:
        engine.dispose()
    if env.owns_redis_db:
        client = redis_client(env.broker_url)
        try:
            client.flushdb()
        finally:
            client.close()
    else:
        _delete_queue_keys(env.broker_url, [env.troupe_queue, env.raw_queue])
