"""One typed settings object: ``Settings()`` reads ``TROUPE_*`` environment variables,
keyword arguments override them.

Troupe never reads them at import. Whoever starts Troupe makes one object and passes it
down: the CLI at its entry, the client through ``Runtime.from_settings`` or
``configure``, a worker through ``workers.app.configure_app``. Only where none was given
(the client's default runtime, a Celery app started by ``celery -A``) is the environment
read, on first use.

With no broker configured Troupe runs *embedded*: Celery's in-memory transport, a worker
thread inside the calling process, and SQLite state under ``state_dir``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestration.constants import DEFAULT_QUEUE
from orchestration.spec import ModelPrice

EMBEDDED_BROKER_URL = "memory://localhost/"
EMBEDDED_RESULT_BACKEND = "cache+memory://"
# kombu's names for the AMQP 0-9-1 transport (py-amqp; librabbitmq is its C twin).
RABBITMQ_SCHEMES = frozenset({"amqp", "amqps", "pyamqp", "librabbitmq"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TROUPE_", extra="ignore")

    broker_url: str | None = Field(
        default=None, description="Celery broker URL; unset means embedded mode."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend; defaults to the broker when it is Redis."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for cluster-wide limits and routing; defaults to a Redis broker.",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the state database; defaults to SQLite."
    )
    state_dir: Path = Field(default=Path(".troupe"))
    queue: str = DEFAULT_QUEUE
    # Above the longest agent time limit plus the longest backoff delay: a message held
    # longer than this is redelivered while the first copy still runs. RabbitMQ has no
    # visibility timeout: see consumer_timeout.
    visibility_timeout: float = 3600.0
    # RabbitMQ's own consumer_timeout, in seconds (rabbitmq.conf has it in milliseconds;
    # 30 min by default). Troupe cannot read it from the broker: change both together.
    # RabbitMQ closes the channel of a worker that holds a message unacknowledged longer,
    # and delivers its messages again.
    consumer_timeout: float = Field(default=1800.0, gt=0)
    heartbeat_interval: float = Field(default=30.0, gt=0)
    # Every worker reaps this often (beat's schedule too): with the lease below, a step
    # whose worker was killed is resumed within about 15 + 10 seconds.
    reap_interval: float = Field(default=10.0, gt=0)
    # A running attempt renews its lease this often; one silent for 3 intervals is lost.
    lease_interval: float = Field(default=5.0, gt=0)
    # An attempt still running after this long is recorded as started and its lease
    # begins; a faster one is recorded once, when it ends (one write instead of two).
    # A worker that dies inside this window leaves no marker: the message's redelivery
    # or the stall check recovers the step, as for a message lost before it started.
    lease_after: float = Field(default=0.05, ge=0)
    # An unfinished execution with nothing running, waiting or queued for this long is
    # resumed by the reaper (its messages were lost with a broker or a worker).
    stall_timeout: float = Field(default=120.0, gt=0)
    # Starvation's bound: a step of a below-critical execution in which nothing has
    # started or ended for this long is sent again above every priority (the reaper
    # promotes it; workers/reaper.py).
    max_wait: float = Field(default=300.0, gt=0)
    # kombu re-queues a dead worker's unacknowledged messages once they are older than
    # the visibility timeout; scan for them this often (kombu's default is ~100 s).
    unacked_restore_interval: float = Field(default=2.0, gt=0)
    # Each worker remembers a closed breaker this long (0 disables): the gate then costs
    # no database read. Another worker's opening is seen within this time.
    breaker_cache_ttl: float = Field(default=0.25, ge=0)
    worker_concurrency: int = 2
    # The most database connections one worker process opens, whatever its pool's
    # concurrency: a threads pool of 1,000 shares them (each statement holds one for
    # its round trip only; no agent call holds one while it waits).
    db_connections: int = Field(default=20, ge=2, le=1000)
    # A delegation that makes steps ready runs one of them itself, without a broker
    # round trip, up to this many in a row per message (0: publish everything), and
    # only while the message has been held less than ``eager_window`` seconds. The
    # rest are published. An eagerly run step is as recoverable as a published one: the
    # message that led to it stays unacknowledged until it is decided.
    eager_steps: int = Field(default=16, ge=0, le=10_000)
    eager_window: float = Field(default=5.0, ge=0)
    # Workers send task events from the start. Off by default, as in Celery: publishing
    # three events per delegation took ~40% of a busy worker's main process, and Flower
    # switches them on in every worker (every 5 s) while it runs.
    task_events: bool = False
    # Flower's basic auth, "user:password" (several: comma-separated), for
    # `manage.py flower`; docker-compose.yml passes it through. Unset: no auth.
    flower_basic_auth: str | None = None
    # Embedded mode polls the in-memory queue; kombu's default of 1 s makes every hop slow.
    embedded_polling_interval: float = 0.01
    poll_interval: float = 0.1
    # Model prices over the shipped table (orchestration/pricing.py), as JSON:
    # TROUPE_PRICES='{"my-model": {"input": 0.5, "output": 1.5}}' (USD per 1M tokens).
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    @property
    def lease_ttl(self) -> float:
        return 3 * self.lease_interval

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or EMBEDDED_BROKER_URL

    @property
    def broker_is_rabbitmq(self) -> bool:
        scheme = self.effective_broker_url.partition("://")[0].lower()
        return scheme in RABBITMQ_SCHEMES

    @property
    def effective_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        if self.embedded:
            return EMBEDDED_RESULT_BACKEND
        # Troupe reads no task results (status comes from its own tables): with no Redis
        # to keep them in, keep none rather than a per-process cache no one else reads.
        return "disabled"

    @property
    def effective_redis_url(self) -> str | None:
        """Where agents' endpoints and limits are counted: ``redis_url``, else the
        broker's Redis; None without either (embedded: counted in the process)."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'troupe.db').resolve()}"
