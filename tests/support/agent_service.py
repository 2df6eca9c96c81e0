"""A local HTTP agent service for tests: real HTTP on 127.0.0.1, scripted per path.

Tests script what each path answers (status, headers, body, delay), in order, the last
reply repeating; a reply may also be a function of the request (to echo an item back).
Every request is recorded with its headers, body and arrival time (``time.monotonic`` of
this process, so a test can measure the gap between a call and its retry), and the POSTs
being answered at once are counted (``max_in_flight``). ``GET /health`` answers 200
while ``healthy`` is set, 503 otherwise.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HEALTH_PATH = "/health"


@dataclass(frozen=True)
class Recorded:
    """One request as the service received it."""

    method: str
    path: str
    # Header names lower-cased (HTTP's are case-insensitive).
    headers: dict[str, str]
    body: bytes
    # When it arrived, on this process's monotonic clock.
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What the service answers. ``json`` (any JSON value) or ``body`` (raw) is sent."""

    status: int = 200
    json: Any = None
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before answering (cut short when the service stops).
    delay: float = 0.0

    def content(self) -> tuple[bytes, str]:
        if self.body is not None:
            raw = self.body.encode() if isinstance(self.body, str) else self.body
            return raw, "text/plain; charset=utf-8"
        return json.dumps(self.json).encode(), "application/json"


def output(value: Any, **extra: Any) -> Reply:
    """A successful reply carrying ``value`` as the agent's output."""
    return Reply(json={"output": value, **extra})


Script = Reply | Callable[[Recorded], Reply]


class AgentService:
    """Start with ``with AgentService() as service:`` (or start/stop)."""

    def __init__(self) -> None:
        self._scripts: dict[str, list[Script]] = {}
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self.healthy = True
        # POSTs being answered right now, and the most there ever were at once.
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # Handler threads may be sleeping through a scripted delay: stop() must not wait.
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> AgentService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> AgentService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- scripting and recording -------------------------------------------------------

    def script(self, path: str, *replies: Script) -> str:
        """Answer ``path`` with ``replies`` in turn, the last one from then on. Returns
        the path's URL."""
        if not replies:
            raise ValueError("script at least one reply")
        with self._lock:
            self._scripts[path] = list(replies)
        return self.url(path)

    def requests(self, path: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if path is None or r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Recorded]:
        """The first ``count`` requests to ``path``, once they have arrived."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                seen = [r for r in self._requests if r.path == path]
                if len(seen) >= count:
                    return seen[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{path}: {len(seen)} request(s) within {timeout:g}s, not {count}"
                    )
                self._arrived.wait(left)

    def _answer(self, request: Recorded) -> Reply:
        with self._lock:
            self._requests.append(request)
            self._arrived.notify_all()
            if request.method == "GET" and request.path == HEALTH_PATH:
                return Reply(200 if self.healthy else 503, json={"healthy": self.healthy})
            script = self._scripts.get(request.path)
            if script is None:
                return Reply(404, body=f"no script for {request.path}")
            step = script.pop(0) if len(script) > 1 else script[0]
        return step(request) if callable(step) else step

    # --- HTTP --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as a real service: the adapter's pooled connections are reused.
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._send(service._answer(self._received(b"")))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received = self._received(self.rfile.read(length))
                with service._lock:
                    service.in_flight += 1
                    service.max_in_flight = max(service.max_in_flight, service.in_flight)
                try:
                    self._send(service._answer(received))
                finally:
                    with service._lock:
                        service.in_flight -= 1

            def _received(self, body: bytes) -> Recorded:
                return Recorded(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.monotonic(),
                )

            def _send(self, reply: Reply) -> None:
                if reply.delay and service._stopping.wait(reply.delay):
                    self.close_connection = True
                    return
                content, content_type = reply.content()
                # The client may have given up (its timeout) while we waited.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # quiet: the recorded requests are the log

        return Handler


@contextlib.contextmanager
def agent_service() -> Iterator[AgentService]:
    with AgentService() as service:
        yield service
