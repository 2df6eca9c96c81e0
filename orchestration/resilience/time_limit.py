"""Per-attempt time limits that work in every pool, threads included.

Celery's soft time limits need signals and so only work in prefork children; an agent in
the embedded (threads) worker would hang forever. The call runs in a helper thread and is
abandoned at its limit: Python cannot kill a thread, but the attempt is recorded as timed
out and the delegation moves on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from orchestration.errors import AttemptTimeout

T = TypeVar("T")


def call_with_time_limit(function: Callable[[], T], seconds: float) -> T:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="troupe-agent-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AttemptTimeout(seconds)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
