"""Team files as pydantic models: everything a team declares, validated before it runs."""

from __future__ import annotations

import os
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from orchestration.capacity import (
    MAX_ENDPOINTS,
    Concurrency,
    HttpEndpoint,
    KeyedConcurrency,
    OpenAIEndpoint,
    RateLimit,
    Routing,
)
from orchestration.priorities import Priority
from orchestration.team_limits import (
    MAX_AGENT_NAME,
    MAX_AGENTS,
    MAX_EXCEPTION_NAME,
    MAX_EXCEPTION_NAMES,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_MODEL,
    MAX_SCHEMA_KEYS,
    MAX_SECONDS,
    MAX_STEP_ID,
    MAX_STEPS,
    MAX_TARGET,
    MAX_TEAM_NAME,
    MAX_TEXT,
    MAX_TOOLS,
    MAX_URL,
)
from workflows.conditions import (
    ConditionSyntaxError,
    check_expression_budget,
    compile_condition,
    referenced_steps,
)
from workflows.graph import find_cycle
from workflows.plan import Strategy, dependencies

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
AGENT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
TARGET_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
# A broker queue's name: no separator Celery's --queues or kombu's Redis keys give a
# meaning to (commas, colons, spaces), and short.
QUEUE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
MAX_QUEUE_NAME = 100

# Every string and duration is bounded (orchestration/team_limits.py says why).
AgentName = Annotated[str, Field(max_length=MAX_AGENT_NAME)]
StepId = Annotated[str, Field(pattern=STEP_ID_PATTERN, max_length=MAX_STEP_ID)]
Target = Annotated[str, Field(pattern=TARGET_PATTERN, max_length=MAX_TARGET)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
QueueName = Annotated[str, Field(pattern=QUEUE_PATTERN, max_length=MAX_QUEUE_NAME)]
HttpUrl = Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=MAX_URL)]
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=100)]
HeaderValue = Annotated[str, Field(max_length=MAX_HEADER_VALUE)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=200)]
JsonSchema = Annotated[dict[str, Any], Field(max_length=MAX_SCHEMA_KEYS)]
ExceptionNames = Annotated[
    tuple[Annotated[str, Field(max_length=MAX_EXCEPTION_NAME)], ...],
    Field(max_length=MAX_EXCEPTION_NAMES),
]


class SpecProblem(ValueError):
    """A cross-field problem that knows which field it is about."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class Jitter(StrEnum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


class _Model(BaseModel):
    # inf and nan are never a setting: an infinite deadline overflows a date at run time.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RetryPolicy(_Model):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    initial_delay: Annotated[float, Field(ge=0, le=3600)] = 0.5
    backoff: Annotated[float, Field(ge=1.0, le=100)] = 2.0
    max_delay: Annotated[float, Field(ge=0, le=86400)] = 30.0
    jitter: Jitter = Jitter.FULL
    # Exception class names (plain or dotted) to retry or never retry, beyond the defaults.
    retry_on: ExceptionNames = ()
    no_retry_on: ExceptionNames = ()

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise SpecProblem(
                "max_delay",
                f"{self.max_delay:g} is below initial_delay {self.initial_delay:g}",
            )
        return self

    def largest_delay(self) -> float:
        """The longest single wait this policy can schedule between attempts."""
        if self.max_attempts <= 1:
            return 0.0
        retries = self.max_attempts - 1
        if self.jitter is Jitter.DECORRELATED:
            # Each decorrelated wait is at most three times the previous one.
            return min(self.max_delay, self.initial_delay * 3.0**retries)
        return min(self.max_delay, self.initial_delay * self.backoff ** (retries - 1))


class WhenOpen(StrEnum):
    """What a delegation does when its agent's breaker is open."""

    FAIL = "fail"
    WAIT = "wait"
    FALLBACK = "fallback"


class BreakerPolicy(_Model):
    """resilience4j-style: consecutive failures, or a failure rate over a sliding window."""

    failure_threshold: Annotated[int, Field(ge=0, le=10_000)] = 5
    window: Annotated[int, Field(ge=1, le=1000)] = 20
    failure_rate: Annotated[float, Field(gt=0, le=1)] | None = None
    min_calls: Annotated[int, Field(ge=1, le=1000)] = 10
    slow_call_seconds: Seconds | None = None
    reset_timeout: Annotated[float, Field(gt=0, le=86400)] = 30.0
    half_open_max_calls: Annotated[int, Field(ge=1, le=1000)] = 1
    when_open: WhenOpen | None = None

    @model_validator(mode="after")
    def _some_rule(self) -> BreakerPolicy:
        if self.failure_threshold == 0 and self.failure_rate is None:
            raise SpecProblem(
                "failure_threshold", "0 disables the consecutive rule; set failure_rate instead"
            )
        if self.failure_rate is not None and self.min_calls > self.window:
            raise SpecProblem(
                "min_calls", f"{self.min_calls} exceeds the window of {self.window} calls"
            )
        return self


class HealthCheck(_Model):
    """How the beat heartbeat probes an agent: a callable, or an HTTP GET."""

    target: Target | None = None
    url: Annotated[str, Field(pattern=r"^https?://", max_length=MAX_URL)] | None = None
    timeout: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Consecutive failed probes that open the agent's breaker.
    failures_to_open: Annotated[int, Field(ge=1, le=100)] = 3

    @model_validator(mode="after")
    def _one_probe(self) -> HealthCheck:
        if (self.target is None) == (self.url is None):
            raise SpecProblem("target", "give exactly one of target (a callable) or url")
        return self


class _AgentFields(_Model):
    """What every agent kind declares: how its calls are bounded, retried and guarded."""

    description: Text | None = None
    timeout: Annotated[float, Field(gt=0, le=86400)] = 60.0
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    fallback: AgentName | None = None
    health: HealthCheck | None = None
    # A long-running agent that reports progress (call.heartbeat) must do so this often.
    heartbeat_timeout: Seconds | None = None
    # The Celery queue its delegations go to (None: Troupe's own, TROUPE_QUEUE); served
    # by workers started with `manage.py worker --queues NAME`.
    queue: QueueName | None = None
    # Cluster-wide, over all of the agent's endpoints (orchestration/capacity.py).
    max_concurrency: Concurrency | None = None
    rate_limit: RateLimit | None = None

    @property
    def when_open(self) -> WhenOpen:
        if self.breaker.when_open is not None:
            return self.breaker.when_open
        return WhenOpen.FALLBACK if self.fallback else WhenOpen.FAIL

    @property
    def probe(self) -> HealthCheck | None:
        """How the heartbeat probes this agent, if at all."""
        return self.health


class PythonAgentSpec(_AgentFields):
    """An importable callable, sync or async: ``package.module:function``."""

    kind: Literal["python"] = "python"
    target: Target


class HttpAgentSpec(_AgentFields):
    """A remote agent service: each call is a JSON POST to ``url``, or to one of its
    ``endpoints``."""

    kind: Literal["http"]
    url: HttpUrl | None = None
    endpoints: Annotated[tuple[HttpEndpoint, ...], Field(max_length=MAX_ENDPOINTS)] = ()
    routing: Routing = Routing.LEAST_IN_FLIGHT
    # Header values may name environment variables (``Bearer ${API_TOKEN}``): they are
    # read in the worker at call time, so the stored spec holds the names only.
    headers: Annotated[dict[HeaderName, HeaderValue], Field(max_length=MAX_HEADERS)] = {}
    health_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _url_or_endpoints(self) -> HttpAgentSpec:
        if (self.url is None) == (not self.endpoints):
            raise SpecProblem("url", "give exactly one of url or endpoints")
        if self.endpoints and (self.health_url is not None or self.health is not None):
            field = "health_url" if self.health_url is not None else "health"
            raise SpecProblem(field, "with endpoints, give each endpoint its health_url")
        _distinct([e.url for e in self.endpoints])
        return self

    @property
    def probe(self) -> HealthCheck | None:
        if self.health is None and self.health_url is not None:
            return HealthCheck(url=self.health_url)
        return self.health

    @property
    def call_url(self) -> str:
        """Where a call goes: ``url``, or the first endpoint's (see ``at``)."""
        return self.url if self.url is not None else self.endpoints[0].url

    def at(self, endpoint: HttpEndpoint) -> HttpAgentSpec:
        """This agent as it calls one of its endpoints."""
        return self.model_copy(
            update={
                "url": endpoint.url,
                "endpoints": (),
                "health_url": endpoint.health_url,
            }
        )


def _distinct(endpoints: list[str]) -> None:
    # Each endpoint is its own identity (breaker, health, counts): one listed twice
    # would be counted as two.
    for i, endpoint in enumerate(endpoints):
        if endpoint in endpoints[:i]:
            raise SpecProblem(
                f"endpoints[{i}]", f"the same endpoint as endpoints[{endpoints.index(endpoint)}]"
            )


_SETTING_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _from_environment(value: Any) -> Any:
    """``${NAME}`` or ``${NAME:-default}`` in a setting that names where to call, read
    when the team file is loaded: one file serves a local server and a hosted one. Keys
    are never read this way (api_key_env names a variable read at call time)."""
    if not isinstance(value, str) or "${" not in value:
        return value

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        raise ValueError(f"environment variable {name} is not set (or write ${{{name}:-default}})")

    return _SETTING_VARIABLE.sub(one, value)


class OpenAIAgentSpec(_AgentFields):
    """A model behind an OpenAI-compatible chat-completions endpoint."""

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("base_url", "model", mode="before")
    @classmethod
    def _settings_from_environment(cls, value: Any) -> Any:
        return _from_environment(value)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _endpoints_from_environment(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        return [
            {k: _from_environment(v) if k in ("base_url", "model") else v for k, v in e.items()}
            if isinstance(e, dict)
            else e
            for e in value
        ]

    kind: Literal["openai"]
    base_url: HttpUrl = "https://api.openai.com/v1"
    # Required unless every endpoint names its model.
    model: ModelName | None = None
    # Base URL and model pairs, each defaulting to the agent's own.
    endpoints: Annotated[tuple[OpenAIEndpoint, ...], Field(max_length=MAX_ENDPOINTS)] = ()
    routing: Routing = Routing.LEAST_IN_FLIGHT
    # The name of the environment variable holding the key, never the key itself.
    api_key_env: EnvName | None = "OPENAI_API_KEY"
    system: Text | None = None
    # A Jinja template (sandboxed) over task, input, steps.<id>.output, item and index.
    prompt: Text | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    # JSON Schema the reply must satisfy; ``json: true`` asks for any JSON object.
    output_schema: JsonSchema | None = None
    json_output: bool = Field(default=False, alias="json")
    # Invalid replies sent back to the model with the validation error, per attempt.
    max_repairs: Annotated[int, Field(ge=0, le=10)] = 2
    # Importable callables the model may call; their schemas come from their type hints.
    tools: Annotated[tuple[Target, ...], Field(max_length=MAX_TOOLS)] = ()
    max_turns: Annotated[int, Field(ge=1, le=100)] = 8
    # Give the model tools for its team: shared memory (read, write, list), messages
    # (send, broadcast), and delegation (ask, hand off).
    team_tools: bool = False

    @model_validator(mode="after")
    def _some_model(self) -> OpenAIAgentSpec:
        if self.model is None and (
            not self.endpoints or any(e.model is None for e in self.endpoints)
        ):
            raise SpecProblem("model", "required field is missing (or name one in every endpoint)")
        if self.endpoints and self.health is not None:
            raise SpecProblem("health", "with endpoints, give each endpoint its health_url")
        _distinct(
            [
                f"{(e.base_url or self.base_url).rstrip('/')} {e.model or self.model}"
                for e in self.endpoints
            ]
        )
        return self

    @property
    def structured(self) -> bool:
        return self.output_schema is not None or self.json_output

    @property
    def model_name(self) -> str:
        """The model a call asks for: ``model``, or the first endpoint's (see ``at``)."""
        if self.endpoints:
            return self.endpoints[0].model or self.model or ""
        return self.model or ""

    @property
    def call_base_url(self) -> str:
        return (self.endpoints[0].base_url or self.base_url) if self.endpoints else self.base_url

    def at(self, endpoint: OpenAIEndpoint) -> OpenAIAgentSpec:
        """This agent as it calls one of its endpoints."""
        return self.model_copy(
            update={
                "base_url": endpoint.base_url or self.base_url,
                "model": endpoint.model or self.model,
                "endpoints": (),
                "health": HealthCheck(url=endpoint.health_url) if endpoint.health_url else None,
            }
        )


AGENT_KINDS = ("python", "http", "openai")


def _agent_kind(value: Any) -> str:
    # ``kind`` may be left out for the original kind, python.
    if isinstance(value, dict):
        kind = value.get("kind", "python")
        return kind if isinstance(kind, str) else "python"
    return str(getattr(value, "kind", "python"))


AgentSpec = Annotated[
    Annotated[PythonAgentSpec, Tag("python")]
    | Annotated[HttpAgentSpec, Tag("http")]
    | Annotated[OpenAIAgentSpec, Tag("openai")],
    Discriminator(
        _agent_kind,
        custom_error_type="agent_kind",
        custom_error_message="kind must be python, http or openai",
    ),
]
_agent_spec = TypeAdapter[AgentSpec](AgentSpec)


def parse_agent(data: Any) -> AgentSpec:
    """One agent's spec (as stored, or as written in a team file), validated."""
    return _agent_spec.validate_python(data)


class MemoryRule(StrEnum):
    """How a write to a shared-memory key meets what is there."""

    LAST_WRITER = "last_writer"  # replaces it (the overwrite is recorded)
    APPEND = "append"  # adds the value to a list
    MERGE = "merge"  # merges a mapping into a mapping, key by key
    SUM = "sum"  # adds a number


Trigger = Annotated[str, Field(min_length=1, max_length=200)]


class HandoffRule(_Model):
    """Hand a step of agent ``from`` to agent ``to`` when its task matches the triggers
    (words or phrases, matched ignoring case and accents) with enough confidence."""

    model_config = ConfigDict(populate_by_name=True)

    from_agent: AgentName = Field(alias="from")
    to: AgentName
    triggers: Annotated[tuple[Trigger, ...], Field(min_length=1, max_length=100)]
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    reason: Text | None = None
    # Besides the task and the step's input, what the target is given: the outputs the
    # step could see, and the shared memory.
    pass_context: tuple[Literal["outputs", "memory"], ...] = ("outputs",)


class Aggregate(StrEnum):
    COLLECT = "collect"
    MAJORITY = "majority"
    PRIORITY = "priority"
    FIRST_SUCCESS = "first_success"
    REDUCER = "reducer"


class JoinSpec(_Model):
    """How a step joins the steps it depends on (its parents)."""

    aggregate: Aggregate = Aggregate.COLLECT
    # majority: vote over this field of each output (else over whole outputs); conflicts
    # are reported where parents give different values of it.
    field: Annotated[str, Field(max_length=200)] | None = None
    # priority: the first of these agents that succeeded wins (parents of agents not
    # listed rank after them).
    priority: Annotated[tuple[AgentName, ...], Field(max_length=MAX_AGENTS)] = ()
    # reducer: this agent receives every parent's result and gives the output.
    reducer: AgentName | None = None
    # A failed parent is part of the aggregate instead of skipping the join.
    tolerate_failures: bool = False
    # Run once this many parents completed (with tolerate_failures: gave any result); the
    # others are cancelled. Fails at once when too many failed for it to be met.
    quorum: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    # Run this many seconds after the first parent started its agent, with the results
    # so far; the others are cancelled.
    deadline: Seconds | None = None

    @model_validator(mode="after")
    def _strategy_fields(self) -> JoinSpec:
        if self.aggregate is Aggregate.PRIORITY and not self.priority:
            raise SpecProblem("priority", "aggregate: priority needs the ordered agent list")
        if self.aggregate is Aggregate.REDUCER and self.reducer is None:
            raise SpecProblem("reducer", "aggregate: reducer needs the reducer agent")
        if self.reducer is not None and self.aggregate is not Aggregate.REDUCER:
            raise SpecProblem("reducer", "only aggregate: reducer takes a reducer")
        return self


class ApprovalSpec(_Model):
    """A person must approve before the step goes on (``manage.py approve``)."""

    prompt: Text
    timeout: Seconds
    on_timeout: Literal["reject", "approve"] = "reject"
    # Who may decide (``approve --as``); empty: anyone.
    approvers: Annotated[tuple[AgentName, ...], Field(max_length=100)] = ()


class StepSpec(_Model):
    id: StepId
    # None only for a step that needs no agent of its own: a join (a reducer join's
    # agent is its reducer), or an approval gate.
    agent: AgentName | None = None
    task: Text | None = None
    after: Annotated[
        tuple[Annotated[str, Field(max_length=MAX_STEP_ID)], ...], Field(max_length=MAX_STEPS)
    ] = ()
    when: str | None = None
    # Bounds all attempts and waits of this step together, from its first start.
    deadline: Seconds | None = None
    heartbeat_timeout: Seconds | None = None
    # A map step: one delegation of ``agent`` per item of the list this CEL expression
    # gives (e.g. ``steps.split.output.files``); its output is their outputs in order.
    for_each: str | None = None
    # At most this many items in flight at once (default: all).
    max_parallel: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # A failed item leaves None in the output instead of failing the step.
    allow_failures: bool = False
    # A join of the steps it depends on: aggregation, quorum, deadline.
    join: JoinSpec | None = None
    # A person approves before the step runs (or, without an agent, before it completes).
    approval: ApprovalSpec | None = None

    @model_validator(mode="after")
    def _map_fields(self) -> StepSpec:
        if self.for_each is None and (self.max_parallel is not None or self.allow_failures):
            field = "max_parallel" if self.max_parallel is not None else "allow_failures"
            raise SpecProblem(field, "only a map step (one with for_each) takes it")
        agentless = self.approval is not None or self.join is not None
        if self.agent is None and not agentless:
            raise SpecProblem("agent", "required field is missing")
        reducer = self.join.reducer if self.join is not None else None
        if self.agent is not None and reducer is not None and self.agent != reducer:
            raise SpecProblem("agent", f"a reducer join's agent is its reducer, {reducer!r}")
        if self.for_each is not None and self.join is not None:
            raise SpecProblem("join", "a map step joins its items itself")
        return self

    @property
    def agent_name(self) -> str:
        """The agent, or what stands for it in records of a step that calls none."""
        if self.agent is not None:
            return self.agent
        if self.join is not None and self.join.reducer is not None:
            return self.join.reducer
        return APPROVAL_PSEUDO_AGENT if self.approval is not None else JOIN_PSEUDO_AGENT


# The agent recorded for steps that call none.
JOIN_PSEUDO_AGENT = "(join)"
APPROVAL_PSEUDO_AGENT = "(approval)"


class WorkflowSpec(_Model):
    strategy: Strategy
    steps: Annotated[tuple[StepSpec, ...], Field(min_length=1, max_length=MAX_STEPS)]

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """Each step's direct dependencies under this workflow's strategy."""
        return dependencies(self.strategy, self.steps)


class Budget(_Model):
    """The most an execution may spend on its calls, in USD and in tokens (in + out)."""

    max_cost_usd: Annotated[float, Field(gt=0, le=1e9)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=10**15)] | None = None

    def merged(self, override: Budget | None) -> Budget:
        """This budget with each limit ``override`` gives replacing it."""
        if override is None:
            return self
        return Budget(
            max_cost_usd=override.max_cost_usd
            if override.max_cost_usd is not None
            else self.max_cost_usd,
            max_tokens=override.max_tokens if override.max_tokens is not None else self.max_tokens,
        )


class ModelPrice(_Model):
    """USD per million tokens. Cached input defaults to the input price."""

    input: Annotated[float, Field(ge=0, le=1e6)]
    output: Annotated[float, Field(ge=0, le=1e6)]
    cached_input: Annotated[float, Field(ge=0, le=1e6)] | None = None


PriceTable = Annotated[dict[ModelName, ModelPrice], Field(max_length=MAX_AGENTS)]


class TeamSpec(_Model):
    name: Annotated[str, Field(min_length=1, max_length=MAX_TEAM_NAME)]
    description: Text | None = None
    budget: Budget | None = None
    # Its executions' priority, unless one is given at enqueue.
    priority: Priority = Priority.NORMAL
    # Prices of models this team's agents use, over the shipped table and settings'.
    prices: PriceTable = {}
    # Shared-memory keys and the rule each is written by (others: last_writer).
    memory: Annotated[
        dict[Annotated[str, Field(max_length=200)], MemoryRule], Field(max_length=1000)
    ] = {}
    handoffs: Annotated[tuple[HandoffRule, ...], Field(max_length=MAX_AGENTS)] = ()
    # Handoffs in a row from one step (A → B → C is 2).
    max_handoff_depth: Annotated[int, Field(ge=1, le=20)] = 3
    # Executions with the same key running at once (orchestration/capacity.py).
    concurrency: KeyedConcurrency | None = None
    agents: Annotated[
        dict[Annotated[AgentName, Field(pattern=AGENT_NAME_PATTERN)], AgentSpec],
        Field(min_length=1, max_length=MAX_AGENTS),
    ]
    workflow: WorkflowSpec

    @model_validator(mode="after")
    def _references_resolve(self) -> TeamSpec:
        self._check_fallbacks()
        steps = self.workflow.steps
        strategy = self.workflow.strategy
        # Before any expression compiles: together they must stay quick to compile.
        keyed = (self.concurrency.key,) if self.concurrency is not None else ()
        try:
            check_expression_budget(
                [*(e for s in steps for e in (s.when, s.for_each) if e is not None), *keyed]
            )
        except ConditionSyntaxError as exc:
            raise SpecProblem("workflow.steps", str(exc)) from None
        if self.concurrency is not None:
            self._check_key(self.concurrency.key)
        seen: dict[str, int] = {}
        for i, step in enumerate(steps):
            where = f"workflow.steps[{i}]"
            if step.id in seen:
                raise SpecProblem(
                    f"{where}.id", f"duplicate step id {step.id!r} (also steps[{seen[step.id]}])"
                )
            seen[step.id] = i
            if step.agent is not None and step.agent not in self.agents:
                known = ", ".join(sorted(self.agents))
                raise SpecProblem(
                    f"{where}.agent", f"unknown agent {step.agent!r} (defined: {known})"
                )
            if step.after and strategy not in (Strategy.DAG, Strategy.CONDITIONAL):
                raise SpecProblem(
                    f"{where}.after",
                    f"'after' needs strategy dag or conditional, not {strategy.value}",
                )
        for i, step in enumerate(steps):
            where = f"workflow.steps[{i}]"
            for target in step.after:
                if target not in seen:
                    raise SpecProblem(f"{where}.after", f"unknown step {target!r}")
                if target == step.id:
                    raise SpecProblem(f"{where}.after", f"step {step.id!r} depends on itself")
            if step.when is not None:
                self._check_expression(i, "when", step.when, seen)
            if step.for_each is not None:
                self._check_expression(i, "for_each", step.for_each, seen)
        deps = self.workflow.dependencies()
        cycle = find_cycle([s.id for s in steps], deps)
        if cycle:
            raise SpecProblem("workflow.steps", "dependency cycle: " + _cycle_text(cycle))
        self._check_joins(deps)
        return self

    def _check_joins(self, deps: dict[str, tuple[str, ...]]) -> None:
        agents_of = {s.id: s.agent_name for s in self.workflow.steps}
        for i, step in enumerate(self.workflow.steps):
            join = step.join
            if join is None:
                continue
            where = f"workflow.steps[{i}].join"
            parents = deps[step.id]
            if not parents:
                raise SpecProblem(where, "a join needs the steps it joins (after)")
            if join.quorum is not None and join.quorum > len(parents):
                raise SpecProblem(
                    f"{where}.quorum",
                    f"{join.quorum} exceeds the {len(parents)} steps it joins",
                )
            if join.reducer is not None and join.reducer not in self.agents:
                raise SpecProblem(f"{where}.reducer", f"unknown agent {join.reducer!r}")
            running = {agents_of[p] for p in parents}
            for name in join.priority:
                if name not in running:
                    raise SpecProblem(
                        f"{where}.priority",
                        f"agent {name!r} runs none of the steps it joins "
                        f"({', '.join(sorted(running))})",
                    )

    def _check_fallbacks(self) -> None:
        for name, agent in self.agents.items():
            where = f"agents.{name}"
            if agent.fallback is not None:
                if agent.fallback not in self.agents:
                    raise SpecProblem(f"{where}.fallback", f"unknown agent {agent.fallback!r}")
                if agent.fallback == name:
                    raise SpecProblem(f"{where}.fallback", "an agent cannot be its own fallback")
            if agent.breaker.when_open is WhenOpen.FALLBACK and agent.fallback is None:
                raise SpecProblem(
                    f"{where}.breaker.when_open", "'fallback' needs the agent's fallback set"
                )

    def _check_key(self, expression: str) -> None:
        try:
            compile_condition(expression)
        except ConditionSyntaxError as exc:
            raise SpecProblem("concurrency.key", str(exc)) from None
        if referenced_steps(expression):
            raise SpecProblem("concurrency.key", "a key is read from input only, before any step")

    def _check_expression(
        self, index: int, name: str, expression: str, ids: dict[str, int]
    ) -> None:
        where = f"workflow.steps[{index}].{name}"
        step_id = self.workflow.steps[index].id
        try:
            compile_condition(expression)
        except ConditionSyntaxError as exc:
            raise SpecProblem(where, str(exc)) from None
        strategy = self.workflow.strategy
        for ref in sorted(referenced_steps(expression)):
            if ref not in ids:
                raise SpecProblem(where, f"refers to unknown step {ref!r}")
            if ref == step_id:
                raise SpecProblem(where, f"a step's {name} cannot read its own result")
            if strategy is Strategy.PARALLEL:
                raise SpecProblem(
                    where, f"parallel steps run at once, so step {ref!r} has no result yet"
                )
            if strategy in (Strategy.SEQUENTIAL, Strategy.PIPELINE) and ids[ref] > index:
                raise SpecProblem(where, f"step {ref!r} runs later, so it has no result yet")

    @property
    def strategy(self) -> Strategy:
        return self.workflow.strategy

    @property
    def steps(self) -> tuple[StepSpec, ...]:
        return self.workflow.steps


def _cycle_text(cycle: list[str]) -> str:
    """A closed path (first step repeated at the end); a long one by its first steps only,
    so the error stays one short line."""
    text = " -> ".join(cycle)
    if len(cycle) <= 6 and len(text) <= 120:
        return text
    return f"{' -> '.join(cycle[:3])} -> … -> {cycle[-1]} ({len(cycle) - 1:,} steps)"
