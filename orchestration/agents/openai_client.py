"""The ``openai`` client an ``openai`` agent calls through, and how its errors read.

One HTTP connection pool per process serves every OpenAI-compatible endpoint: a worker's
threads pool may hold a thousand calls in flight, and a client (with its pool) per call
would open a connection per call and never reuse one. ``openai.OpenAI`` objects are thin
and hold the key, so there is one per (base_url, key) over that shared pool. Their own
retries are off: Troupe's retry policy, with its backoff, deadline and breaker, is the
only one, and a client that retried by itself would hide the attempts from it.

The installed SDK's transport is httpx2, not the httpx of Troupe's http kind: the pool
is an httpx2 client, as the SDK's own default would be.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from email.utils import parsedate_to_datetime

import httpx2
import openai

from orchestration.agents.secrets import redact
from orchestration.errors import AgentError, PermanentAgentError, TransientAgentError

# Connections kept open for reuse: enough for a threads pool of ~1,000 calls in flight
# to one endpoint. No cap on connections in use: the pool's threads bound them, and a
# cap would make calls queue for a connection inside their own time limit.
KEEPALIVE_CONNECTIONS = 1024
KEEPALIVE_SECONDS = 30.0
# Clients (one per endpoint and key) kept; an evicted one is only dropped, never closed,
# since it shares the pool.
MAX_CLIENTS = 64
# What an error message quotes of a server's reply.
_MAX_DETAIL = 500

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_WORDS = ("context length", "context_length", "context window", "too many tokens")
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


class _Clients:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: httpx2.Client | None = None
        self._clients: OrderedDict[tuple[str, str], openai.OpenAI] = OrderedDict()
        # A forked child inherits the parent's pool, its sockets shared with the parent
        # (and TLS state that must not be written from two processes): it starts afresh
        # and leaves the parent's objects alone (closing them would close the parent's
        # connections too).
        os.register_at_fork(after_in_child=self._forget)

    def get(self, base_url: str, api_key: str) -> openai.OpenAI:
        key = (base_url, api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                self._clients.move_to_end(key)
                return client
            if self._http is None:
                self._http = openai.DefaultHttpxClient(
                    limits=httpx2.Limits(
                        max_connections=None,
                        max_keepalive_connections=KEEPALIVE_CONNECTIONS,
                        keepalive_expiry=KEEPALIVE_SECONDS,
                    )
                )
            client = openai.OpenAI(
                api_key=api_key, base_url=base_url, max_retries=0, http_client=self._http
            )
            self._clients[key] = client
            if len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
            return client

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._http = None
        self._clients = OrderedDict()


_clients = _Clients()


def client_for(base_url: str, api_key: str) -> openai.OpenAI:
    """The process's client for this endpoint and key (cheap after the first call)."""
    return _clients.get(base_url, api_key)


def translate(exc: openai.OpenAIError, endpoint: str) -> AgentError:
    """An SDK error as the Troupe error that says whether retrying can help.

    Transient: rate limits (with the server's Retry-After), 408, 409, 5xx, time-outs and
    lost connections. Permanent, with a message that says which: a prompt over the
    model's context length, a content filter, a key refused (401/403), an exhausted
    quota, and any other 4xx. Every message is scrubbed of secrets.
    """
    if isinstance(exc, openai.APITimeoutError):
        return TransientAgentError(_clean(f"request to {endpoint} timed out"))
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        reason = f": {type(cause).__name__}: {cause}" if cause else ""
        return TransientAgentError(_clean(f"cannot reach {endpoint}{reason}"))
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc)
    if isinstance(exc, openai.APIResponseValidationError):
        return PermanentAgentError(_clean(f"{endpoint} replied with an unusable body: {exc}"))
    return PermanentAgentError(_clean(f"{type(exc).__name__}: {exc}"))


def _status_error(exc: openai.APIStatusError) -> AgentError:
    status = exc.status_code
    code = (exc.code or "").lower()
    detail = _detail(exc)
    where = f"HTTP {status}" + (f" {exc.code}" if exc.code else "")
    if code in _CONTEXT_CODES or (
        status in (400, 413, 422) and any(word in detail.lower() for word in _CONTEXT_WORDS)
    ):
        return PermanentAgentError(
            _clean(f"context length exceeded: the prompt does not fit the model ({detail})")
        )
    if code in _FILTER_CODES:
        return PermanentAgentError(_clean(f"content filter: the request was refused ({detail})"))
    if status in (401, 403):
        what = "authentication failed" if status == 401 else "permission denied"
        return PermanentAgentError(
            _clean(f"{what} ({where}): check the key the agent's api_key_env names ({detail})")
        )
    if code == "insufficient_quota":
        # A 429 that waiting does not cure.
        return PermanentAgentError(_clean(f"quota exhausted ({where}): {detail}"))
    if status in (408, 409, 429) or status >= 500:
        # 409 is how OpenAI reports a lock it could not take in time; its SDK retries
        # it too.
        label = "rate limited" if status == 429 else "server error"
        return TransientAgentError(
            _clean(f"{label} ({where}): {detail}"), retry_after=retry_after(exc.response)
        )
    return PermanentAgentError(_clean(f"request refused ({where}): {detail}"))


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms`` (OpenAI's), else
    ``retry-after`` in seconds or as an HTTP date; None if it says nothing usable."""
    headers = response.headers
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    text = message if isinstance(message, str) and message else exc.message
    return " ".join(text.split())[:_MAX_DETAIL]


def _clean(message: str) -> str:
    return redact(message)
