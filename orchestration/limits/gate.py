"""A delegation's admission: which endpoint it calls, or why it waits.

Breakers first, then the limiter, in one round trip to it: every endpoint whose breaker
admits a call (a closed one, read from the per-process cache; or one due a half-open
trial, capped at its trial calls) is a candidate, and the limiter picks one with room
by the agent's routing, or says how long to wait. The chosen endpoint's breaker then
admits the call (claiming the trial, if it is one); lost to another worker, the grant is
given back and the next candidate tried.

An agent with no endpoints and no limits, in a team without keyed fairness, never
reaches the limiter: its breaker alone admits it, as before.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestration.errors import LimitsUnavailable
from orchestration.limits.demand import (
    Candidate,
    Demand,
    FairSlot,
    Grant,
    Limiter,
    Settlement,
    Wait,
)
from orchestration.limits.plan import AgentCapacity, capacity_of
from orchestration.resilience.breaker import OPEN
from orchestration.spec import AgentSpec
from orchestration.store.breaker_cache import CachedBreakers
from orchestration.store.breakers import Admission


@dataclass
class Route:
    """Where one call goes, and what it holds until it ends."""

    identity: str  # what is called: the breaker's key
    spec: AgentSpec  # the agent as it calls it
    address: str | None  # where the call goes, as its attempt records it
    admission: Admission
    grant: Grant | None = None
    limiter: Limiter | None = None
    _released: bool = field(default=False, repr=False)

    def renew(self) -> None:
        if self.grant is not None and self.limiter is not None and not self._released:
            self.limiter.renew(self.grant)

    def release(self, settlement: Settlement) -> str | None:
        """Give back what the call held (once), with how it went; the wake of a waiter
        for the slot it frees, for the caller to send (see ``Demand.wake``)."""
        if self.grant is not None and self.limiter is not None and not self._released:
            self._released = True
            return self.limiter.release(self.grant, settlement)
        return None


@dataclass(frozen=True)
class Waiting:
    seconds: float
    reason: str
    # Another delivery of the same attempt holds its call: nothing of the step's is to
    # be written, only this delivery sent again after ``seconds``.
    duplicate: bool = False


class CapacityGate:
    def __init__(
        self,
        breakers: CachedBreakers,
        limiter: Limiter | None,
        *,
        lease_seconds: float,
        fair_lease_seconds: float = 60.0,
    ) -> None:
        self.breakers = breakers
        self.limiter = limiter
        self.lease_seconds = lease_seconds
        # An execution holds its key's slot this long past its last delegation (its
        # calls renew it): one whose end no worker records frees it when it lapses.
        self.fair_lease_seconds = max(fair_lease_seconds, lease_seconds)

    def route(
        self,
        name: str,
        agent: AgentSpec,
        *,
        holder: str,
        step: str,
        fair: FairSlot | None = None,
        wake: Callable[[], str] | None = None,
    ) -> Route | Waiting:
        """Where the call goes, or how long it waits. ``wake`` makes what brings the
        attempt back at once if it waits for a slot (``Demand.wake``): made only for a
        call the limiter counts."""
        plan = capacity_of(agent)
        if not plan.limited and fair is None:
            only = plan.endpoints[0]
            admission = self.breakers.admit(only.identity, agent.breaker)
            return Route(only.identity, agent, only.address, admission)
        limiter = self.limiter
        if limiter is None:
            raise LimitsUnavailable(
                f"agent {name!r} declares endpoints or limits (or its team keyed "
                "concurrency), which are counted in Redis: set TROUPE_REDIS_URL, or use "
                "a Redis broker"
            )
        wakes = wake() if wake is not None else None
        candidates: list[Candidate] = []
        rejections: list[Admission] = []
        for endpoint in plan.endpoints:
            peeked = self.breakers.peek(endpoint.identity)
            if not peeked.allowed:
                rejections.append(peeked)
                continue
            cap = endpoint.max_concurrency
            if peeked.trial:
                trials = agent.breaker.half_open_max_calls
                cap = min(cap, trials) if cap else trials
            candidates.append(
                Candidate(
                    index=endpoint.index,
                    identity=endpoint.identity,
                    weight=endpoint.weight,
                    max_concurrency=cap,
                    ms_per_request=endpoint.ms_per_request,
                    ms_per_token=endpoint.ms_per_token,
                )
            )
        while candidates:
            answer = limiter.acquire(self._demand(plan, candidates, holder, step, fair, wakes))
            if isinstance(answer, Wait):
                return Waiting(
                    answer.ms / 1000.0,
                    f"{answer.describe()} (agent {name!r})",
                    duplicate=answer.cause == "duplicate",
                )
            endpoint = plan.endpoints[answer.index]
            admission = self.breakers.admit(endpoint.identity, agent.breaker)
            if admission.allowed:
                return Route(
                    endpoint.identity, endpoint.spec, endpoint.address, admission, answer, limiter
                )
            # Its trial went to another worker a moment ago: the call was never made.
            # A waiter it would wake comes back at its own time.
            limiter.release(answer, Settlement())
            rejections.append(admission)
            candidates = [c for c in candidates if c.index != answer.index]
        first = plan.endpoints[0]
        return Route(first.identity, agent, first.address, _every_one_open(name, rejections))

    def end_execution(self, execution_id: str) -> None:
        """Free the execution's slot of its key (keyed fairness)."""
        if self.limiter is not None:
            self.limiter.end_execution(execution_id)

    def _demand(
        self,
        plan: AgentCapacity,
        candidates: list[Candidate],
        holder: str,
        step: str,
        fair: FairSlot | None,
        wake: str | None,
    ) -> Demand:
        return Demand(
            holder=holder,
            step=step,
            token=f"{holder}:{uuid.uuid4().hex[:12]}",
            lease_ms=int(self.lease_seconds * 1000),
            routing=plan.routing.value,
            candidates=tuple(candidates),
            group=plan.group,
            group_max_concurrency=plan.max_concurrency,
            group_ms_per_request=plan.ms_per_request,
            group_ms_per_token=plan.ms_per_token,
            tokens=plan.reserve_tokens,
            fair=fair,
            wake=wake,
        )


def _every_one_open(name: str, rejections: list[Admission]) -> Admission:
    if len(rejections) == 1:
        return rejections[0]
    waits = [r.retry_at for r in rejections if r.retry_at is not None]
    reasons = "; ".join(r.reason or "open" for r in rejections)
    return Admission(
        allowed=False,
        state=OPEN,
        retry_at=min(waits) if waits else None,
        reason=f"circuit open for every endpoint of agent {name!r}: {reasons}",
    )
