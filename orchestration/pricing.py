"""What a model's tokens cost: the shipped price table, overridden by settings
(``TROUPE_PRICES``) and then by the team file's ``prices``.

Prices are USD per million tokens, as providers publish them. The shipped figures are
OpenAI's list prices as of 2026-11 and are only defaults: a deployment that pays
differently (a discount, a self-hosted model with a notional price) overrides them. A
model found in no table has no price, and its calls' cost is None: unknown, not free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestration.agents.call import Usage
from orchestration.spec import ModelPrice

SHIPPED: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40, cached_input=0.025),
    "o3": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "o4-mini": ModelPrice(input=1.10, output=4.40, cached_input=0.275),
}

_PER = 1_000_000


@dataclass(frozen=True)
class Prices:
    """One effective price table."""

    table: Mapping[str, ModelPrice]

    @classmethod
    def layered(cls, *overrides: Mapping[str, ModelPrice]) -> Prices:
        table = dict(SHIPPED)
        for override in overrides:
            table.update(override)
        return cls(table)

    def of(self, model: str | None) -> ModelPrice | None:
        """The model's price: its own entry, else that of the longest name it extends
        (a dated snapshot, "gpt-4o-2024-08-06", is priced as "gpt-4o")."""
        if not model:
            return None
        found = self.table.get(model)
        if found is not None:
            return found
        best = ""
        for name in self.table:
            if model.startswith(name + "-") and len(name) > len(best):
                best = name
        return self.table[best] if best else None

    def cost(self, usage: Usage) -> float | None:
        """``usage``'s cost in USD; None when its model has no price."""
        if usage.empty:
            return 0.0
        price = self.of(usage.model)
        if price is None:
            return None
        cached = min(usage.cached_tokens, usage.tokens_in)
        cached_rate = price.cached_input if price.cached_input is not None else price.input
        return (
            (usage.tokens_in - cached) * price.input
            + cached * cached_rate
            + usage.tokens_out * price.output
        ) / _PER

    def priced(self, usage: Usage) -> Usage:
        """``usage`` with its cost filled in, unless the agent reported one itself."""
        if usage.cost_usd is not None:
            return usage
        cost = self.cost(usage)
        if cost is None or (cost == 0.0 and usage.empty):
            return usage
        return Usage(
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            model=usage.model,
            endpoint=usage.endpoint,
        )

    def worst_case(self, model: str | None, tokens_in: int, tokens_out: int) -> float | None:
        """The most a request of this size can cost (no input cached)."""
        price = self.of(model)
        if price is None:
            return None
        return (tokens_in * price.input + tokens_out * price.output) / _PER
