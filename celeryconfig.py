"""Celery settings, derived from orchestration.settings (TROUPE_* environment variables)."""

from __future__ import annotations

from typing import Any

from orchestration.constants import HEARTBEAT_TASK, REAP_TASK
from orchestration.settings import get_settings

_settings = get_settings()

broker_url = _settings.effective_broker_url
result_backend = _settings.effective_result_backend
if broker_url.startswith("redis://"):
    # The same transport, reusing one Redis client per channel (see the module).
    broker_transport = "workers.redis_transport:Transport"

# JSON only on the wire: no pickle, ever.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# At-least-once delivery: a delegation is acknowledged after it ran, re-queued if its
# worker dies, and a worker holds one message at a time so a crash strands at most one.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1

task_default_queue = _settings.queue
task_create_missing_queues = True
result_expires = 24 * 3600
broker_connection_retry_on_startup = True

# Flower shows delegations under their shadow names (agent:<name>) from task events,
# which it switches on in every worker while it runs (TROUPE_TASK_EVENTS=true sends them
# from the start). Publishers send no task-sent events: those carry the real task name
# (troupe.delegate), and Celery's event state merges every field of a task-sent event
# that arrives after the worker's task-received (celery/events/state.py, Task.event), so
# the agent's name would flicker back to troupe.delegate in Flower. The cost: Flower does
# not list a delegation until a worker has received it.
task_send_sent_event = False
worker_send_task_events = _settings.task_events

# Beat: probe agents and feed their breakers; recover work lost with dead workers. Each
# run expires after one interval, so a backlog never replays stale probes.
beat_schedule = {
    "troupe-heartbeat": {
        "task": HEARTBEAT_TASK,
        "schedule": _settings.heartbeat_interval,
        "options": {"queue": _settings.queue, "expires": _settings.heartbeat_interval},
    },
    "troupe-reap": {
        "task": REAP_TASK,
        "schedule": _settings.reap_interval,
        "options": {"queue": _settings.queue, "expires": _settings.reap_interval},
    },
}

broker_transport_options: dict[str, Any]
if _settings.embedded:
    broker_transport_options = {"polling_interval": _settings.embedded_polling_interval}
    worker_hijack_root_logger = False
    worker_redirect_stdouts = False
    # Several CLI processes may run at once: keep beat's schedule in memory, not a file.
    beat_scheduler = "celery.beat:Scheduler"
else:
    broker_transport_options = {
        "visibility_timeout": _settings.visibility_timeout,
        # Re-queue a dead worker's unacknowledged messages soon after the visibility
        # timeout, not after kombu's default restore cycle of about 100 s.
        "unacked_restore_interval": _settings.unacked_restore_interval,
        "unacked_restore_throttle": 1,
    }
    result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout}
