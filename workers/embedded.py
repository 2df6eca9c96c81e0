"""A Celery worker inside the calling process, on the in-memory transport.

Used when no broker is configured: the same tasks, canvas and policies as a distributed
worker, with threads instead of processes so the in-memory broker is shared.
"""

from __future__ import annotations

import threading
import time

from celery import Celery

from orchestration.errors import TroupeError


class EmbeddedWorker:
    def __init__(self, app: Celery, queue: str, concurrency: int) -> None:
        self._app = app
        self._queue = queue
        self._concurrency = concurrency
        self._thread: threading.Thread | None = None
        self._controller: object | None = None
        self._beat: object | None = None
        self._ready = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        import workers.tasks  # noqa: F401  (registers the tasks with the app)

        self._app.set_default()
        ready = self._ready

        class Controller(self._app.WorkController):  # type: ignore[name-defined,misc]
            # Celery calls this once the consumer listens; the worker_ready signal is only
            # sent by the command-line worker, not by a bare WorkController.
            def on_consumer_ready(self, consumer: object) -> None:
                ready.set()

        controller = Controller(
            pool="threads",
            concurrency=self._concurrency,
            queues=[self._queue],
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            hostname=f"embedded@{threading.get_native_id()}",
        )
        self._controller = controller
        self._thread = threading.Thread(
            target=controller.start, name="troupe-embedded-worker", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise TroupeError("the embedded worker did not start")
        self._start_beat()

    def _start_beat(self) -> None:
        # Beat in a thread of this process: a forked beat would publish into its own copy
        # of the in-memory broker, and nothing would ever arrive here.
        from celery.beat import EmbeddedService

        # The service takes its scheduler class as an argument, not from the app's
        # beat_scheduler: without it, a persistent schedule file lands in the cwd.
        beat = EmbeddedService(self._app, thread=True, scheduler_cls=self._app.conf.beat_scheduler)
        beat.daemon = True
        beat.start()
        self._beat = beat

    def stop(self) -> None:
        beat = self._beat
        if beat is not None:
            beat.stop()  # type: ignore[attr-defined]
            self._beat = None
        controller = self._controller
        if controller is not None:
            controller.stop(in_sighandler=False)  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(5)
        self._thread = None
        self._controller = None
