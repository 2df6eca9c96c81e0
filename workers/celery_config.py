"""Troupe's Celery settings, derived from its own settings object (``TROUPE_*``).

The app takes its configuration from :func:`celery_config`, never from a module looked up
by name on ``sys.path``: a user's project usually has a ``celeryconfig.py`` of its own, and
Troupe, run from that folder, would import it and run with its broker and acknowledgement
settings. The top-level ``celeryconfig.py`` shows the same values for ``celery -A`` users.
"""

from __future__ import annotations

from typing import Any

from orchestration.constants import HEARTBEAT_TASK, REAP_TASK
from orchestration.settings import Settings
from workers.publish import AMQP_MAX_PRIORITY, REDIS_PRIORITY_STEPS, Routing, route_options


def celery_config(settings: Settings) -> dict[str, Any]:
    """Every Celery setting Troupe's app runs with, for these Troupe settings."""
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.effective_result_backend,
        # JSON only on the wire: no pickle, ever.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once delivery: a delegation is acknowledged after it ran, re-queued if
        # its worker dies, and a worker holds one message at a time so a crash strands at
        # most one.
        "task_acks_late": True,
        # A delegation whose attempt failed raises DelegationFailed after recording it
        # (Flower shows FAILURE): its message is acked then, never delivered again.
        "task_acks_on_failure_or_timeout": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_create_missing_queues": True,
        "result_expires": 24 * 3600,
        "broker_connection_retry_on_startup": True,
        # Flower shows delegations under their shadow names (agent:<name>) from task
        # events, which it switches on in every worker while it runs (TROUPE_TASK_EVENTS=true
        # sends them from the start). Publishers send no task-sent events: those carry the
        # real task name (troupe.delegate), and Celery's event state merges every field of
        # a task-sent event that arrives after the worker's task-received
        # (celery/events/state.py, Task.event), so the agent's name would flicker back to
        # troupe.delegate in Flower. The cost: Flower does not list a delegation until a
        # worker has received it.
        "task_send_sent_event": False,
        "worker_send_task_events": settings.task_events,
        "beat_schedule": _beat_schedule(settings),
    }
    if settings.embedded:
        config.update(_embedded(settings))
    elif settings.broker_is_rabbitmq:
        config.update(_rabbitmq())
    else:
        config.update(_visibility_timeout_broker(settings))
    if settings.effective_result_backend.startswith(("redis://", "rediss://")):
        config["result_backend_transport_options"] = {
            "visibility_timeout": settings.visibility_timeout
        }
    return config


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    # Probe agents and feed their breakers; recover work lost with dead workers. Each run
    # expires after one interval, so a backlog never replays stale probes; both go above
    # every delegation's priority, so a backlog does not hold them until they expire.
    own = route_options(Routing.for_settings(settings).own)
    return {
        "troupe-heartbeat": {
            "task": HEARTBEAT_TASK,
            "schedule": settings.heartbeat_interval,
            "options": {**own, "expires": settings.heartbeat_interval},
        },
        "troupe-reap": {
            "task": REAP_TASK,
            "schedule": settings.reap_interval,
            "options": {**own, "expires": settings.reap_interval},
        },
    }


def _embedded(settings: Settings) -> dict[str, Any]:
    return {
        "broker_transport_options": {"polling_interval": settings.embedded_polling_interval},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        # Several CLI processes may run at once: keep beat's schedule in memory, not a file.
        "beat_scheduler": "celery.beat:Scheduler",
    }


def _rabbitmq() -> dict[str, Any]:
    # RabbitMQ has no visibility timeout: it re-queues a consumer's unacknowledged messages
    # as soon as its connection drops. It does close the channel of a consumer that holds
    # a message unacknowledged longer than its consumer_timeout (see
    # Settings.consumer_timeout): reconnect then, as after a lost connection, instead of
    # stopping the worker on the PRECONDITION_FAILED channel error.
    return {
        "broker_channel_error_retry": True,
        # Every queue Celery declares (Troupe's, and each agent's, by publisher or
        # worker) is a priority queue: RabbitMQ ignores a message's priority in a queue
        # declared without x-max-priority, and refuses to declare an existing queue
        # again with other arguments.
        "task_queue_max_priority": AMQP_MAX_PRIORITY,
    }


def _visibility_timeout_broker(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Re-queue a dead worker's unacknowledged messages soon after the visibility
            # timeout, not after kombu's default restore cycle of about 100 s.
            "unacked_restore_interval": settings.unacked_restore_interval,
            "unacked_restore_throttle": 1,
            # One Redis list per priority level (workers/publish.py, LEVELS); a worker's
            # BRPOP names every level of every queue it serves, most urgent first, so
            # a message is taken from the most urgent non-empty list. kombu's own
            # separator and queue order are kept: the separator also joins the
            # exchange bindings already stored in Redis.
            "priority_steps": list(REDIS_PRIORITY_STEPS),
        }
    }
    if settings.effective_broker_url.startswith("redis://"):
        # The same transport, reusing one Redis client per channel (see the module).
        config["broker_transport"] = "workers.redis_transport:Transport"
    return config
