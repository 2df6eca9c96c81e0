"""What one call asks of a limiter, and its answers: pure data, shared by the Redis and
the in-process limiters (which keep the same counts by the same rules).

Times are milliseconds. Every count a call takes is held under a lease (``lease_ms``)
that the call renews while it runs, so the counts of a worker that died lapse by
themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class LimiterOutage(Exception):
    """The limiter's store (Redis) did not answer before a call: nothing was taken, and
    the delegation is sent again later, as for a database outage (not an attempt)."""


@dataclass(frozen=True)
class Candidate:
    """An endpoint a call may go to (its breaker admits it)."""

    index: int  # in the agent's endpoints
    identity: str
    weight: float = 1.0
    # The endpoint's own limits (0: none); a breaker's half-open trials cap it too.
    max_concurrency: int = 0
    ms_per_request: float = 0.0
    ms_per_token: float = 0.0


@dataclass(frozen=True)
class FairSlot:
    """The team's keyed fairness: this execution runs only while it holds one of the
    ``max`` slots of its key."""

    key: str
    max: int
    execution_id: str
    lease_ms: int
    # A waiting execution looks again after this, times its place in the queue.
    poll_ms: int


@dataclass(frozen=True)
class Demand:
    # One attempt (execution:step:attempt): a rate reservation and a place in a queue
    # belong to it, whichever delivery of its message comes back for them.
    holder: str
    # The step (execution:step): its next attempt avoids the endpoint this one failed on.
    step: str
    token: str  # this grant's member in the counts
    lease_ms: int
    routing: str
    candidates: Sequence[Candidate]
    # The agent's own limits, over all its endpoints (0: none).
    group: str
    group_max_concurrency: int = 0
    group_ms_per_request: float = 0.0
    group_ms_per_token: float = 0.0
    # Tokens held from the rate limit until the call settles (its max_tokens).
    tokens: int = 0
    # Expected call duration when no latency has been measured yet.
    default_latency_ms: int = 200
    fair: FairSlot | None = None
    # What to send to bring this attempt back at once if it waits for a slot: opaque to
    # the limiter, which hands it to the call that frees a slot (``Limiter.release``).
    wake: str | None = None


@dataclass(frozen=True)
class Grant:
    index: int  # the endpoint chosen, in the agent's endpoints
    identity: str
    token: str
    demand: Demand


@dataclass(frozen=True)
class Wait:
    ms: int
    # fair | rate | concurrency | paused | duplicate (another delivery of the same
    # attempt holds its call: this one looks again when that one's hold lapses)
    cause: str
    # The key or identity that is full.
    what: str

    def describe(self) -> str:
        return {
            "fair": f"its key {self.what!r} has every execution slot taken",
            "rate": f"rate limit of {self.what}",
            "concurrency": f"calls in flight at {self.what}",
            "paused": f"{self.what} asked to wait (Retry-After)",
            "duplicate": "another delivery of this attempt holds its call",
        }.get(self.cause, self.cause)


@dataclass(frozen=True)
class Settlement:
    """How a granted call ended."""

    # Seconds the call took (None: it was never made, e.g. its breaker trial was lost).
    seconds: float | None = None
    # Tokens it used (None: unknown, e.g. timed out: the reservation stays spent).
    tokens: int | None = None
    # Retry-After the endpoint answered: it is paused that long for every caller.
    pause_seconds: float | None = None
    # It failed in a way worth another try: the step's next attempt goes elsewhere.
    avoid: bool = False


@dataclass(frozen=True)
class EndpointStats:
    in_flight: int
    latency_ms: float | None
    paused_ms: int


class Limiter(Protocol):
    def acquire(self, demand: Demand) -> Grant | Wait: ...

    def release(self, grant: Grant, settlement: Settlement) -> str | None:
        """Give back the call's counts; the ``wake`` of the first waiter for the slot
        it frees (each waiter's once per wait), or None."""
        ...

    def renew(self, grant: Grant) -> None: ...

    def end_execution(self, execution_id: str) -> None: ...

    def stats(self, identities: Sequence[str]) -> dict[str, EndpointStats]: ...
