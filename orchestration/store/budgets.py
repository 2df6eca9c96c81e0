"""An execution's budget in its own row: what is allowed, and what is committed (spent,
plus held by calls in flight).

A reservation is one conditional UPDATE: the row lock makes concurrent reservations
take turns, and each re-checks the condition against the row as the one before left it
(PostgreSQL re-evaluates an UPDATE's WHERE on the newest row version; SQLite has one
writer at a time). So calls running in parallel can never commit more than the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, text

from orchestration.store.models import ExecutionRow
from orchestration.store.repository import Store, _retrying

_RESERVE = text(
    """
UPDATE troupe_executions
SET committed_cost_usd = committed_cost_usd + :cost,
    committed_tokens = committed_tokens + :tokens
WHERE id = :eid
  AND (max_cost_usd IS NULL OR committed_cost_usd + :cost <= max_cost_usd)
  AND (max_tokens IS NULL OR committed_tokens + :tokens <= max_tokens)"""
)
_ADJUST = text(
    """
UPDATE troupe_executions
SET committed_cost_usd = committed_cost_usd + :cost,
    committed_tokens = committed_tokens + :tokens
WHERE id = :eid"""
)


@dataclass(frozen=True)
class BudgetState:
    max_cost_usd: float | None
    max_tokens: int | None
    committed_cost_usd: float
    committed_tokens: int

    @property
    def exhausted(self) -> bool:
        return (self.max_cost_usd is not None and self.committed_cost_usd >= self.max_cost_usd) or (
            self.max_tokens is not None and self.committed_tokens >= self.max_tokens
        )

    def describe(self) -> str:
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${self.committed_cost_usd:.4f} of ${self.max_cost_usd:g}")
        if self.max_tokens is not None:
            parts.append(f"{self.committed_tokens:,} of {self.max_tokens:,} tokens")
        return " and ".join(parts) + " committed"


class BudgetRecords:
    def __init__(self, store: Store) -> None:
        self._store = store

    @_retrying
    def reserve(self, execution_id: str, tokens: int, cost_usd: float) -> bool:
        """Commit ``tokens`` and ``cost_usd`` if they fit in what is left."""
        with self._store.engine.begin() as connection:
            result = connection.execute(
                _RESERVE, {"eid": execution_id, "tokens": tokens, "cost": cost_usd}
            )
            return bool(result.rowcount)

    @_retrying
    def adjust(self, execution_id: str, tokens: int, cost_usd: float) -> None:
        """Add to (or, settling a reservation, take from) what is committed."""
        if tokens == 0 and cost_usd == 0.0:
            return
        with self._store.engine.begin() as connection:
            connection.execute(_ADJUST, {"eid": execution_id, "tokens": tokens, "cost": cost_usd})

    @_retrying
    def state(self, execution_id: str) -> BudgetState | None:
        with self._store.session() as session:
            row = session.execute(
                select(
                    ExecutionRow.max_cost_usd,
                    ExecutionRow.max_tokens,
                    ExecutionRow.committed_cost_usd,
                    ExecutionRow.committed_tokens,
                ).where(ExecutionRow.id == execution_id)
            ).one_or_none()
        if row is None:
            return None
        return BudgetState(row[0], row[1], float(row[2] or 0.0), int(row[3] or 0))
