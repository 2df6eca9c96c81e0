"""The process-wide runtime: settings, state store, Celery app, and in embedded mode the
in-process worker. Created on first use so importing Troupe connects to nothing."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestration.client.handle import ExecutionHandle
from orchestration.errors import NoWorkerError
from orchestration.settings import Settings, get_settings
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

    def ensure_worker(self) -> None:
        """Embedded: start the in-process worker. Distributed: check that one answers."""
        if self.settings.embedded:
            if self.worker is None:
                from workers.embedded import EmbeddedWorker

                self.worker = EmbeddedWorker(
                    self.app, self.settings.queue, self.settings.worker_concurrency
                )
            self.worker.start()
            return
        if not self.workers_answering():
            raise NoWorkerError(
                f"no worker answers on {self.safe_broker_url()} (queue "
                f"{self.settings.queue!r}); start one with `python manage.py worker`"
            )

    def workers_answering(self, timeout: float = 1.5) -> bool:
        """Does some worker consume our queue? Any worker on the broker answers a ping,
        whatever it consumes, so ask for queues; the first reply usually settles it."""
        control = self.app.control
        first = control.broadcast("active_queues", reply=True, limit=1, timeout=timeout)
        if _consumes(first, self.settings.queue):
            return True
        if not first:
            return False
        everyone = control.broadcast("active_queues", reply=True, timeout=1.0)
        return _consumes(everyone, self.settings.queue)

    def revoke(self, task_ids: list[str]) -> None:
        # Revoked ids live only in running workers' memory; the database check each
        # delegation makes is what actually holds. This just spares queued messages.
        self.app.control.revoke(task_ids)

    def handle(self, execution_id: str) -> ExecutionHandle:
        return ExecutionHandle(
            execution_id,
            self.executions,
            self.settings.poll_interval,
            revoke=self.revoke,
            memory=self.memory,
        )

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


def embedded_worker_running() -> bool:
    return _runtime is not None and _runtime.worker is not None and _runtime.worker.running


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            settings = get_settings()
            url = settings.effective_database_url
            # The embedded SQLite file is ours to create; a shared PostgreSQL is migrated
            # by its operator (`manage.py db upgrade`).
            ensure_schema(url, auto_upgrade=settings.embedded or url.startswith("sqlite"))
            from workers.app import app

            store = Store(url, connections=settings.db_connections)
            _runtime = Runtime(
                settings=settings,
                store=store,
                executions=ExecutionRecords(store),
                memory=MemoryRecords(store),
                app=app,
            )
        return _runtime
