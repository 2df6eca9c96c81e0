"""The Celery application, configured from Troupe's settings (workers/celery_config.py).

Never from a module named by string: Celery would import whatever ``celeryconfig`` comes
first on ``sys.path``, such as the one in the user's own project folder.
"""

from __future__ import annotations

from celery import Celery

from orchestration.settings import get_settings
from workers.celery_config import celery_config

app = Celery("troupe", include=["workers.tasks"])
app.config_from_object(celery_config(get_settings()))


def safe_broker_url(url: str) -> str:
    """``url`` without its password, for messages to the user."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))
