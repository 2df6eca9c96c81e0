"""The Celery application, and the Troupe settings it and its tasks run with.

The app exists from import, because the tasks register with it there; its configuration is
given later, once per process, by :func:`configure_app` with a ``Settings`` object (the
client runtime and ``manage.py worker`` pass theirs). An app nobody configured (``celery -A
workers.app``, a bare ``from workers.app import app``) reads ``TROUPE_*`` environment
variables the first time Celery or a task needs its settings, not at import.

Never from a module named by string: Celery would import whatever ``celeryconfig`` comes
first on ``sys.path``, such as the one in the user's own project folder.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from orchestration.errors import BrokerUnavailable, TroupeError
from orchestration.settings import Settings
from workers.celery_config import celery_config

# workers.canvas_tasks: a team run as a Celery signature (Team.s).
app = Celery("troupe", include=["workers.tasks", "workers.canvas_tasks"])

# The one place the tasks read Troupe's settings from: set with the app's configuration,
# and fixed once anything has read them (Celery, or a task).
_settings: Settings | None = None
_settings_read = False
_lock = threading.Lock()


def configure_app(settings: Settings) -> None:
    """Configure Troupe's app from ``settings``: its Celery configuration
    (workers/celery_config.py) and the settings its tasks read (:func:`app_settings`).

    Once per process, before the app is used: Celery keeps connections, queues and a
    result backend made from the configuration it first read, and the tasks keep a store
    made from the settings, so settings already in use are not replaced (TroupeError).
    The same settings again are a no-op.
    """
    global _settings
    with _lock:
        if settings == _settings:
            return
        if _settings_read or app.configured:
            raise TroupeError(
                "Troupe's Celery app already runs with other settings: configure it once "
                "per process, before its first use"
            )
        _settings = settings
        # Celery reads it when it first needs its configuration.
        app.config_from_object(celery_config(settings))


def app_settings() -> Settings:
    """The settings Troupe's app was configured with; the ``TROUPE_*`` environment's
    (read now, once) if nobody configured it. From here on they stay."""
    global _settings_read
    settings = _settings
    if settings is None:
        configure_app(Settings())
        settings = _settings
        assert settings is not None
    _settings_read = True
    return settings


def _configure_from_environment(**_: Any) -> None:
    # Celery sends on_configure just before it reads its configuration source, the first
    # time anything needs the configuration: nobody set one, so the environment's.
    if _settings is None:
        app_settings()


app.on_configure.connect(_configure_from_environment)


# How long `check_broker` waits for the broker: to connect, and for its first answer.
BROKER_CHECK_TIMEOUT = 2.0


def check_broker(celery_app: Celery, timeout: float = BROKER_CHECK_TIMEOUT) -> None:
    """Connect to the app's broker once, with short timeouts: BrokerUnavailable naming it
    if it refuses or does not answer. Left to itself, kombu retries a connection for
    several seconds (Redis: no read timeout at all, so a server that accepts and never
    answers holds it for good) before an error that names no broker."""
    url = celery_app.conf.broker_url
    connection = celery_app.connection_for_write(
        connect_timeout=timeout,
        transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    try:
        # One attempt: each retry would cost the whole timeout again.
        connection.ensure_connection(max_retries=0, timeout=timeout)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach the broker at {safe_broker_url(url)}: {detail}"
        ) from None
    finally:
        connection.release()


def safe_broker_url(url: str) -> str:
    """``url`` without its password, for messages to the user."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
