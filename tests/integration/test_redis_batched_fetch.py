"""The worker's Redis transport takes messages in batches (workers/redis_transport.py), on
a real Redis: each message it takes is registered as unacked in the same step, so a
consumer killed with -9 loses none, priorities keep their order inside a batch, and what
a failing consumer did not get goes back to its queue at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")
kombu = pytest.importorskip("kombu")

from kombu import Connection, Consumer, Queue  # noqa: E402

TRANSPORT = "workers.redis_transport:Transport"


@pytest.fixture
def queue_name(spare_redis_url: str) -> Iterator[str]:
    name = f"batch-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(spare_redis_url)
    client.delete("unacked", "unacked_index", *client.keys(f"{name}*"))


def publish(url: str, name: str, bodies: list[dict[str, Any]], priority: int = 0) -> None:
    with Connection(url, transport=TRANSPORT) as connection:
        producer = connection.Producer(serializer="json")
        for body in bodies:
            producer.publish(body, routing_key=name, declare=[Queue(name)], priority=priority)


def drain_once(
    url: str, name: str, prefetch: int, on_message: Any, raised_to: int | None = None
) -> None:
    """One turn of the consumer: one BRPOP answered, and the batch taken after it.
    ``raised_to``: the prefetch count is then raised, as Celery does for each message it
    holds for a countdown."""
    with (
        Connection(url, transport=TRANSPORT) as connection,
        Consumer(connection, [Queue(name)], callbacks=[on_message], accept=["json"]) as c,
    ):
        c.qos(prefetch_count=prefetch)
        if raised_to is not None:
            c.qos(prefetch_count=raised_to)
        connection.drain_events(timeout=5)
        # Leaving without an ack would let kombu restore the messages at shutdown:
        # acknowledge what was received so the queue's state is what the test says.
        for message in list(c.channel.qos._delivered.values()):
            message.ack()


def test_one_turn_takes_as_many_as_the_prefetch_allows_in_order(
    spare_redis_url: str, queue_name: str
) -> None:
    publish(spare_redis_url, queue_name, [{"n": n} for n in range(30)])
    received: list[int] = []
    drain_once(spare_redis_url, queue_name, 20, lambda body, _m: received.append(body["n"]))
    assert received == list(range(20))
    client = redis.Redis.from_url(spare_redis_url)
    assert client.llen(queue_name) == 10
    assert client.hlen("unacked") == 0


def test_a_worker_holding_countdown_messages_takes_one_per_turn(
    spare_redis_url: str, queue_name: str
) -> None:
    """Celery raises the prefetch count for each countdown message it holds; a worker
    that does takes one message per turn, as kombu does, so it cannot take every message
    sent again with a countdown while the other workers' pools are busy."""
    publish(spare_redis_url, queue_name, [{"n": n} for n in range(30)])
    received: list[int] = []
    drain_once(
        spare_redis_url, queue_name, 4, lambda body, _m: received.append(body["n"]), raised_to=20
    )
    assert received == [0]


def test_priorities_keep_their_order_inside_a_batch(spare_redis_url: str, queue_name: str) -> None:
    publish(spare_redis_url, queue_name, [{"n": n, "p": "low"} for n in range(10)], priority=9)
    publish(spare_redis_url, queue_name, [{"n": n, "p": "high"} for n in range(5)], priority=0)
    received: list[str] = []
    drain_once(spare_redis_url, queue_name, 15, lambda body, _m: received.append(body["p"]))
    assert received == ["high"] * 5 + ["low"] * 10


def test_what_a_failing_consumer_did_not_get_goes_back_to_its_queue(
    spare_redis_url: str, queue_name: str
) -> None:
    publish(spare_redis_url, queue_name, [{"n": n} for n in range(30)])
    received: list[int] = []

    def on_message(body: dict[str, Any], _message: Any) -> None:
        received.append(body["n"])
        if body["n"] == 2:
            raise RuntimeError("consumer broke")

    with pytest.raises(RuntimeError, match="consumer broke"):
        drain_once(spare_redis_url, queue_name, 20, on_message)
    assert received == [0, 1, 2]
    client = redis.Redis.from_url(spare_redis_url)
    # 3..19 were taken by the batch and given back at once; 0..2, delivered, kombu
    # restored when the channel closed; none is left unacked to wait for its timeout.
    waiting = sorted(json.loads(_body(raw))["n"] for raw in _all(client, queue_name))
    assert waiting == list(range(30))
    assert client.hlen("unacked") == 0 == client.zcard("unacked_index")


_CONSUMER = """
import sys, time
from kombu import Connection, Consumer, Queue
url, name = sys.argv[1], sys.argv[2]
with Connection(url, transport="workers.redis_transport:Transport") as connection:
    with Consumer(connection, [Queue(name)], callbacks=[lambda b, m: None], accept=["json"]) as c:
        c.qos(prefetch_count=20)
        connection.drain_events(timeout=5)
        print(len(c.channel.qos._delivered), flush=True)
        time.sleep(60)
"""


def test_a_consumer_killed_after_a_batch_loses_no_message(
    spare_redis_url: str, queue_name: str
) -> None:
    publish(spare_redis_url, queue_name, [{"n": n} for n in range(30)])
    with subprocess.Popen(
        [sys.executable, "-c", _CONSUMER, spare_redis_url, queue_name],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ) as consumer:
        try:
            assert consumer.stdout is not None
            assert consumer.stdout.readline().strip() == "20"
        finally:
            consumer.send_signal(signal.SIGKILL)
            consumer.wait(timeout=10)
    client = redis.Redis.from_url(spare_redis_url)
    assert client.llen(queue_name) == 10
    assert client.hlen("unacked") == 20 == client.zcard("unacked_index")
    # What kombu does for a message unacked past the visibility timeout: here, now.
    with Connection(
        spare_redis_url, transport=TRANSPORT, transport_options={"visibility_timeout": 0}
    ) as connection:
        time.sleep(0.01)  # the index's scores must be in the past
        connection.default_channel.qos.restore_visible(num=100)
    numbers = sorted(json.loads(_body(raw))["n"] for raw in _all(client, queue_name))
    assert numbers == list(range(30))
    assert client.hlen("unacked") == 0


def _all(client: Any, name: str) -> list[bytes]:
    return [raw for key in client.keys(f"{name}*") for raw in client.lrange(key, 0, -1)]


def _body(raw: bytes) -> str:
    import base64

    message = json.loads(raw)
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return str(body)
