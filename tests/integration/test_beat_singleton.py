"""One beat per broker and queue: `manage.py beat` holds a lock in Redis with a lease.
A second beat exits 1 with one line naming the first; a beat stopped cleanly releases the
lock at once, and one that dies leaves it to expire with its lease; a beat that loses
its lock stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import QUEUE
from tests.support.services import MANAGE, PYTHON, describe, run_manage, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

LEASE_INTERVAL = 0.5  # a lease of 1.5 s


@pytest.fixture
def beat_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return subprocess_env(
        {
            "TROUPE_BROKER_URL": redis_url,
            # A queue of this test's own: the lock is per queue.
            "TROUPE_QUEUE": f"{QUEUE}-beat",
            "TROUPE_STATE_DIR": str(tmp_path / "state"),
            "TROUPE_LEASE_INTERVAL": str(LEASE_INTERVAL),
        }
    )


class Lock:
    """The beat lock's key, read and removed from the test."""

    def __init__(self, redis_url: str, queue: str) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=2)
        self.key = f"troupe:beat:{queue}"

    def __call__(self) -> bytes | None:
        value: bytes | None = self.client.get(self.key)
        return value

    def remove(self) -> None:
        self.client.delete(self.key)


@pytest.fixture
def lock(redis_url: str, beat_env: dict[str, str]) -> Iterator[Lock]:
    found = Lock(redis_url, beat_env["TROUPE_QUEUE"])
    found.remove()
    yield found
    found.remove()
    found.client.close()


class Beat:
    """A `manage.py beat` subprocess."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [PYTHON, str(MANAGE), "beat"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_holding(self, lock: Lock, deadline_seconds: float = 30) -> None:
        deadline = time.monotonic() + deadline_seconds
        while True:
            value = lock()
            if value is not None and json.loads(value)["pid"] == self.process.pid:
                return
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, f"beat never took the lock\n{self.output()}"
            time.sleep(0.05)

    def wait_exit(self, deadline_seconds: float = 15) -> int:
        try:
            return self.process.wait(deadline_seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"beat still runs {deadline_seconds} s later\n{self.output()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def test_a_second_beat_exits_and_the_next_one_starts(
    beat_env: dict[str, str], lock: Lock, tmp_path: Path
) -> None:
    first = Beat(beat_env, tmp_path / "first.log")
    try:
        first.wait_holding(lock)

        second = run_manage(["beat"], beat_env, timeout=30)
        assert second.returncode == 1, describe(second)
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, describe(second)
        assert lines[0].startswith("error: another beat already runs on redis://"), lines
        assert f"pid {first.process.pid}" in lines[0]
        assert json.loads(lock() or b"{}").get("pid") == first.process.pid
        # The health check of a beat's container: a beat of this host holds the lock.
        check = run_manage(["beat", "--check"], beat_env, timeout=30)
        assert check.returncode == 0, describe(check)
        assert f"pid {first.process.pid}" in check.stdout

        first.process.send_signal(signal.SIGTERM)
        assert first.wait_exit() == 0, first.output()
        assert lock() is None, "a beat stopped cleanly left its lock behind"
        check = run_manage(["beat", "--check"], beat_env, timeout=30)
        assert check.returncode == 1, describe(check)
    finally:
        first.kill()

    third = Beat(beat_env, tmp_path / "third.log")
    try:
        third.wait_holding(lock)
    finally:
        third.kill()


def test_a_dead_beats_lock_expires_and_a_lost_lock_stops_beat(
    beat_env: dict[str, str], lock: Lock, tmp_path: Path
) -> None:
    dead = Beat(beat_env, tmp_path / "dead.log")
    try:
        dead.wait_holding(lock)
    finally:
        dead.kill()
    # Its lock outlives it by at most a lease (1.5 s), renewed no more.
    killed_at = time.monotonic()
    while lock() is not None:
        assert time.monotonic() - killed_at < 3 * LEASE_INTERVAL + 2, "the lock never expired"
        time.sleep(0.05)
    following = Beat(beat_env, tmp_path / "following.log")
    try:
        following.wait_holding(lock)
        # Someone removed its lock (or Redis lost it): this beat cannot know who runs
        # now, so it stops, saying why.
        lock.remove()
        assert following.wait_exit() == 1, following.output()
        assert "beat stopped: it lost its lock" in following.output()
    finally:
        following.kill()
