"""A local chat-completions server for the ``llm`` benchmark, in a process of its own.

    python -m bench.openai_server --delay 1.0

It is the test suite's server (``tests/support/openai_server.py``) answering every
request "ok" after ``--delay`` seconds. It runs apart from the benchmark process so that
its thread per connection (a thousand at once) does not compete for one interpreter's
lock with the client that times the runs. It prints its base URL as the first line on
stdout, then answers one line per command read on stdin:

- ``reset``: forget the requests seen so far; prints ``{}``.
- ``stats``: prints one JSON object about the requests since the last reset: how many
  were served, the most in flight at once, and when the first, median and last arrived
  (``time.time()``: the benchmark subtracts its own start).

It exits when stdin closes (the benchmark process ended, or stopped it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import Any, cast

from tests.support.openai_server import OpenAIServer, Reply, Request


class _Replies:
    """The reply to every request, noting arrivals and the number in flight."""

    def __init__(self, delay: float) -> None:
        self._delay = delay
        self._reply = Reply.text("ok", prompt_tokens=12, completion_tokens=1)
        self._lock = threading.Lock()
        self._arrivals: list[float] = []
        self._in_flight = 0
        self._peak = 0

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            self._arrivals.append(time.time())
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        try:
            # Waited here rather than as the Reply's delay, so that the count in flight
            # covers the wait.
            time.sleep(self._delay)
        finally:
            with self._lock:
                self._in_flight -= 1
        return self._reply

    def reset(self) -> None:
        with self._lock:
            self._arrivals = []
            self._peak = self._in_flight

    def stats(self) -> dict[str, Any]:
        with self._lock:
            arrivals = sorted(self._arrivals)
            peak = self._peak
        return {
            "served": len(arrivals),
            "peak_in_flight": peak,
            "first_arrival": arrivals[0] if arrivals else None,
            "median_arrival": statistics.median(arrivals) if arrivals else None,
            "last_arrival": arrivals[-1] if arrivals else None,
        }


def _no_delay(server: OpenAIServer) -> None:
    """Send each reply as soon as it is written (TCP_NODELAY), as production servers do.

    The test server writes a reply's headers and its body in two writes; with Nagle's
    algorithm the body then waits for the client's delayed ACK of the headers, ~40 ms
    on Linux, which would add to every call on both sides."""
    httpd = server._httpd
    handler: type[Any] = cast(type, httpd.RequestHandlerClass)
    httpd.RequestHandlerClass = type(
        "NoDelayHandler", (handler,), {"disable_nagle_algorithm": True}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_server")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before each reply")
    args = parser.parse_args(argv)
    replies = _Replies(args.delay)
    server = OpenAIServer(default=replies, record=False)
    _no_delay(server)
    with server:
        print(server.base_url, flush=True)
        for line in sys.stdin:
            command = line.strip()
            if command == "reset":
                replies.reset()
                answer: dict[str, Any] = {}
            elif command == "stats":
                answer = replies.stats()
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
