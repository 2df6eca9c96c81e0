"""The agent registry and its health: which agents each team declares, what each calls
(its identity), the heartbeat's probes per identity, and recent call outcomes.

Read by the heartbeat and the `agents` and `breakers` commands; written when a team is
enqueued and by the heartbeat. Never on a delegation's hot path.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from orchestration.agents.identity import agent_identity, endpoint_identities
from orchestration.constants import OUTCOME_REJECTED, OUTCOME_SUCCESS
from orchestration.spec import parse_agent
from orchestration.store.models import AgentRow, AttemptRow, ExecutionRow, HeartbeatRow
from orchestration.store.repository import Store, _retrying, now

# What each Store's process has registered already, so enqueueing the same team again
# costs no write. Weak: a Store that is dropped takes its entries with it.
_registered: weakref.WeakKeyDictionary[Store, set[tuple[str, str]]] = weakref.WeakKeyDictionary()

# Two processes that enqueue a team for the first time at once both insert its rows:
# the loser reads them again and finds nothing left to do.
_REGISTER_ATTEMPTS = 3


class AgentRegistry:
    def __init__(self, store: Store) -> None:
        self._store = store

    def register_agents(self, team: str, agents: dict[str, dict[str, Any]]) -> None:
        """Remember the team's agents (name → spec as JSON) and what each calls, so the
        heartbeat knows what to probe. The team's agents are these and only these."""
        fingerprint = (team, json.dumps(agents, sort_keys=True))
        seen = _registered.setdefault(self._store, set())
        if fingerprint in seen:
            return  # this process registered exactly these agents already
        identities = {name: agent_identity(parse_agent(spec)) for name, spec in agents.items()}
        for attempt in range(_REGISTER_ATTEMPTS):
            try:
                self._register(team, agents, identities)
                break
            except IntegrityError:
                if attempt == _REGISTER_ATTEMPTS - 1:
                    raise
        seen.add(fingerprint)

    @_retrying
    def _register(
        self, team: str, agents: dict[str, dict[str, Any]], identities: dict[str, str]
    ) -> None:
        stamp = now()
        with self._store.session() as session, session.begin():
            rows = {
                row.name: row
                for row in session.scalars(select(AgentRow).where(AgentRow.team == team))
            }
            gone = set(rows) - set(agents)
            if gone:
                session.execute(
                    delete(AgentRow).where(AgentRow.team == team, AgentRow.name.in_(gone))
                )
            for name, spec in agents.items():
                identity = identities[name]
                row = rows.get(name)
                if row is None:
                    session.add(
                        AgentRow(
                            team=team, name=name, identity=identity, spec=spec, updated_at=stamp
                        )
                    )
                elif row.spec != spec or row.identity != identity:
                    row.spec, row.identity, row.updated_at = spec, identity, stamp

    @_retrying
    def agents(self) -> list[AgentRow]:
        """Every registered agent, by identity, then team, then name."""
        with self._store.session() as session:
            return list(
                session.scalars(
                    select(AgentRow).order_by(AgentRow.identity, AgentRow.team, AgentRow.name)
                )
            )

    @_retrying
    def record_heartbeat(
        self, identity: str, healthy: bool, latency_ms: int, detail: str | None
    ) -> None:
        with self._store.session() as session, session.begin():
            session.add(
                HeartbeatRow(
                    identity=identity,
                    at=now(),
                    healthy=healthy,
                    latency_ms=latency_ms,
                    detail=detail,
                )
            )

    @_retrying
    def last_heartbeats(self) -> dict[str, HeartbeatRow]:
        """The latest probe of each identity."""
        with self._store.session() as session:
            latest = (
                select(HeartbeatRow.identity, func.max(HeartbeatRow.id).label("id"))
                .group_by(HeartbeatRow.identity)
                .subquery()
            )
            rows = session.scalars(
                select(HeartbeatRow).join(latest, HeartbeatRow.id == latest.c.id)
            )
            return {row.identity: row for row in rows}

    @_retrying
    def recent_outcomes(self, since: datetime) -> dict[tuple[str, str], tuple[int, int]]:
        """Per (team, agent name): (successful attempts, finished attempts) since a
        moment. An attempt names its agent as its team file does, so the team comes
        from its execution."""
        with self._store.session() as session:
            rows = session.execute(
                select(ExecutionRow.team, AttemptRow.agent, AttemptRow.outcome, func.count())
                .join(ExecutionRow, ExecutionRow.id == AttemptRow.execution_id)
                .where(
                    AttemptRow.started_at >= since,
                    AttemptRow.outcome.is_not(None),
                    # A dispatch the breaker refused never reached the agent.
                    AttemptRow.outcome != OUTCOME_REJECTED,
                )
                .group_by(ExecutionRow.team, AttemptRow.agent, AttemptRow.outcome)
            )
            totals: dict[tuple[str, str], tuple[int, int]] = {}
            for team, agent, outcome, count in rows:
                ok, total = totals.get((team, agent), (0, 0))
                success = count if outcome == OUTCOME_SUCCESS else 0
                totals[(team, agent)] = (ok + success, total + count)
            return totals


def by_identity(rows: Iterable[AgentRow]) -> dict[str, list[AgentRow]]:
    """Registered agents grouped by what they call, in the order given: an agent with
    endpoints under each of them (its row's identity is its first endpoint's)."""
    groups: dict[str, list[AgentRow]] = {}
    for row in rows:
        identities: tuple[str, ...] = (row.identity,)
        if isinstance(row.spec, dict) and row.spec.get("endpoints"):
            identities = endpoint_identities(parse_agent(row.spec))
        for identity in identities:
            groups.setdefault(identity, []).append(row)
    return groups
