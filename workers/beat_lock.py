"""One beat per Redis broker and queue: a lock in Redis with a lease.

Two beats on one broker send every heartbeat and reap twice. ``manage.py beat`` takes
the key ``troupe:beat:<queue>`` with SET NX and a lease (``Settings.lease_ttl``, three
lease intervals), renews it every lease interval from a thread while beat runs, and
deletes it on the way out; each renewal and the release change the key only while it
still holds this beat's own value. A beat that dies without releasing it leaves a key
that expires with its lease: a beat can start again at most a lease later. One that
loses its lock (Redis unreachable for a whole lease, or the key gone) stops: another
beat may have started meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis

from orchestration.errors import BrokerUnavailable, TroupeError
from orchestration.settings import Settings
from workers.app import safe_broker_url

logger = logging.getLogger(__name__)

KEY_PREFIX = "troupe:beat:"
# How long to wait for Redis on each call: renewals come every lease interval, and the
# lock is given up only once a whole lease passed without one.
REDIS_TIMEOUT = 2.0

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0"""


class BeatAlreadyRunning(TroupeError):
    """Another beat holds the lock for this broker and queue."""


class BeatLockLost(TroupeError):
    """This beat lost its lock (not renewed within its lease, or the key gone), so it
    stopped."""


def has_lock(settings: Settings) -> bool:
    """Whether the broker's URL is one this lock lives on (Redis)."""
    return settings.effective_broker_url.startswith(("redis://", "rediss://"))


class BeatLock:
    """The lock of one beat process; ``held()`` takes it, renews it and releases it."""

    def __init__(self, settings: Settings) -> None:
        self._url = settings.effective_broker_url
        self.key = KEY_PREFIX + settings.queue
        self._lease_ms = int(settings.lease_ttl * 1000)
        self._renew_every = settings.lease_interval
        self._value = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "token": uuid.uuid4().hex,
            }
        )
        self._client: Any = redis.Redis.from_url(
            self._url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self._stop = threading.Event()
        self.lost = threading.Event()

    @contextlib.contextmanager
    def held(self) -> Iterator[BeatLock]:
        self._acquire()
        renewer = threading.Thread(target=self._renew, name="troupe-beat-lock", daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join(REDIS_TIMEOUT + 1)
            self._release()
            self._client.close()

    def _acquire(self) -> None:
        try:
            taken = self._client.set(self.key, self._value, nx=True, px=self._lease_ms)
            holder = None if taken else self._client.get(self.key)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"cannot reach the broker at {safe_broker_url(self._url)}: {exc}"
            ) from None
        if not taken:
            raise BeatAlreadyRunning(
                f"another beat already runs on {safe_broker_url(self._url)} "
                f"({_describe(holder)}; key {self.key}): only one may run, stop it first "
                f"(if it died, its lock expires within {self._lease_ms / 1000:g} s)"
            )

    def _renew(self) -> None:
        renewed_at = time.monotonic()
        while not self._stop.wait(self._renew_every):
            try:
                kept = self._client.eval(_RENEW, 1, self.key, self._value, self._lease_ms)
            except redis.RedisError as exc:
                if time.monotonic() - renewed_at < self._lease_ms / 1000:
                    logger.warning("beat lock: renewal failed, retrying: %s", exc)
                    continue
                kept = 0
            if kept:
                renewed_at = time.monotonic()
                continue
            logger.error("beat lock %s lost: stopping this beat", self.key)
            self.lost.set()
            # Beat's own SIGTERM handler saves its schedule and stops it.
            os.kill(os.getpid(), signal.SIGTERM)
            return

    def _release(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self._client.eval(_RELEASE, 1, self.key, self._value)


def holder_here(settings: Settings) -> str | None:
    """Who holds the lock, if it is a beat of this host (a container's health check);
    None if none does."""
    key = KEY_PREFIX + settings.queue
    client = redis.Redis.from_url(
        settings.effective_broker_url,
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
    )
    try:
        holder = client.get(key)
    except redis.RedisError as exc:
        raise BrokerUnavailable(
            f"cannot reach the broker at {safe_broker_url(settings.effective_broker_url)}: {exc}"
        ) from None
    finally:
        client.close()
    try:
        here = json.loads(holder or b"").get("host") == socket.gethostname()
    except (ValueError, AttributeError):
        here = False
    return f"{_describe(holder)}; key {key}" if here else None


def _describe(holder: bytes | str | None) -> str:
    """Who holds the lock, from its value: pid, host and since when."""
    try:
        data = json.loads(holder or b"")
        return f"pid {data['pid']} on {data['host']}, since {data['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def run_beat(settings: Settings, argv: list[str]) -> None:
    """Run Celery beat (``argv`` for its command line) while holding the lock; without a
    Redis broker, with a warning that nothing stops a second beat."""
    from workers.app import app

    if not has_lock(settings):
        logger.warning(
            "beat: no beat lock on this broker (%s): make sure only one beat runs",
            settings.effective_broker_url.partition("://")[0],
        )
        app.start(argv)
        return
    lock = BeatLock(settings)
    with lock.held():
        try:
            app.start(argv)
        except SystemExit:
            if not lock.lost.is_set():
                raise
    if lock.lost.is_set():
        raise BeatLockLost(
            f"beat stopped: it lost its lock {lock.key} (gone, or not renewed within its "
            f"lease of {settings.lease_ttl:g} s), so another beat may run now"
        )
