"""Peaks sampled while a run goes on: how many PostgreSQL connections a worker holds, and
the resident memory of its processes.

A worker's connections are told apart by the ``application_name`` its database URL
carries (``tagged_url``); PostgreSQL shows it in ``pg_stat_activity``. Sampling runs in a
thread of the benchmark process, every 20 ms, on one connection of its own.
"""

from __future__ import annotations

import threading
from types import TracebackType

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.cluster import PAGE_KIB, Process, vm_rss_kib

SAMPLE_EVERY = 0.02


def tagged_url(database_url: str, application: str) -> str:
    """``database_url`` with ``?application_name=<application>`` (libpq passes it on)."""
    url = make_url(database_url).update_query_dict({"application_name": application})
    return url.render_as_string(hide_password=False)


class PeakWatch:
    """Highest connection count (of ``application``, when given) and highest summed RSS
    of ``processes`` (every process of each group, found when the watch starts)."""

    def __init__(
        self, database_url: str, processes: list[Process], application: str | None = None
    ) -> None:
        self._engine = create_engine(database_url, poolclass=NullPool)
        self._application = application
        # Resolved once: listing /proc every 20 ms would cost the machine being measured.
        # The pools measured here (threads) do not fork after start.
        self._pids = [pid for process in processes for pid in process.group_pids()]
        self.peak_connections = 0
        self.peak_rss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-peak-watch", daemon=True)

    @property
    def peak_rss_mib(self) -> float:
        return round(self.peak_rss_kib / PAGE_KIB, 1)

    def __enter__(self) -> PeakWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()

    def _run(self) -> None:
        count = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a")
        with self._engine.connect() as connection:
            while True:
                if self._application is not None:
                    held = connection.execute(count, {"a": self._application}).scalar()
                    # Each sample is its own transaction: pg_stat_activity is a
                    # snapshot taken once per transaction.
                    connection.rollback()
                    self.peak_connections = max(self.peak_connections, int(held or 0))
                rss = sum(vm_rss_kib(pid) or 0 for pid in self._pids)
                self.peak_rss_kib = max(self.peak_rss_kib, rss)
                self.samples += 1
                if self._stop.wait(SAMPLE_EVERY):
                    break
