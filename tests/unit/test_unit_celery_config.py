"""celery_config: the Celery settings Troupe's app runs with, for each kind of broker."""

from __future__ import annotations

import pytest

from orchestration.settings import Settings
from tests.support.settings import given_settings
from workers.celery_config import celery_config

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/3"

DURABLE = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "task_serializer": "json",
    "accept_content": ["json"],
}


@pytest.mark.parametrize("broker", [None, REDIS, RABBITMQ])
def test_every_broker_gets_the_durable_json_settings(broker: str | None) -> None:
    config = celery_config(given_settings(broker_url=broker, queue="q1"))
    assert {key: config[key] for key in DURABLE} == DURABLE
    assert config["task_default_queue"] == "q1"
    assert set(config["beat_schedule"]) == {"troupe-heartbeat", "troupe-reap"}


def test_redis_gets_troupes_transport_and_its_visibility_timeout() -> None:
    config = celery_config(given_settings(broker_url=REDIS, visibility_timeout=600))
    assert config["broker_url"] == REDIS
    assert config["broker_transport"] == "workers.redis_transport:Transport"
    assert config["broker_transport_options"]["visibility_timeout"] == 600
    assert config["result_backend"] == REDIS
    assert config["result_backend_transport_options"] == {"visibility_timeout": 600}


def test_rabbitmq_gets_kombus_amqp_transport_and_no_visibility_timeout() -> None:
    config = celery_config(given_settings(broker_url=RABBITMQ))
    assert config["broker_url"] == RABBITMQ
    assert "broker_transport" not in config
    assert "visibility_timeout" not in config.get("broker_transport_options", {})
    assert "result_backend_transport_options" not in config
    # Troupe reads no task results, and RabbitMQ has nowhere to keep them.
    assert config["result_backend"] == "disabled"
    # A channel closed by RabbitMQ's consumer timeout reconnects instead of stopping.
    assert config["broker_channel_error_retry"] is True


def test_a_result_backend_given_explicitly_is_kept() -> None:
    config = celery_config(given_settings(broker_url=RABBITMQ, result_backend="rpc://"))
    assert config["result_backend"] == "rpc://"


def test_embedded_polls_the_in_memory_broker_quickly() -> None:
    config = celery_config(given_settings(embedded_polling_interval=0.02))
    assert config["broker_url"].startswith("memory://")
    assert config["broker_transport_options"] == {"polling_interval": 0.02}


def test_the_celeryconfig_module_shows_the_same_settings() -> None:
    import celeryconfig

    # Both read the same environment.
    expected = celery_config(Settings())
    assert {key: getattr(celeryconfig, key) for key in expected} == expected


def test_troupes_app_is_configured_from_the_settings_it_was_given(settings: Settings) -> None:
    from workers.app import app, app_settings

    # The session's settings, given to the process by conftest before any test ran.
    assert app_settings() is settings
    expected = celery_config(settings)
    assert {key: app.conf[key] for key in DURABLE} == DURABLE
    assert app.conf.broker_url == expected["broker_url"]
    assert app.conf.task_default_queue == expected["task_default_queue"]


def test_the_app_refuses_other_settings_once_it_runs(settings: Settings) -> None:
    from orchestration.errors import TroupeError
    from workers.app import app, configure_app

    assert app.conf.task_default_queue == settings.queue  # read: the app runs
    configure_app(settings)  # the same again: nothing to change
    with pytest.raises(TroupeError, match="already runs with other settings"):
        configure_app(given_settings(queue="another"))
    assert app.conf.task_default_queue == settings.queue
