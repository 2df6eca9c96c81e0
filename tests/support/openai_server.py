"""A local server speaking OpenAI's chat-completions protocol over real HTTP, for tests.

Each test scripts the replies it wants, in order, and reads back the requests the server
got (headers and JSON bodies)::

    with OpenAIServer() as server:
        server.script(Reply.tool_call("add", {"a": 1}), Reply.text("done"))
        ...  # an agent with base_url=server.base_url
        assert server.requests[1].body["messages"][-1]["role"] == "tool"

A reply may be text, JSON, tool calls, an HTTP error (status, body, headers), a dropped
connection, or a function of the request; any of them after a delay. ``script_for``
keeps a queue per model name, for steps that run at the same time. With nothing
scripted, the server answers ``default`` (settable: a benchmark's 1,000 calls all get
one reply after a fixed delay), or, without one, a 400 saying so, which fails the
test's step at once instead of leaving it to retry.
"""

from __future__ import annotations

import collections
import itertools
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ReplyFunction = Callable[["Request"], "Reply"]


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: Any
    # time.monotonic() when it arrived, to measure waits between requests.
    received_at: float = 0.0

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []

    def text(self) -> str:
        """Every message's content, one after another (for "the prompt contains")."""
        return "\n".join(str(m.get("content") or "") for m in self.messages)


@dataclass(frozen=True)
class Reply:
    content: str | None = None
    tool_calls: tuple[tuple[str, str], ...] = ()
    finish_reason: str | None = None
    status: int = 200
    error: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    disconnect: bool = False
    model: str | None = None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    usage: bool = True

    @classmethod
    def text(cls, content: str, **kwargs: Any) -> Reply:
        return cls(content=content, **kwargs)

    @classmethod
    def json(cls, value: Any, **kwargs: Any) -> Reply:
        return cls(content=json.dumps(value), **kwargs)

    @classmethod
    def tool_call(cls, name: str, arguments: Any, **kwargs: Any) -> Reply:
        return cls.tool_calls_of((name, arguments), **kwargs)

    @classmethod
    def tool_calls_of(cls, *calls: tuple[str, Any], **kwargs: Any) -> Reply:
        """Several tool calls in one reply; a str argument is sent as it is (to send
        arguments that are not JSON)."""
        encoded = tuple(
            (name, args if isinstance(args, str) else json.dumps(args)) for name, args in calls
        )
        return cls(tool_calls=encoded, **kwargs)

    @classmethod
    def failure(
        cls,
        status: int,
        message: str = "error",
        *,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Reply:
        """An HTTP error with OpenAI's error body."""
        error = {"message": message, "type": type, "param": None, "code": code}
        return cls(status=status, error=error, headers=dict(headers or {}), **kwargs)

    @classmethod
    def dropped(cls, **kwargs: Any) -> Reply:
        """The connection is closed with no reply at all."""
        return cls(disconnect=True, **kwargs)


class OpenAIServer:
    """ThreadingHTTPServer on 127.0.0.1, an ephemeral port, a thread of its own."""

    def __init__(self, *, default: Reply | ReplyFunction | None = None, record: bool = True):
        self.default = default
        self.record = record
        self._queue: collections.deque[Reply | ReplyFunction] = collections.deque()
        self._by_model: dict[str, collections.deque[Reply | ReplyFunction]] = {}
        self._requests: list[Request] = []
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        self.served = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        # shutdown() waits for the loop's next poll: the default 0.5 s per test adds up.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="openai-test-server",
            daemon=True,
        )

    # --- lifecycle ---

    def start(self) -> OpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- scripting ---

    def script(self, *replies: Reply | ReplyFunction) -> None:
        """Replies for the next requests, in order, whatever model they name."""
        with self._changed:
            self._queue.extend(replies)

    def script_for(self, model: str, *replies: Reply | ReplyFunction) -> None:
        """Replies for the next requests naming ``model``, in order."""
        with self._changed:
            self._by_model.setdefault(model, collections.deque()).extend(replies)

    def pending(self) -> int:
        with self._changed:
            return len(self._queue) + sum(len(q) for q in self._by_model.values())

    # --- what was asked ---

    @property
    def requests(self) -> list[Request]:
        with self._changed:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Request]:
        """The requests once at least ``count`` have arrived; AssertionError at the
        deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self._requests)} requests arrived within {timeout}s, "
                        f"expected {count}"
                    )
                self._changed.wait(left)
            return list(self._requests)

    # --- serving ---

    def _next_reply(self, request: Request) -> Reply:
        model = request.body.get("model") if isinstance(request.body, dict) else None
        with self._changed:
            if self.record:
                self._requests.append(request)
            self.served += 1
            self._changed.notify_all()
            own = self._by_model.get(model) if isinstance(model, str) else None
            if own:
                chosen: Reply | ReplyFunction | None = own.popleft()
            elif self._queue:
                chosen = self._queue.popleft()
            else:
                chosen = self.default
        if chosen is None:
            return Reply.failure(400, "openai_server: no reply scripted", code="unscripted")
        return chosen(request) if callable(chosen) else chosen

    def _completion(self, reply: Reply, request: Request) -> dict[str, Any]:
        number = next(self._ids)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{number}_{index}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for index, (name, arguments) in enumerate(reply.tool_calls)
            ]
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        body = request.body if isinstance(request.body, dict) else {}
        completion: dict[str, Any] = {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or body.get("model", "unknown"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        if reply.usage:
            usage: dict[str, Any] = {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            }
            if reply.cached_tokens is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
            if reply.reasoning_tokens is not None:
                usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
            completion["usage"] = usage
        return completion


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A benchmark opens ~1,000 connections at once; the default backlog of 5 would
    # drop most of them for a second.
    request_queue_size = 1024
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its time-out) before a delayed reply is not a fault.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, as the client's pool expects.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.path, headers, body, time.monotonic())
        owner = self.server.owner
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "code": None}})
            return
        reply = owner._next_reply(request)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.disconnect:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.status != 200:
            self._send(reply.status, {"error": dict(reply.error or {})}, reply.headers)
            return
        self._send(200, owner._completion(reply, request), reply.headers)

    def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def running(**kwargs: Any) -> Iterator[OpenAIServer]:
    """A started server for a pytest fixture: ``yield from running()``."""
    server = OpenAIServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
