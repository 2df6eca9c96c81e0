"""The ``http`` agent kind: a remote agent service, one JSON POST per attempt.

The request body carries what the agent needs to do the work and to recognise it::

    {"execution_id": "...", "step_id": "review[2]", "agent": "reviewer", "attempt": 1,
     "task": "...", "input": ..., "outputs": {"scan": ...}, "item": ..., "index": 2}

``outputs`` holds only the steps this step may see. The header ``Idempotency-Key:
<execution>:<step>:<attempt>`` is the same whenever the same attempt is sent again (a
redelivered message) and differs between retries, so a service can tell a duplicate from a
new try. The reply is ``{"output": ..., "usage": {...}}`` with ``usage`` optional.

Failures are typed so the retry policy can act on them: time-outs, connection errors and
HTTP 408, 429 and 5xx are transient (``Retry-After`` honoured); any other status is
permanent; a reply that is not the JSON above is an AgentProtocolError. Every message is
scrubbed of secret values and never quotes the request's headers.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from orchestration.agents import secrets
from orchestration.agents.call import AgentCall, AgentResult, Usage
from orchestration.errors import (
    AgentProtocolError,
    PermanentAgentError,
    TransientAgentError,
)
from orchestration.spec import HttpAgentSpec

# A threads pool runs up to ~1,000 attempts at once in one process, each holding one
# connection while it waits: without room for all of them, attempts would queue for a
# connection and time out there. Idle connections are kept for reuse by the next calls.
POOL_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
# An output is stored in the database and read by every later step: a runaway reply is
# refused rather than read into memory.
MAX_REPLY_BYTES = 32 * 1024 * 1024
# How much of an error reply's body an error message quotes.
EXCERPT_CHARS = 200
# Enough of an error reply to quote; the rest is not read.
_ERROR_BODY_BYTES = 4096
_USAGE_COUNTS = ("tokens_in", "tokens_out", "cached_tokens", "reasoning_tokens")


class AgentServiceTimeout(TransientAgentError, TimeoutError):
    """The service did not connect, accept the request or reply within the agent's
    timeout. Transient, and recorded as a time-out (it is a TimeoutError)."""


# --- one pooled client per process -----------------------------------------------------

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def shared_client() -> httpx.Client:
    """This process's pooled client, made on first use. Adapters are built per call;
    the pool (and its kept-alive connections) outlives them."""
    global _client
    client = _client
    if client is None:
        with _client_lock:
            client = _client
            if client is None:
                # Redirects are not followed: re-sending a POST elsewhere is a decision
                # for the team file's url, not for the worker.
                client = httpx.Client(limits=POOL_LIMITS, follow_redirects=False)
                _client = client
    return client


def _forget_client_after_fork() -> None:
    # A forked child (a prefork pool process) must not share the parent's sockets: two
    # processes writing requests into one connection would interleave them. The child
    # drops the inherited client without closing it (closing could shut the parent's
    # connections down) and makes its own on first use; the lock may have been held by
    # another thread of the parent at fork time, so it is replaced too.
    global _client, _client_lock
    _client = None
    _client_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_client_after_fork)


# --- the adapter -----------------------------------------------------------------------


class HttpServiceAgent:
    """Built for each call: cheap, holding only the spec (the client is per process)."""

    def __init__(self, spec: HttpAgentSpec) -> None:
        self.spec = spec

    def invoke(self, call: AgentCall) -> AgentResult:
        url = self.spec.call_url
        body = request_body(call)
        headers = self._headers(call)
        try:
            with shared_client().stream(
                "POST", url, content=body, headers=headers, timeout=self.spec.timeout
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    content = _read(response, MAX_REPLY_BYTES, url)
                else:
                    content = _read(response, _ERROR_BODY_BYTES, url, truncate=True)
        except httpx.TimeoutException as exc:
            raise AgentServiceTimeout(
                _say(f"POST {url}: no answer within {self.spec.timeout:g}s ({_kind(exc)})")
            ) from None
        except (httpx.LocalProtocolError, httpx.UnsupportedProtocol) as exc:
            # The request itself cannot be sent: retrying sends the same request. The
            # library's message may quote a header, so only its type is given.
            raise PermanentAgentError(
                _say(f"POST {url}: the request could not be sent ({_kind(exc)})")
            ) from None
        except httpx.TransportError as exc:
            raise TransientAgentError(_say(f"POST {url}: {_kind(exc)}: {exc}")) from None
        except httpx.DecodingError as exc:
            # A body that does not match its Content-Encoding: the service's fault.
            raise AgentProtocolError(_say(f"POST {url}: {_kind(exc)}: {exc}")) from None
        if not 200 <= status < 300:
            raise _status_error(url, response, content)
        return parse_reply(content, url, response.headers.get("content-type"))

    def _headers(self, call: AgentCall) -> httpx.Headers:
        headers = httpx.Headers({"Accept": "application/json", "User-Agent": "troupe"})
        for name, template in self.spec.headers.items():
            # Expanded now, in the worker, and never kept: the spec holds the names only.
            value = secrets.expand(template)
            if any(c in value for c in "\r\n\0"):
                raise PermanentAgentError(
                    f"header {name}: its value holds a line break or NUL, "
                    "which HTTP cannot carry (check the variables it names)"
                )
            headers[name] = value
        # Ours whatever the team file says: the body is JSON, and the key is what lets a
        # service recognise a redelivered attempt.
        headers["Content-Type"] = "application/json"
        headers["Idempotency-Key"] = idempotency_key(call)
        return headers


def idempotency_key(call: AgentCall) -> str:
    """The same for every delivery of one attempt, different for each retry."""
    return f"{call.execution_id}:{call.step_id}:{call.attempt}"


def request_body(call: AgentCall) -> bytes:
    # Iterating ``outputs`` reads what this step may see, and only that, from the database.
    outputs = {step_id: call.outputs[step_id] for step_id in call.outputs}
    document = {
        "execution_id": call.execution_id,
        "step_id": call.step_id,
        "agent": call.agent,
        "attempt": call.attempt,
        "task": call.task,
        "input": call.input,
        "outputs": outputs,
        "item": call.item,
        "index": call.index,
    }
    try:
        return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise PermanentAgentError(f"the call cannot be sent as JSON: {exc}") from None


def parse_reply(content: bytes, url: str, content_type: str | None = None) -> AgentResult:
    """``{"output": ..., "usage": {...}?}`` as an AgentResult; AgentProtocolError if not."""
    try:
        reply = json.loads(content, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        kind = f", {content_type}" if content_type else ""
        raise AgentProtocolError(
            _say(
                f"POST {url} replied with a body that is not JSON ({exc}{kind}): "
                f"{_excerpt(content)!r}"
            )
        ) from None
    if not isinstance(reply, dict) or "output" not in reply:
        got = f"keys {sorted(reply)[:10]}" if isinstance(reply, dict) else type(reply).__name__
        raise AgentProtocolError(
            _say(f'POST {url} replied with JSON without an "output" field (got {got})')
        )
    return AgentResult(output=reply["output"], usage=_usage(reply.get("usage"), url))


def _usage(raw: Any, url: str) -> Usage:
    if raw is None:
        return Usage(endpoint=url)
    if not isinstance(raw, dict):
        raise AgentProtocolError(_say(f"POST {url}: usage is {type(raw).__name__}, not an object"))
    counts: dict[str, int] = {}
    for key in _USAGE_COUNTS:
        value = raw.get(key, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AgentProtocolError(
                _say(f"POST {url}: usage.{key} is {value!r}, not a count of tokens")
            )
        counts[key] = value
    cost = raw.get("cost_usd")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float)):
        raise AgentProtocolError(_say(f"POST {url}: usage.cost_usd is {cost!r}, not a number"))
    if cost is not None and cost < 0:
        raise AgentProtocolError(_say(f"POST {url}: usage.cost_usd is negative ({cost!r})"))
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise AgentProtocolError(_say(f"POST {url}: usage.model is {model!r}, not a string"))
    return Usage(
        **counts,
        cost_usd=None if cost is None else float(cost),
        model=model,
        endpoint=url,
    )


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON has not: such an output could not
    # be stored or passed on.
    raise ValueError(f"{name} is not JSON")


def _status_error(url: str, response: httpx.Response, content: bytes) -> Exception:
    status = response.status_code
    phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
    excerpt = _excerpt(content)
    said = f"POST {url} answered HTTP {status}{phrase}" + (f": {excerpt}" if excerpt else "")
    if status in (408, 429) or status >= 500:
        wait = retry_after(response.headers.get("retry-after"))
        if wait is not None:
            said += f" (Retry-After {wait:g}s)"
        return TransientAgentError(_say(said), retry_after=wait)
    if 300 <= status < 400:
        said += " (redirects are not followed: point url at the final address)"
    return PermanentAgentError(_say(said))


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.now(UTC).timestamp() if now is None else now
        seconds = when.timestamp() - current
    if seconds != seconds or seconds == float("inf"):
        return None
    return max(0.0, seconds)


def _read(response: httpx.Response, limit: int, url: str, *, truncate: bool = False) -> bytes:
    """At most ``limit`` bytes of the body: the rest is left unread (``truncate``) or the
    reply is refused."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if truncate:
                break
            raise AgentProtocolError(
                _say(f"POST {url} replied with more than {limit // (1024 * 1024)} MiB")
            )
    return b"".join(chunks)[:limit]


def _excerpt(content: bytes) -> str:
    text = " ".join(content[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace").split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _say(message: str) -> str:
    # A service may echo a header (an Authorization token) into its error body.
    return secrets.redact(message)
