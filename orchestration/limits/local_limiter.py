"""The in-process limiter, for embedded mode without Redis: the same counts by the same
rules as the Lua in ``scripts`` (read its docstring), under one lock, for the one process
that runs every delegation."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from orchestration.limits.demand import Demand, EndpointStats, Grant, Settlement, Wait

_ALPHA = 0.3
# Marks of admitted attempts kept before the lapsed ones are swept.
_MOST_MARKS = 10_000


def _now() -> float:
    return time.time() * 1000.0


@dataclass
class _Queue:
    """Waiters by first arrival, each forgotten after its deadline."""

    first: dict[str, float] = field(default_factory=dict)
    deadline: dict[str, float] = field(default_factory=dict)

    def wait(self, member: str, wait_of: Callable[[int], float], lease: float, now: float) -> int:
        for stale in [m for m, at in self.deadline.items() if at <= now]:
            self.first.pop(stale, None)
            self.deadline.pop(stale, None)
        self.first.setdefault(member, now)
        rank = sorted(self.first.items(), key=lambda item: (item[1], item[0])).index(
            (member, self.first[member])
        )
        wait = max(10, math.floor(wait_of(rank)))
        self.deadline[member] = now + wait + lease
        return wait

    def drop(self, member: str) -> None:
        self.first.pop(member, None)
        self.deadline.pop(member, None)


class LocalLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._leases: dict[str, dict[str, float]] = {}  # if:/gc:/fair: key → member → end
        self._tat: dict[str, dict[str, float]] = {}  # id → {rq, tk}
        self._latency: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._paused: dict[str, float] = {}
        self._reserved: dict[str, tuple[int, float]] = {}
        self._avoid: dict[str, int] = {}
        self._fair_of: dict[str, str] = {}
        self._queues: dict[str, _Queue] = {}
        self._turns: dict[str, int] = {}
        self._wrr: dict[str, dict[int, float]] = {}
        self._admitted: dict[str, float] = {}  # attempt → when its mark lapses
        self._wakes: dict[str, dict[str, str]] = {}  # group → waiting attempt → wake

    # --- helpers: as the Lua's ----------------------------------------------------------

    def _live(self, key: str, now: float) -> int:
        members = self._leases.setdefault(key, {})
        for member in [m for m, end in members.items() if end <= now]:
            del members[member]
        return len(members)

    def _queue(self, key: str) -> _Queue:
        return self._queues.setdefault(key, _Queue())

    def _rates(self, key: str, per_request: float, per_token: float, now: float) -> float:
        tat = self._tat.get(key, {})
        slot = now
        if per_request > 0 and "rq" in tat:
            slot = max(slot, tat["rq"])
        if per_token > 0 and "tk" in tat:
            slot = max(slot, tat["tk"])
        return slot

    def _advance(
        self, key: str, per_request: float, per_token: float, tokens: int, at: float
    ) -> None:
        tat = self._tat.setdefault(key, {})
        if per_request > 0:
            tat["rq"] = max(tat.get("rq", 0.0), at) + per_request
        if per_token > 0:
            tat["tk"] = max(tat.get("tk", 0.0), at) + tokens * per_token

    # --- the limiter ------------------------------------------------------------------

    def acquire(self, demand: Demand) -> Grant | Wait:
        with self._lock:
            return self._acquire(demand, _now())

    def _acquire(self, d: Demand, now: float) -> Grant | Wait:
        lease = d.lease_ms
        held = self._admitted.get(d.holder, 0.0) - now
        if held > 0:
            return Wait(math.ceil(held), "duplicate", "")
        fair = d.fair
        fair_key = None
        if fair is not None:
            fair_key = "fair:" + fair.key
            holders = self._leases.setdefault(fair_key, {})
            self._live(fair_key, now)
            if fair.execution_id not in holders:
                if len(holders) >= fair.max:
                    rule = fair

                    def rounds(rank: int) -> float:
                        return rule.poll_ms * (rank // rule.max + 1)

                    queue = self._queue(fair_key)
                    return Wait(queue.wait(fair.execution_id, rounds, lease, now), "fair", fair.key)
                self._queue(fair_key).drop(fair.execution_id)
            holders[fair.execution_id] = now + fair.lease_ms
            self._fair_of[fair.execution_id] = fair.key

        def hold(wait: float) -> int:
            wait = max(1, math.floor(wait))
            if fair is not None and fair_key is not None:
                self._leases[fair_key][fair.execution_id] = now + wait + fair.lease_ms
            return wait

        info: dict[int, tuple[int, float, bool] | None] = {}
        paused_for: float | None = None
        paused_id = ""
        for j, c in enumerate(d.candidates):
            left = self._paused.get(c.identity, 0.0) - now
            if left > 0:
                if paused_for is None or left < paused_for:
                    paused_for, paused_id = left, c.identity
                info[j] = None
                continue
            n = self._live("if:" + c.identity, now)
            slot = self._rates(c.identity, c.ms_per_request, c.ms_per_token, now)
            info[j] = (n, slot, c.max_concurrency == 0 or n < c.max_concurrency)
        group_room = True
        if d.group_max_concurrency > 0:
            group_room = self._live("gc:" + d.group, now) < d.group_max_concurrency
        group_slot = self._rates(d.group, d.group_ms_per_request, d.group_ms_per_token, now)

        def admit(j: int, reserved: bool) -> Grant:
            c = d.candidates[j]
            # The member carries when the call began: waiters reckon when it should end.
            member = f"{d.token}@{int(now)}"
            self._leases.setdefault("if:" + c.identity, {})[member] = now + lease
            if d.group_max_concurrency > 0:
                self._leases.setdefault("gc:" + d.group, {})[member] = now + lease
            if not reserved:
                self._advance(c.identity, c.ms_per_request, c.ms_per_token, d.tokens, now)
                self._advance(d.group, d.group_ms_per_request, d.group_ms_per_token, d.tokens, now)
            self._reserved.pop(d.holder, None)
            self._avoid.pop(d.step, None)
            self._queue("q:" + d.group).drop(d.holder)
            self._wakes.get(d.group, {}).pop(d.holder, None)
            if len(self._admitted) > _MOST_MARKS:
                for gone in [h for h, until in self._admitted.items() if until <= now]:
                    del self._admitted[gone]
            self._admitted[d.holder] = now + lease
            return Grant(index=c.index, identity=c.identity, token=member, demand=d)

        def ends_of(key: str, took: float, ends: list[float]) -> None:
            for member in self._leases.get(key, {}):
                began = member.rpartition("@")[2]
                if began.isdigit():
                    due = int(began) + took
                    if due < now:
                        due = now + max(took / 20, 10, now - due)
                    ends.append(due)

        def wait_for_room() -> Wait:
            ends: list[float] = []
            unit: float | None = None
            what = d.group
            for j, c in enumerate(d.candidates):
                if info[j] is not None:
                    took = self._expected(c.identity) or d.default_latency_ms
                    unit = took if unit is None else min(unit, took)
                    if group_room:
                        ends_of("if:" + c.identity, took, ends)
                    if len(d.candidates) == 1 and group_room:
                        what = c.identity
            step = unit or float(d.default_latency_ms)
            if not group_room:
                ends_of("gc:" + d.group, step, ends)
            ends.sort()

            def when(rank: int) -> float:
                if not ends:
                    return step
                # At most two rounds ahead, as the Lua.
                return ends[rank % len(ends)] + step * min(2, rank // len(ends)) - now

            wait = self._queue("q:" + d.group).wait(d.holder, when, lease, now)
            if d.wake is not None:
                self._wakes.setdefault(d.group, {})[d.holder] = d.wake
            return Wait(hold(wait), "concurrency", what)

        if not group_room:
            return wait_for_room()

        reservation = self._reserved.get(d.holder)
        if reservation is not None:
            index, at = reservation
            chosen = next(
                (j for j, c in enumerate(d.candidates) if c.index == index and info[j]), None
            )
            if chosen is not None:
                state = info[chosen]
                assert state is not None
                if now < at:
                    return Wait(hold(at - now), "rate", d.candidates[chosen].identity)
                if state[2]:
                    return admit(chosen, True)
                return wait_for_room()
            del self._reserved[d.holder]

        open_ = [j for j in range(len(d.candidates)) if info[j] is not None]
        if not open_:
            if paused_for is None:
                return Wait(hold(1000), "paused", "")
            return Wait(hold(paused_for), "paused", paused_id)
        avoid = self._avoid.get(d.step)
        if avoid is not None and len(open_) > 1:
            others = [j for j in open_ if d.candidates[j].index != avoid]
            open_ = others or open_

        def state_of(j: int) -> tuple[int, float, bool]:
            state = info[j]
            assert state is not None
            return state

        ready = [j for j in open_ if state_of(j)[2] and max(state_of(j)[1], group_slot) <= now]
        if ready:
            return admit(self._pick(d, ready, state_of), False)

        roomy = [j for j in open_ if state_of(j)[2]]
        if roomy:
            best = min(roomy, key=lambda j: max(state_of(j)[1], group_slot))
            slot = max(state_of(best)[1], group_slot)
            c = d.candidates[best]
            self._advance(c.identity, c.ms_per_request, c.ms_per_token, d.tokens, slot)
            self._advance(d.group, d.group_ms_per_request, d.group_ms_per_token, d.tokens, slot)
            self._reserved[d.holder] = (c.index, slot)
            what = c.identity if (c.ms_per_request or c.ms_per_token) else d.group
            return Wait(hold(slot - now), "rate", what)
        return wait_for_room()

    def _expected(self, identity: str) -> float | None:
        """The lower of the EWMA and the last call (as the Lua's ``expected``)."""
        known = [v for v in (self._latency.get(identity), self._last.get(identity)) if v]
        return min(known) if known else None

    def _pick(
        self, d: Demand, ready: list[int], state_of: Callable[[int], tuple[int, float, bool]]
    ) -> int:
        if d.routing == "weighted":
            current = self._wrr.setdefault(d.group, {})
            total = 0.0
            best: int | None = None
            values: dict[int, float] = {}
            for j in ready:
                c = d.candidates[j]
                values[j] = current.get(c.index, 0.0) + c.weight
                total += c.weight
                if best is None or values[j] > values[best]:
                    best = j
            assert best is not None
            for j in ready:
                current[d.candidates[j].index] = values[j] - (total if j == best else 0.0)
            return best
        scores: dict[int, float] = {}
        for j in ready:
            c = d.candidates[j]
            n = state_of(j)[0]
            if d.routing == "latency":
                scores[j] = self._latency.get(c.identity, 0.0) * (n + 1)
            else:
                scores[j] = n / c.weight
        low = min(scores.values())
        tied = [j for j in ready if scores[j] <= low + 1e-9]
        if len(tied) == 1:
            return tied[0]
        turn = self._turns.get(d.group, 0) + 1
        self._turns[d.group] = turn
        return tied[turn % len(tied)]

    def release(self, grant: Grant, settlement: Settlement) -> str | None:
        d = grant.demand
        candidate = next(c for c in d.candidates if c.index == grant.index)
        with self._lock:
            now = _now()
            self._leases.get("if:" + grant.identity, {}).pop(grant.token, None)
            self._leases.get("gc:" + d.group, {}).pop(grant.token, None)
            if settlement.seconds is None:
                # Never made: its attempt may be admitted again at once (as the Lua).
                self._admitted.pop(d.holder, None)
            delta = 0 if settlement.tokens is None else settlement.tokens - d.tokens
            for key, per_token in (
                (grant.identity, candidate.ms_per_token),
                (d.group, d.group_ms_per_token),
            ):
                if per_token > 0 and delta != 0:
                    tat = self._tat.setdefault(key, {})
                    current = tat.get("tk", now)
                    base = max(current, now) if delta > 0 else current
                    tat["tk"] = base + delta * per_token
            if settlement.seconds is not None:
                # How long it held its place (what waiters reckon with).
                began = grant.token.rpartition("@")[2]
                ms = now - int(began) if began.isdigit() else settlement.seconds * 1000.0
                e = self._latency.get(grant.identity)
                self._latency[grant.identity] = ms if e is None else e + _ALPHA * (ms - e)
                self._last[grant.identity] = ms
            if settlement.pause_seconds:
                until = now + settlement.pause_seconds * 1000.0
                self._paused[grant.identity] = max(self._paused.get(grant.identity, 0.0), until)
            if settlement.avoid and len(d.candidates) > 1:
                self._avoid[d.step] = grant.index
            if d.group_max_concurrency or candidate.max_concurrency:
                return self._wake_first(d.group, now)
            return None

    def _wake_first(self, group: str, now: float) -> str | None:
        """The first waiter's wake for a slot of ``group``, in queue order (as the
        Lua's)."""
        wakes = self._wakes.get(group)
        queue = self._queues.get("q:" + group)
        if not wakes or queue is None:
            return None
        for member, _ in sorted(queue.first.items(), key=lambda item: (item[1], item[0])):
            if queue.deadline.get(member, 0.0) > now and member in wakes:
                return wakes.pop(member)
        return None

    def renew(self, grant: Grant) -> None:
        d = grant.demand
        with self._lock:
            now = _now()
            for key in ("if:" + grant.identity, "gc:" + d.group):
                members = self._leases.get(key, {})
                if grant.token in members and members[grant.token] > now:
                    members[grant.token] = now + d.lease_ms
            if self._admitted.get(d.holder, 0.0) > now:
                self._admitted[d.holder] = now + d.lease_ms
            if d.fair is not None:
                holders = self._leases.get("fair:" + d.fair.key, {})
                if holders.get(d.fair.execution_id, 0.0) > now:
                    holders[d.fair.execution_id] = now + d.fair.lease_ms

    def end_execution(self, execution_id: str) -> None:
        with self._lock:
            key = self._fair_of.pop(execution_id, None)
            if key is not None:
                self._leases.get("fair:" + key, {}).pop(execution_id, None)

    def stats(self, identities: Sequence[str]) -> dict[str, EndpointStats]:
        with self._lock:
            now = _now()
            return {
                identity: EndpointStats(
                    in_flight=self._live("if:" + identity, now),
                    latency_ms=self._latency.get(identity),
                    paused_ms=max(0, int(self._paused.get(identity, 0.0) - now)),
                )
                for identity in identities
            }
