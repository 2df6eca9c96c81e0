"""The runtime: settings, state store, Celery app, and in embedded mode the in-process
worker.

A runtime is made from a ``Settings`` object given explicitly (``Runtime.from_settings``;
the CLI makes its own from the settings it read at its entry). The client's calls that are
given none use this process's default runtime, made on first use from the settings given
to :func:`configure`, else from ``TROUPE_*`` environment variables, read then, once. So
importing Troupe reads nothing and connects to nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestration.client.handle import ExecutionHandle
from orchestration.errors import BrokerUnavailable, NoWorkerError
from orchestration.settings import Settings
from orchestration.spec import TeamSpec
from orchestration.store.database import ensure_schema
from orchestration.store.executions import ExecutionRecords
from orchestration.store.memory import MemoryRecords
from orchestration.store.repository import Store

if TYPE_CHECKING:
    from celery import Celery

    from workers.embedded import EmbeddedWorker


@dataclass
class Runtime:
    settings: Settings
    store: Store
    # The client's reads and writes of executions, on ``store``.
    executions: ExecutionRecords
    # The reads of executions' shared memory and messages, on ``store``.
    memory: MemoryRecords
    app: Celery
    worker: EmbeddedWorker | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        """A runtime on ``settings``: their state database, and Troupe's Celery app
        configured from them. The app is one per process (workers/app.py): every runtime
        of a process must have the same settings (TroupeError otherwise)."""
        from workers.app import app, configure_app

        # First: an app that already runs with other settings refuses them, before any
        # database is touched.
        configure_app(settings)
        url = settings.effective_database_url
        # The embedded SQLite file is ours to create; a shared PostgreSQL is migrated
        # by its operator (`manage.py db upgrade`).
        ensure_schema(url, auto_upgrade=settings.embedded or url.startswith("sqlite"))
        store = Store(url, connections=settings.db_connections)
        return cls(
            settings=settings,
            store=store,
            executions=ExecutionRecords(store),
            memory=MemoryRecords(store),
            app=app,
        )

    def ensure_worker(self, queues: Iterable[str] = ()) -> None:
        """Embedded: start the in-process worker (it serves every queue).
        Distributed: check that some worker consumes Troupe's queue and each of
        ``queues`` (those a team's agents name)."""
        if self.settings.embedded:
            if self.worker is None:
                from workers.embedded import EmbeddedWorker

                self.worker = EmbeddedWorker(
                    self.app, self.settings.queue, self.settings.worker_concurrency
                )
            self.worker.start()
            return
        self.ensure_broker()
        wanted = [self.settings.queue, *(q for q in queues if q != self.settings.queue)]
        missing = self.unserved(wanted)
        if self.settings.queue in missing:
            raise NoWorkerError(
                f"no worker answers on {self.safe_broker_url()} (queue "
                f"{self.settings.queue!r}); start one with `python manage.py worker`"
            )
        if missing:
            names = ",".join(missing)
            raise NoWorkerError(
                f"no worker on {self.safe_broker_url()} serves queue(s) {names} that this "
                f"team's agents name; start one with `python manage.py worker --queues {names}`"
            )

    def ensure_broker(self) -> None:
        """Distributed: BrokerUnavailable, naming the broker, if it does not answer within
        seconds (Celery's own calls would retry it for longer, then fail obscurely)."""
        if self.settings.embedded:
            return
        from workers.app import check_broker

        check_broker(self.app)

    def workers_answering(self, timeout: float = 1.5) -> bool:
        """Does some worker consume our queue?"""
        return not self.unserved([self.settings.queue], timeout)

    def unserved(self, queues: list[str], timeout: float = 1.5) -> list[str]:
        """Those of ``queues`` no worker consumes. Any worker on the broker answers a
        ping, whatever it consumes, so ask for queues; the first reply usually settles
        it."""
        control = self.app.control
        first = control.broadcast("active_queues", reply=True, limit=1, timeout=timeout)
        missing = [queue for queue in queues if not _consumes(first, queue)]
        if not missing or not first:
            return missing
        everyone = control.broadcast("active_queues", reply=True, timeout=1.0)
        return [queue for queue in missing if not _consumes(everyone, queue)]

    def revoke(self, task_ids: list[str]) -> None:
        # Revoked ids live only in running workers' memory; the database check each
        # delegation makes is what actually holds. This just spares queued messages, so
        # a broker out of reach is no reason to fail (or to wait for it).
        try:
            self.ensure_broker()
        except BrokerUnavailable:
            return
        self.app.control.revoke(task_ids)

    def handle(self, execution_id: str) -> ExecutionHandle:
        return ExecutionHandle(
            execution_id,
            self.executions,
            self.settings.poll_interval,
            revoke=self.revoke,
            sender=self,
            memory=self.memory,
        )

    def cannot_send_steps(self) -> str | None:
        """Why a step sent from this process would reach no worker, if so: in embedded
        mode the broker lives in memory, in the process whose worker runs the execution."""
        if self.settings.embedded and (self.worker is None or not self.worker.running):
            return (
                "embedded mode: only the process that runs the execution can send its "
                "steps on (decide there, with ExecutionHandle.approve); with a broker "
                "(TROUPE_BROKER_URL), any process can"
            )
        return None

    def send_step(self, execution_id: str, step_id: str, agent: str, attempt: int) -> None:
        from workers.publish import Routing, delegation_message, publish

        # To the agent's queue, at the execution's priority: both are in its stored spec.
        spec = TeamSpec.model_validate(self.executions.execution(execution_id).spec)
        route = Routing.for_settings(self.settings).step(spec.agents.get(agent), spec.priority)
        message = delegation_message(execution_id, step_id, agent, route, attempt)
        publish(self.app, [message])

    def safe_broker_url(self) -> str:
        from workers.app import safe_broker_url

        return safe_broker_url(self.settings.effective_broker_url)

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def _consumes(replies: list[dict[str, list[dict[str, object]]]] | None, queue: str) -> bool:
    for reply in replies or []:
        for queues in reply.values():
            if any(entry.get("name") == queue for entry in queues or []):
                return True
    return False


_settings: Settings | None = None
_runtime: Runtime | None = None
_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Make ``settings`` this process's default, in place of the ``TROUPE_*``
    environment: what ``Team`` and ``execution`` use when given no settings or runtime,
    and what Troupe's Celery app runs with. Call it before Troupe is first used (once the
    app runs with other settings, TroupeError)."""
    global _settings, _runtime
    from workers.app import configure_app

    with _lock:
        if settings == _settings:
            return
        configure_app(settings)
        # A runtime made earlier never used the app (which then refuses new settings).
        _settings, _runtime = settings, None


def default_settings() -> Settings:
    """This process's default settings: those given to :func:`configure`, else the
    ``TROUPE_*`` environment's, read on the first call."""
    with _lock:
        return _default_settings()


def get_runtime() -> Runtime:
    """This process's default runtime, made from :func:`default_settings` on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(_default_settings())
        return _runtime


def shutdown() -> None:
    """Stop the embedded worker of this process's default runtime, if one was made."""
    with _lock:
        runtime = _runtime
    if runtime is not None:
        runtime.shutdown()


def _default_settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = Settings()
    return _settings
