"""The raw Celery baseline: a no-op task with the same guarantees as Troupe's workers.

Same durable settings as celeryconfig.py: JSON only, acks late, reject on worker loss,
prefetch one, Redis broker and Redis results on the same Redis (and the same visibility
timeout and restore interval). Started as
``celery -A bench.raw_app worker -c 2 -P prefork -Q <queue>`` with
``BENCH_RAW_BROKER_URL`` and ``BENCH_RAW_QUEUE`` in the environment.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery

BROKER_URL = os.environ.get("BENCH_RAW_BROKER_URL", "redis://127.0.0.1:6379/12")
QUEUE = os.environ.get("BENCH_RAW_QUEUE", "bench-raw")
VISIBILITY_TIMEOUT = float(os.environ.get("TROUPE_VISIBILITY_TIMEOUT", "3600"))
UNACKED_RESTORE_INTERVAL = float(os.environ.get("TROUPE_UNACKED_RESTORE_INTERVAL", "2"))

app = Celery("bench_raw")
app.conf.update(
    broker_url=BROKER_URL,
    result_backend=BROKER_URL,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    task_create_missing_queues=True,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": UNACKED_RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
    },
    result_backend_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
)


@app.task(name="bench.raw.noop")
def noop(*_: Any) -> None:
    """Does nothing: what is measured is Celery itself."""
    return None


@app.task(name="bench.raw.join")
def join(results: list[Any]) -> int:
    """A chord body: receives every member's result."""
    return len(results)


@app.task(name="bench.raw.pause")
def pause(seconds: float) -> None:
    """Blocks ``seconds`` in time.sleep: the raw side of an I/O-bound agent call."""
    time.sleep(seconds)


_chat_clients: dict[str, Any] = {}
_chat_lock = threading.Lock()


def _chat_client(base_url: str) -> Any:
    """One ``openai`` client per endpoint over one connection pool per process, with the
    same limits as Troupe's (orchestration/agents/openai_client.py): connections kept
    for a thousand calls in flight, no retries by the SDK."""
    with _chat_lock:
        client = _chat_clients.get(base_url)
        if client is None:
            import httpx2
            import openai

            http = openai.DefaultHttpxClient(
                limits=httpx2.Limits(
                    max_connections=None, max_keepalive_connections=1024, keepalive_expiry=30.0
                )
            )
            client = openai.OpenAI(
                api_key="none", base_url=base_url, max_retries=0, http_client=http
            )
            _chat_clients[base_url] = client
        return client


@app.task(name="bench.raw.chat")
def chat(base_url: str, model: str, prompt: str, timeout: float) -> str | None:
    """One chat-completions request with the official client: the raw side of an
    ``openai`` agent call (the same request Troupe's agent sends, without its budget,
    audit trail and breaker)."""
    completion = _chat_client(base_url).chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], timeout=timeout
    )
    content: str | None = completion.choices[0].message.content
    return content


@app.task(name="bench.raw.sleepy", bind=True)
def sleepy(self: Any, seconds: float, marker: str) -> dict[str, Any]:
    """Notes each start (time, worker, pid) in the file ``marker``, then sleeps: the
    recovery script kills the worker mid-sleep and watches for the next start."""
    with open(marker, "a", encoding="utf-8") as handle:
        handle.write(f"{time.time()} {self.request.hostname} {os.getpid()}\n")
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}
