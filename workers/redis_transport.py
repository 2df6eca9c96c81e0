# kombu has no type hints: calls into it are untyped.
# mypy: disable-error-code="no-untyped-call"
"""kombu's Redis transport, with one Redis client per channel instead of one per call,
acknowledgements and reservations that do not wait for Redis's reply, and messages
fetched in batches.

kombu 5.7 builds a new ``redis.Redis`` object for every operation of a channel that is
not its blocking BRPOP: each publish, and each acknowledgement and reservation of the
worker's QoS. redis-py copies its ~170-entry table of response callbacks into every new
client: 13% of a busy worker main process's samples under py-spy, and a fifth of a
publish's CPU (0.09 of 0.46 ms). A client owns no connection: every command checks one
out of the channel's pool and returns it, so one client per channel is safe to share,
and the commands sent are unchanged.

A worker's main process runs one event loop for every pool process. kombu emulates
acknowledgements on Redis with two transactions per message (MULTI ZADD HSET EXEC into
the unacked index when it is received, MULTI ZREM HDEL EXEC when it is acknowledged),
and waits for each reply inside the loop: under py-spy --idle, 24% of a busy main
process's time, while the pool processes waited for their next message. Here both go
out on one connection of their own and their replies are read later (before the next
write, or all of them before anything reads the unacked index back). The commands are
kombu's; Redis runs them in the order sent. If a write cannot be sent, the channel falls
back to kombu's own, waiting, way. A worker killed with replies unread loses nothing
Redis received; an acknowledgement lost on the wire means one redelivery, which Troupe
tells apart from new work.

kombu fetches one message per BRPOP, and a worker's event loop turns once per message: a
threads-pool worker given 1,000 messages started its last call 1.74 s after the first
(io_fanout in bench/). Once a BRPOP has brought one, a Lua script takes as many more as
the prefetch allows, registering each in the unacked index in the same atomic step (see
``Channel``): the last call then started at 1.21 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ResponseError

log = logging.getLogger("troupe.worker")

# Replies left unread before a write waits for them.
_MOST_UNREAD = 10_000


class _UnansweredWrites:
    """Transactions sent on one connection whose replies are read later."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._connection: Any = None
        self._unread = 0
        self._lock = threading.Lock()

    def transaction(self, *commands: tuple[Any, ...]) -> None:
        """Send MULTI, ``commands``, EXEC; raise if they could not be sent."""
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = self._pool.get_connection()
                connection = self._connection
                while self._unread and (
                    self._unread >= _MOST_UNREAD or connection.can_read(timeout=0)
                ):
                    self._read_one()
                connection.send_packed_command(
                    connection.pack_commands([("MULTI",), *commands, ("EXEC",)])
                )
                self._unread += len(commands) + 2
            except Exception:
                self._drop()
                raise

    def flush(self) -> None:
        """Read every reply still owed: the writes are then applied."""
        with self._lock:
            try:
                while self._unread:
                    self._read_one()
            except Exception as exc:
                log.warning("redis: unread acknowledgement replies lost: %s", exc)
                self._drop()

    def close(self) -> None:
        self.flush()
        with self._lock:
            if self._connection is not None:
                self._pool.release(self._connection)
                self._connection = None

    def _read_one(self) -> None:
        self._unread -= 1
        try:
            reply = self._connection.read_response()
        except ResponseError as exc:  # MULTI refused, EXECABORT
            log.warning("redis: acknowledgement write failed: %s", exc)
            return
        if isinstance(reply, list):
            for part in reply:
                if isinstance(part, Exception):
                    log.warning("redis: acknowledgement write failed: %s", part)

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
            self._pool.release(self._connection)
        self._connection = None
        self._unread = 0


class QoS(redis.QoS):
    """kombu's ack emulation, written without waiting for the replies."""

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.channel.registered:
            # Taken by the batch script, which wrote the unacked entry with the pop.
            self.channel.registered.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        raw = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        try:
            self.channel.unanswered.transaction(
                ("ZADD", self.unacked_index_key, time.time(), delivery_tag),
                ("HSET", self.unacked_key, delivery_tag, raw),
            )
        except Exception:
            super().append(message, delivery_tag)
            return
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        try:
            self.channel.unanswered.transaction(
                ("ZREM", self.unacked_index_key, delivery_tag),
                ("HDEL", self.unacked_key, delivery_tag),
            )
        except Exception:
            super().ack(delivery_tag)
            return
        virtual.QoS.ack(self, delivery_tag)

    # Everything that reads the unacked index back first waits for the writes owed.

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.unanswered.flush()
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> None:
        self.channel.unanswered.flush()
        super().restore_unacked(client)

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        self.channel.unanswered.flush()
        super().restore_visible(*args, **kwargs)


# The most messages one batch takes after a BRPOP: the worker's prefetch bounds it too.
MOST_PER_BATCH = 100

# Pop up to ARGV[1] messages from KEYS[3..] (in BRPOP's order: priority, then queue) and
# write each one's unacked entry (kombu's own format: [message, exchange, routing key])
# in the same script, so a worker killed between the pop and the write cannot lose one.
# A message the script cannot read is left in its list for BRPOP, and kombu, to meet.
_TAKE_BATCH = """
local taken = {}
local most = tonumber(ARGV[1])
for i = 3, #KEYS do
  while #taken < most * 2 do
    local item = redis.call('LINDEX', KEYS[i], -1)
    if not item then break end
    local ok, message = pcall(cjson.decode, item)
    if not ok or type(message) ~= 'table' or type(message.properties) ~= 'table' then
      return taken
    end
    local properties = message.properties
    local delivery = properties.delivery_info
    local tag = properties.delivery_tag
    if type(tag) ~= 'string' or type(delivery) ~= 'table' then return taken end
    redis.call('RPOP', KEYS[i])
    redis.call('ZADD', KEYS[1], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' ..
      cjson.encode(delivery.exchange or '') .. ',' ..
      cjson.encode(delivery.routing_key or '') .. ']')
    taken[#taken + 1] = KEYS[i]
    taken[#taken + 1] = item
  end
  if #taken >= most * 2 then break end
end
return taken
"""


class Channel(redis.Channel):
    """kombu's channel, with one shared client, unanswered acknowledgement writes, and
    batched fetches.

    kombu takes one message per BRPOP: a round trip and a turn of the worker's event loop
    per message, about a third of a busy threads-pool worker's main process. Once a BRPOP
    has brought one, the script above takes as many more as the prefetch allows, and at
    most the pool's width with it (and ``MOST_PER_BATCH``), in one round trip, each
    registered as unacked in the same atomic step, so they are exactly as recoverable as
    kombu's own. A worker holding countdown messages takes one per turn (see
    ``_pool_width``).
    """

    QoS = QoS

    # The smallest prefetch count the consumer set: the pool's own width. Celery raises
    # the count by one for each message it holds for a countdown (a retry, a capacity
    # wait). While it holds any, batches would let the worker that holds them take the
    # next ones too, as fast as they are sent again, and later run them a pool's width
    # at a time while other workers idle: one message per turn then, as kombu takes.
    _pool_width: int | None = None

    def basic_qos(
        self, prefetch_size: Any = 0, prefetch_count: Any = 0, apply_global: Any = False
    ) -> Any:
        if prefetch_count and (self._pool_width is None or prefetch_count < self._pool_width):
            self._pool_width = prefetch_count
        return super().basic_qos(prefetch_size, prefetch_count, apply_global)

    @cached_property
    def registered(self) -> set[str]:
        """Delivery tags whose unacked entry the batch script wrote."""
        return set()

    @cached_property
    def _take_batch(self) -> Any:
        return self._shared_client.register_script(_TAKE_BATCH)

    def _brpop_read(self, **options: Any) -> bool:
        delivered = super()._brpop_read(**options)
        if delivered:
            self._deliver_batch()
        return bool(delivered)

    def _deliver_batch(self) -> None:
        room = self.qos.can_consume_max_estimate()
        queues = list(self.active_queues)
        if not room or not queues or self.global_keyprefix:
            return
        width = self._pool_width
        if width is None or self.qos.prefetch_count != width:
            return
        # At most a pool's width in one turn, with the message BRPOP brought.
        room = min(room, width - 1)
        if room <= 0:
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        taken = self._take_batch(
            keys=[self.unacked_index_key, self.unacked_key, *keys],
            args=[min(room, MOST_PER_BATCH), time.time()],
        )
        pending = [
            (bytes_to_str(taken[i]).rsplit(self.sep, 1)[0], loads(bytes_to_str(taken[i + 1])))
            for i in range(0, len(taken), 2)
        ]
        for position, (queue, payload) in enumerate(pending):
            tag = payload["properties"]["delivery_tag"]
            self.registered.add(tag)
            try:
                self.connection._deliver(payload, queue)
            except BaseException:
                # What is not delivered goes back to its queue now, not after the
                # visibility timeout.
                for _, rest in pending[position + 1 :]:
                    self._give_back(rest["properties"]["delivery_tag"])
                raise

    def _give_back(self, tag: str) -> None:
        self.registered.discard(tag)
        try:
            self.qos.restore_by_tag(tag)
        except Exception as exc:
            log.warning("redis: message %s left unacked (restored later): %s", tag, exc)

    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @cached_property
    def unanswered(self) -> _UnansweredWrites:
        return _UnansweredWrites(self._shared_client.connection_pool)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared_client

    def close(self) -> None:
        writes = self.__dict__.get("unanswered")
        if writes is not None:
            writes.close()
        super().close()


class Transport(redis.Transport):
    Channel = Channel
