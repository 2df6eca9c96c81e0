"""Shared breaker state in the database, changed only by compare-and-set updates.

Every update names the version it read (or, for admissions, the exact condition that
must still hold), so concurrent workers on PostgreSQL or SQLite never both win.

A breaker's key is the identity of what is called (orchestration.agents.identity:
``agent_identity(spec)``), never an agent's name: every team calling the same thing
shares its breaker.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError

from orchestration.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSnapshot,
    after_call,
    after_probe,
)
from orchestration.spec import BreakerPolicy
from orchestration.store.models import BreakerEventRow, BreakerRow
from orchestration.store.repository import Store, _retrying, aware, now, plain_update

_CAS_ATTEMPTS = 50


@dataclass(frozen=True)
class Admission:
    allowed: bool
    trial: bool = False
    state: str = CLOSED
    retry_at: datetime | None = None
    reason: str | None = None
    # The state read when the breaker was closed (for the per-worker cache).
    closed: BreakerSnapshot | None = None

    @classmethod
    def open_until(cls, key: str, trial_at: datetime) -> Admission:
        """The refusal of an OPEN breaker whose cool-down ends at ``trial_at``."""
        # `report` reads the key and the time back out of this reason
        # (orchestration.insights).
        return cls(
            allowed=False,
            state=OPEN,
            retry_at=trial_at,
            reason=f"circuit open for {key!r} until {trial_at.isoformat(timespec='milliseconds')}",
        )


@dataclass(frozen=True)
class BreakerView:
    key: str
    snapshot: BreakerSnapshot
    updated_at: datetime


def _snapshot(row: BreakerRow) -> BreakerSnapshot:
    return BreakerSnapshot(
        state=row.state,
        consecutive_failures=row.consecutive_failures,
        outcomes=row.outcomes,
        opened_at=aware(row.opened_at),
        next_trial_at=aware(row.next_trial_at),
        half_open_calls=row.half_open_calls,
        probe_failures=row.probe_failures,
        last_error=row.last_error,
    )


def _event(key: str, at: datetime, before: str, after: BreakerSnapshot) -> BreakerEventRow:
    """The history row of a change of state, added in the change's own transaction: the
    breaker's row keeps only its latest state, and a breaker that keeps opening is what
    `report` looks for. Changes of state are rare, so the hot path pays nothing more."""
    reason = after.last_error[:2000] if after.state == OPEN and after.last_error else None
    return BreakerEventRow(key=key, at=at, from_state=before, to_state=after.state, reason=reason)


def _values(snapshot: BreakerSnapshot) -> dict[str, Any]:
    values = {f.name: getattr(snapshot, f.name) for f in fields(snapshot)}
    if values["last_error"]:
        values["last_error"] = values["last_error"][:2000]
    return values


class BreakerStore:
    def __init__(self, store: Store) -> None:
        self._store = store

    @_retrying
    def get(self, key: str) -> BreakerView | None:
        with self._store.session() as session:
            row = session.get(BreakerRow, key)
            if row is None:
                return None
            return BreakerView(key, _snapshot(row), aware(row.updated_at) or now())

    @_retrying
    def all(self) -> list[BreakerView]:
        with self._store.session() as session:
            rows = session.scalars(select(BreakerRow).order_by(BreakerRow.key))
            return [BreakerView(r.key, _snapshot(r), aware(r.updated_at) or now()) for r in rows]

    @_retrying
    def admit(self, key: str, policy: BreakerPolicy, at: datetime | None = None) -> Admission:
        """May a call to what ``key`` identifies go ahead? Claims a trial slot when
        HALF_OPEN."""
        stamp = at or now()
        for _ in range(_CAS_ATTEMPTS):
            with self._store.session() as session, session.begin():
                row = session.get(BreakerRow, key)
                if row is None or row.state == CLOSED:
                    snapshot = BreakerSnapshot() if row is None else _snapshot(row)
                    return Admission(allowed=True, closed=snapshot)
                version = row.version
                trial_at = aware(row.next_trial_at)
                state = row.state
                if state == OPEN:
                    if trial_at is not None and stamp < trial_at:
                        return Admission.open_until(key, trial_at)
                    moved = session.execute(
                        plain_update(BreakerRow)
                        .where(BreakerRow.key == key, BreakerRow.version == version)
                        .values(
                            state=HALF_OPEN,
                            half_open_calls=1,
                            version=version + 1,
                            updated_at=stamp,
                        )
                    )
                    if moved.rowcount:  # type: ignore[attr-defined]
                        trial = replace(_snapshot(row), state=HALF_OPEN)
                        session.add(_event(key, stamp, OPEN, trial))
                        return Admission(allowed=True, trial=True, state=HALF_OPEN)
                    continue
                # HALF_OPEN: claim one of the trial slots, atomically. A slot held longer
                # than the cool-down belongs to a trial whose worker died: reclaim it.
                stale = stamp - timedelta(seconds=policy.reset_timeout)
                claimed = session.execute(
                    plain_update(BreakerRow)
                    .where(
                        BreakerRow.key == key,
                        BreakerRow.state == HALF_OPEN,
                        or_(
                            BreakerRow.half_open_calls < policy.half_open_max_calls,
                            BreakerRow.updated_at < stale,
                        ),
                    )
                    .values(
                        half_open_calls=BreakerRow.half_open_calls + 1,
                        version=BreakerRow.version + 1,
                        updated_at=stamp,
                    )
                )
                if claimed.rowcount:  # type: ignore[attr-defined]
                    return Admission(allowed=True, trial=True, state=HALF_OPEN)
                retry_in = min(policy.reset_timeout, 1.0)
                return Admission(
                    allowed=False,
                    state=HALF_OPEN,
                    retry_at=stamp + timedelta(seconds=retry_in),
                    reason=f"circuit half-open for {key!r}: "
                    f"{policy.half_open_max_calls} trial call(s) already running",
                )
        raise RuntimeError(f"breaker {key!r}: too much contention")  # pragma: no cover

    @_retrying
    def release_trial(self, key: str) -> None:
        """Give back a HALF_OPEN trial slot that was claimed but never used."""
        with self._store.session() as session, session.begin():
            session.execute(
                plain_update(BreakerRow)
                .where(
                    BreakerRow.key == key,
                    BreakerRow.state == HALF_OPEN,
                    BreakerRow.half_open_calls > 0,
                )
                .values(
                    half_open_calls=BreakerRow.half_open_calls - 1,
                    version=BreakerRow.version + 1,
                )
            )

    def record_call(
        self,
        key: str,
        policy: BreakerPolicy,
        *,
        failed: bool,
        trial: bool,
        error: str | None = None,
        at: datetime | None = None,
    ) -> str:
        stamp = at or now()
        return self._apply(
            key,
            lambda s: after_call(s, policy, failed=failed, trial=trial, now=stamp, error=error),
            stamp,
        )

    def record_probe(
        self,
        key: str,
        policy: BreakerPolicy,
        *,
        healthy: bool,
        failures_to_open: int,
        detail: str | None = None,
        at: datetime | None = None,
    ) -> str:
        stamp = at or now()
        return self._apply(
            key,
            lambda s: after_probe(
                s,
                policy,
                healthy=healthy,
                failures_to_open=failures_to_open,
                now=stamp,
                detail=detail,
            ),
            stamp,
        )

    def reset(self, key: str) -> bool:
        """Close a breaker by hand. False if there is no such breaker."""
        if self.get(key) is None:
            return False
        self._apply(key, lambda s: BreakerSnapshot(), now())
        return True

    def force_open(self, key: str, policy: BreakerPolicy, reason: str) -> str:
        from orchestration.resilience.breaker import opened

        stamp = now()
        return self._apply(key, lambda s: opened(s, policy, stamp, reason), stamp)

    @_retrying
    def _apply(self, key: str, change: Any, stamp: datetime) -> str:
        for _ in range(_CAS_ATTEMPTS):
            with self._store.session() as session, session.begin():
                row = session.get(BreakerRow, key)
                if row is None:
                    new = change(BreakerSnapshot())
                    if new == BreakerSnapshot():
                        return CLOSED  # nothing worth a row yet
                    try:
                        with session.begin_nested():
                            session.add(
                                BreakerRow(key=key, version=0, updated_at=stamp, **_values(new))
                            )
                    except IntegrityError:
                        continue
                    if new.state != CLOSED:
                        session.add(_event(key, stamp, CLOSED, new))
                    return str(new.state)
                old = _snapshot(row)
                new = change(old)
                if new == old:
                    return str(old.state)
                done = session.execute(
                    plain_update(BreakerRow)
                    .where(BreakerRow.key == key, BreakerRow.version == row.version)
                    .values(version=row.version + 1, updated_at=stamp, **_values(new))
                )
                if done.rowcount:  # type: ignore[attr-defined]
                    if new.state != old.state:
                        session.add(_event(key, stamp, old.state, new))
                    return str(new.state)
        raise RuntimeError(f"breaker {key!r}: too much contention")  # pragma: no cover
