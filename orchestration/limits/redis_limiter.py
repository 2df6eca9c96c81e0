"""The cluster-wide limiter: counts kept in Redis, each step one Lua script (atomic for
every worker process and host). The rules are in ``scripts``.

A delegation's admission is one round trip. Its release, after the call, is sent
without waiting for the reply (read later, on one connection of the process's own):
nothing waits on it, and a release lost with its connection only leaves the call's
count to lapse with its lease. While replies are owed, an admission goes out on that
connection too, after them, so a process never counts its own released calls.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from orchestration.limits.demand import (
    Demand,
    EndpointStats,
    Grant,
    LimiterOutage,
    Settlement,
    Wait,
)
from orchestration.limits.scripts import ACQUIRE, END_EXECUTION, RELEASE, RENEW, STATS

log = logging.getLogger("troupe.limits")

PREFIX = "troupe:cap:"
# How long the step's next attempt avoids the endpoint its attempt failed on: longer
# than any retry delay a policy may set (RetryPolicy.max_delay is at most a day).
AVOID_MS = 86_400_000
# A call to Redis that takes longer is an outage: the delegation goes back to the
# broker rather than hold its worker's slot.
SOCKET_TIMEOUT = 5.0
# Replies left unread before a send waits for them.
_MOST_UNREAD = 10_000


class _Unanswered:
    """Commands sent on one connection whose replies are read later (before a later
    send finds them waiting, or once too many are owed)."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None
        self._unread = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # A reply said the script is gone (Redis restarted): load it before using it.
        self.script_missing = False

    def send(self, *command: Any) -> None:
        """Send ``command``; raise if it could not be sent."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's connection is not its to use.
                self._connection, self._unread, self._pid = None, 0, os.getpid()
            try:
                if self._connection is None:
                    self._connection = self._pool.get_connection()
                connection = self._connection
                while self._unread and (
                    self._unread >= _MOST_UNREAD or connection.can_read(timeout=0)
                ):
                    self._read_one()
                connection.send_command(*command)
                self._unread += 1
            except Exception:
                self._drop()
                raise

    def call_if_owed(self, *command: Any) -> tuple[bool, Any]:
        """While replies are owed: send ``command`` after them and return (True, its
        reply), reading theirs first. Else (False, None): nothing was sent."""
        with self._lock:
            if not self._unread or self._connection is None or self._pid != os.getpid():
                return False, None
            try:
                self._connection.send_command(*command)
                while self._unread:
                    self._read_one()
                return True, self._connection.read_response()
            except ResponseError:
                raise  # the reply itself: the connection is in step
            except Exception:
                self._drop()
                raise

    def _read_one(self) -> None:
        self._unread -= 1
        try:
            self._connection.read_response()
        except NoScriptError:
            self.script_missing = True
            log.warning("limits: a release found its script gone; its count lapses")
        except ResponseError as exc:
            log.warning("limits: a release failed: %s", exc)

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._pool.release(self._connection)
        self._connection = None
        self._unread = 0


class RedisLimiter:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self._prefix = prefix
        # redis-py's pool is thread-safe and starts afresh in a forked child.
        self._client = redis.Redis.from_url(
            url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
        )
        self._acquire = self._client.register_script(ACQUIRE)
        self._release = self._client.register_script(RELEASE)
        self._renew = self._client.register_script(RENEW)
        self._end = self._client.register_script(END_EXECUTION)
        self._stats = self._client.register_script(STATS)
        self._unanswered = _Unanswered(self._client)
        self._release_loaded = False
        # Agents (groups) whose slots had waiters when this process last heard: their
        # releases wait for the script's reply, which may name a waiter to wake. The
        # others' are sent without waiting (one round trip per call, the admission),
        # and a waiter this process has not heard of comes back at its own time.
        self._waited_for: set[str] = set()

    def acquire(self, demand: Demand) -> Grant | Wait:
        document: dict[str, Any] = {
            "p": self._prefix,
            "h": demand.holder,
            "s": demand.step,
            "tok": demand.token,
            "lease": demand.lease_ms,
            "route": demand.routing,
            "g": demand.group,
            "gm": demand.group_max_concurrency,
            "gr": demand.group_ms_per_request,
            "gt": demand.group_ms_per_token,
            "n": demand.tokens,
            "dl": demand.default_latency_ms,
            "c": [
                {
                    "i": c.index,
                    "id": c.identity,
                    "w": c.weight,
                    "m": c.max_concurrency,
                    "r": c.ms_per_request,
                    "t": c.ms_per_token,
                }
                for c in demand.candidates
            ],
        }
        if demand.wake is not None:
            document["wk"] = demand.wake
        fair = demand.fair
        if fair is not None:
            document["f"] = {
                "k": fair.key,
                "m": fair.max,
                "e": fair.execution_id,
                "l": fair.lease_ms,
                "poll": fair.poll_ms,
            }
        try:
            answer = self._admit(_json(document))
        except redis.RedisError as exc:
            raise LimiterOutage(f"Redis at {_safe(self.url)}: {type(exc).__name__}: {exc}") from exc
        granted, what, wait, identity = answer[:4]
        if int(granted) == 1:
            self._heard(demand.group, int(answer[5]) > 0)
            # The member it holds (its token and when it began).
            member = _text(answer[4])
            return Grant(index=int(what), identity=_text(identity), token=member, demand=demand)
        cause = _text(what)
        if cause == "concurrency":
            self._heard(demand.group, True)
        return Wait(ms=int(wait), cause=cause, what=_text(identity))

    def _heard(self, group: str, waiters: bool) -> None:
        if waiters:
            self._waited_for.add(group)
        else:
            self._waited_for.discard(group)

    def _admit(self, document: str) -> Any:
        return self._run_after_owed(self._acquire, document)

    def _run_after_owed(self, script: Any, document: str) -> Any:
        """``script``'s reply, sent after the releases still owed on the unanswered
        connection (so the counts change in the order the calls were made and ended)."""
        try:
            sent, answer = self._unanswered.call_if_owed("EVALSHA", script.sha, 0, document)
            if sent:
                return answer
        except NoScriptError:
            pass  # loaded below
        return script(args=[document])

    def release(self, grant: Grant, settlement: Settlement) -> str | None:
        demand = grant.demand
        tokens_delta = 0 if settlement.tokens is None else settlement.tokens - demand.tokens
        candidate = next(c for c in demand.candidates if c.index == grant.index)
        document = {
            "p": self._prefix,
            "tok": grant.token,
            "id": grant.identity,
            "g": demand.group,
            "h": demand.holder,
            "s": demand.step,
            "dt": tokens_delta,
            "ct": candidate.ms_per_token,
            "gt": demand.group_ms_per_token,
            "lat": -1 if settlement.seconds is None else settlement.seconds * 1000.0,
            "pause": 0 if not settlement.pause_seconds else settlement.pause_seconds * 1000.0,
            "av": grant.index if settlement.avoid and len(demand.candidates) > 1 else -1,
            "avttl": AVOID_MS,
            "wake": 1
            if demand.group in self._waited_for
            and (demand.group_max_concurrency or candidate.max_concurrency)
            else 0,
        }
        # After the call: a failure here must not fail a call that was made (its
        # counts lapse with their lease, and a waiter comes back at its own time).
        try:
            if document["wake"]:
                wake = _wake_of(self._run_after_owed(self._release, _json(document)))
                self._heard(demand.group, wake is not None)
                return wake
            if self._release_loaded and not self._unanswered.script_missing:
                self._unanswered.send("EVALSHA", self._release.sha, 0, _json(document))
                return None
            # The first (or after Redis lost its scripts): waited for, which loads it.
            self._unanswered.script_missing = False
            self._release(args=[_json(document)])
            self._release_loaded = True
        except redis.RedisError as exc:
            log.warning(
                "limits: release of %s failed (%s); its lease will lapse", grant.identity, exc
            )
        return None

    def renew(self, grant: Grant) -> None:
        demand = grant.demand
        document: dict[str, Any] = {
            "p": self._prefix,
            "tok": grant.token,
            "id": grant.identity,
            "g": demand.group,
            "h": demand.holder,
            "lease": demand.lease_ms,
        }
        if demand.fair is not None:
            document.update(f=demand.fair.key, fl=demand.fair.lease_ms, e=demand.fair.execution_id)
        try:
            self._renew(args=[_json(document)])
        except redis.RedisError as exc:
            log.warning("limits: renewal of %s failed (%s)", grant.identity, exc)

    def end_execution(self, execution_id: str) -> None:
        try:
            self._end(args=[_json({"p": self._prefix, "e": execution_id})])
        except redis.RedisError as exc:
            log.warning("limits: execution %s's slot not freed (%s)", execution_id, exc)

    def stats(self, identities: Sequence[str]) -> dict[str, EndpointStats]:
        if not identities:
            return {}
        flat = self._stats(args=[_json({"p": self._prefix, "ids": list(identities)})])
        found = {}
        for i, identity in enumerate(identities):
            in_flight, latency, paused = flat[3 * i : 3 * i + 3]
            found[identity] = EndpointStats(
                in_flight=int(in_flight),
                latency_ms=float(latency) if _text(latency) else None,
                paused_ms=int(paused),
            )
        return found

    def close(self) -> None:
        self._client.close()


def _wake_of(reply: Any) -> str | None:
    # The script answers 1, or the wake it took.
    return _text(reply) if isinstance(reply, (bytes, str)) else None


def _json(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe(url: str) -> str:
    # A Redis URL may carry a password.
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"
