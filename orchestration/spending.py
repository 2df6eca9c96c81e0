"""One attempt's view of its execution's budget and prices: the BudgetGate adapters use.

Requests whose worst case is known (an LLM call) reserve it before they are made and
settle to the real figure after. What an attempt reports beyond what it settled (a
python or http agent's usage, known only once it returns) is charged when the attempt
ends; such a call is let in only while the budget is not used up, so it may overshoot
by its own usage, and only it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from orchestration.agents.call import Reservation, Usage
from orchestration.errors import BudgetExceeded
from orchestration.pricing import Prices
from orchestration.spec import Budget
from orchestration.store.budgets import BudgetRecords


@dataclass
class AttemptSpending:
    execution_id: str
    agent: str
    prices: Prices
    budget: Budget | None
    records: BudgetRecords
    # What the requests this attempt settled used, priced (kept if the attempt fails).
    spent: Usage = field(default_factory=Usage)
    # What this attempt has committed so far through reservations it settled or kept.
    _settled: Usage = field(default_factory=Usage)
    _settled_cost: float = 0.0

    # --- BudgetGate ----------------------------------------------------------------

    def price(self, usage: Usage) -> Usage:
        return self.prices.priced(usage)

    def reserve(self, model: str | None, tokens_in: int, tokens_out: int | None) -> Reservation:
        budget = self.budget
        if budget is None:
            return Reservation(0, 0.0)
        if tokens_out is None:
            raise BudgetExceeded(
                f"agent {self.agent!r} sets no max_tokens, so a call's cost has no bound; "
                "set max_tokens to run it under a budget"
            )
        cost = self.prices.worst_case(model, tokens_in, tokens_out)
        if cost is None and budget.max_cost_usd is not None:
            raise BudgetExceeded(
                f"model {model!r} has no price, so max_cost_usd cannot be kept; "
                "give its price in the team file's prices or TROUPE_PRICES"
            )
        tokens = tokens_in + tokens_out
        if not self.records.reserve(self.execution_id, tokens, cost or 0.0):
            raise BudgetExceeded(self._refusal(f"{tokens:,} tokens", cost))
        return Reservation(tokens, cost or 0.0)

    def settle(self, reservation: Reservation, usage: Usage | None) -> Usage | None:
        if usage is None:
            # The server may have run the request: what was held stays spent.
            self._settled_cost += reservation.cost_usd
            self._settled = self._settled + Usage(tokens_in=reservation.tokens, cost_usd=0.0)
            return None
        priced = self.prices.priced(usage)
        cost = priced.known_cost or 0.0
        if self.budget is not None:
            self.records.adjust(
                self.execution_id,
                priced.tokens_in + priced.tokens_out - reservation.tokens,
                cost - reservation.cost_usd,
            )
        self.spent = self.spent + priced
        self._settled_cost += cost
        self._settled = self._settled + Usage(
            tokens_in=priced.tokens_in, tokens_out=priced.tokens_out, cost_usd=0.0
        )
        return priced

    # --- the delegation's side -----------------------------------------------------

    def admit(self) -> None:
        """Before a call: refuse it if the budget is already used up."""
        if self.budget is None:
            return
        state = self.records.state(self.execution_id)
        if state is not None and state.exhausted:
            raise BudgetExceeded(f"budget used up: {state.describe()}")

    def charge(self, usage: Usage) -> None:
        """After a call: commit what it reported beyond what it settled."""
        if self.budget is None:
            return
        tokens = usage.tokens_in + usage.tokens_out
        settled = self._settled.tokens_in + self._settled.tokens_out
        cost = (usage.known_cost or 0.0) - self._settled_cost
        self.records.adjust(self.execution_id, max(0, tokens - settled), max(0.0, cost))

    def _refusal(self, need: str, cost: float | None) -> str:
        state = self.records.state(self.execution_id)
        wanted = need + (f" / ${cost:.4f}" if cost is not None else "")
        left = state.describe() if state is not None else "the execution is gone"
        return f"budget exceeded: the call may need {wanted}; {left}"


# The keys usage_record writes, in its order: what reads a stored usage (the report,
# the audit export) names them from here, so it cannot drift from what is written.
USAGE_KEYS: Final = (
    "tokens_in",
    "tokens_out",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "model",
    "endpoint",
)


def usage_record(usage: Usage) -> dict[str, Any] | None:
    """An attempt's usage as stored (None: it reported nothing)."""
    if usage.empty and usage.model is None:
        return None
    return {
        "tokens_in": usage.tokens_in,
        "tokens_out": usage.tokens_out,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost_usd": usage.known_cost,
        "model": usage.model,
        "endpoint": usage.endpoint,
    }


def recorded_usage(record: dict[str, Any]) -> Usage:
    """The usage a stored record holds (a key missing or None: Usage's default)."""
    return Usage(**{name: record[name] for name in USAGE_KEYS if record.get(name) is not None})
