"""Engines and schema: one engine per URL per process, migrated by Alembic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from orchestration.errors import TroupeError
from orchestration.store import prepared

# The package orchestration.migrations, beside the installed code (in a checkout, a link
# to the top-level migrations/ directory).
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


class SchemaError(TroupeError):
    """The database is unreachable or its schema is not at the current revision."""


# How long the schema check, a command's first contact with a database server, waits
# for it to answer (libpq's connect_timeout; 2 s is its least): an unreachable database
# is one line and exit 4 within seconds, not a hang of the operating system's TCP
# timeout.
SCHEMA_CONNECT_TIMEOUT = 2

# How long a statement waits for a free pooled connection before the wait counts as a
# transient failure (retried, never dropped).
POOL_TIMEOUT = 30.0


def get_engine(url: str, pool_size: int = 5) -> Engine:
    """The process's SQLAlchemy engine for ``url``: at most ``pool_size`` connections
    (the first caller sets it), never more."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url, pool_size)
            _engines[url] = engine
        return engine


def get_hot_engine(url: str) -> Engine:
    """PostgreSQL: connections in autocommit that prepare the hot statements when they
    connect, for ``prepared.HotConnections``, which pools and bounds them itself: a
    single-statement read, or a multi-statement write that PostgreSQL runs as one
    implicit transaction, costs one round trip, with no BEGIN/COMMIT."""
    key = f"hot:{url}"
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
            prepared.install(engine)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Drop pooled connections, e.g. in a freshly forked worker process."""
    with _lock:
        for engine in _engines.values():
            engine.dispose(close=False)


def _create(url: str, pool_size: int) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=max(pool_size, 8),
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per checkout. A connection that died with the
    # server fails its statement, SQLAlchemy invalidates the pool, and the store's
    # writes retry on a fresh connection. No overflow: the pool is the bound.
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=POOL_TIMEOUT)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the CLI read progress while the embedded worker writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@contextmanager
def _schema_connection(url: str, *, transaction: bool) -> Iterator[Any]:
    """A connection for checking or migrating the schema. On a server, one of its own,
    closed after: the process's pool, sized by its connection bound, is created later by
    the store (a worker checks the schema before anything else).

    Every command's first contact with the database, so a database it cannot reach is
    SchemaError at once, naming it, and a server that does not answer is given up on
    after SCHEMA_CONNECT_TIMEOUT."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    if sqlite:
        engine = get_engine(url)
    else:
        engine = create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": SCHEMA_CONNECT_TIMEOUT}
        )
    try:
        connection = engine.connect() if sqlite else _connect_within(engine, url)
        with connection, connection.begin() if transaction else nullcontext():
            yield connection
    finally:
        if not sqlite:
            engine.dispose()


def _connect_within(engine: Engine, url: str) -> Any:
    """``engine.connect()``, given up on after SCHEMA_CONNECT_TIMEOUT whatever the
    driver does: libpq's connect_timeout counts per attempt, and with sslmode=prefer a
    server that accepts and never answers costs two."""
    outcome: list[Any] = []
    done = threading.Event()

    def connect() -> None:
        try:
            outcome.append(engine.connect())
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    # A daemon thread: one that is still connecting when we give up never holds up the
    # process's exit, and libpq's own timeout ends it soon after.
    threading.Thread(target=connect, name="troupe-schema-connect", daemon=True).start()
    if not done.wait(SCHEMA_CONNECT_TIMEOUT + 0.5):
        raise SchemaError(
            f"cannot reach the database at {_safe(url)}: no answer within "
            f"{SCHEMA_CONNECT_TIMEOUT} s"
        )
    (result,) = outcome
    if isinstance(result, DBAPIError):
        raise SchemaError(f"cannot reach the database at {_safe(url)}: {_first_line(result.orig)}")
    if isinstance(result, BaseException):
        raise result
    return result


def upgrade_schema(url: str) -> None:
    from alembic import command

    with _schema_connection(url, transaction=True) as connection:
        config = _alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def schema_is_current(url: str) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(_alembic_config(url)).get_heads())
    with _schema_connection(url, transaction=False) as connection:
        if not inspect(connection).has_table("alembic_version"):
            return False
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current == heads


def ensure_schema(url: str, *, auto_upgrade: bool) -> None:
    """Embedded mode migrates by itself; distributed mode asks the operator to."""
    try:
        if schema_is_current(url):
            return
        if auto_upgrade:
            upgrade_schema(url)
            return
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(
            f"cannot use the database at {_safe(url)}: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    raise SchemaError(
        f"the database at {_safe(url)} has no current Troupe schema; "
        "run `python manage.py db upgrade`"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
