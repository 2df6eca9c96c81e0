"""What a team file says about capacity: the endpoints an agent may call and how its
calls are routed among them, the cluster-wide limits of an agent or an endpoint, and a
team's keyed fairness. Validated here; enforced by ``orchestration.limits``.

```yaml
agents:
  reviewer:
    kind: openai
    model: gpt-4o-mini
    endpoints:                      # each its own breaker, health and counts
      - {base_url: "https://a.example/v1", weight: 2, max_concurrency: 8}
      - {base_url: "https://b.example/v1", model: other-model}
    routing: least_in_flight        # or weighted, latency
    max_concurrency: 10             # calls of this agent in flight, cluster-wide
    rate_limit: {requests_per_minute: 600, tokens_per_minute: 200000}
concurrency: {key: "input.customer", max: 2}   # executions per key running at once
```
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orchestration.team_limits import MAX_EXPRESSION_CHARS, MAX_MODEL, MAX_URL

# An agent's endpoints: enough for any pool of replicas, few enough to rank in one step.
MAX_ENDPOINTS = 64

Url = Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=MAX_URL)]
Weight = Annotated[float, Field(gt=0, le=1000)]
Concurrency = Annotated[int, Field(ge=1, le=100_000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Routing(StrEnum):
    """How a call picks one of an agent's endpoints (those whose breaker admits it and
    that have capacity now)."""

    # The fewest calls in flight cluster-wide, relative to its weight.
    LEAST_IN_FLIGHT = "least_in_flight"
    # In proportion to the weights (smooth weighted round robin, cluster-wide).
    WEIGHTED = "weighted"
    # The lowest recent latency (an EWMA of its calls), times its calls in flight + 1.
    LATENCY = "latency"


class RateLimit(_Model):
    """Requests and tokens per minute, spread evenly: a request every 60/N seconds, and
    a call's tokens take their share of the minute (no burst beyond that)."""

    requests_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1, le=10**12)] | None = None

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("give requests_per_minute, tokens_per_minute or both")
        return self


class _Limited(_Model):
    # Calls in flight at once, counted across every worker process and host.
    max_concurrency: Concurrency | None = None
    rate_limit: RateLimit | None = None


class _Endpoint(_Limited):
    # Its share of the calls, under ``weighted`` routing (and least_in_flight's: calls
    # in flight relative to it).
    weight: Weight = 1.0
    # Probed by the heartbeat; feeds this endpoint's breaker.
    health_url: Url | None = None


class HttpEndpoint(_Endpoint):
    url: Url


class OpenAIEndpoint(_Endpoint):
    # Each defaults to the agent's own.
    base_url: Url | None = None
    model: Annotated[str, Field(min_length=1, max_length=MAX_MODEL)] | None = None


class KeyedConcurrency(_Model):
    """At most ``max`` executions of the team with the same key (a CEL expression over
    ``input``, e.g. ``input.customer``) run at once."""

    key: Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_CHARS)]
    max: Concurrency
