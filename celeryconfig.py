"""Troupe's Celery settings as a module, for tools that expect a ``celeryconfig``.

Troupe itself never imports this file: its app is configured by
``workers.celery_config.celery_config`` from ``orchestration.settings`` (``TROUPE_*``
environment variables), so a ``celeryconfig.py`` of the user's own project is never
picked up instead. The values here are that function's, for the same environment:
``celery -A workers.app`` needs nothing from this file.
"""

from __future__ import annotations

from orchestration.settings import get_settings
from workers.celery_config import celery_config

globals().update(celery_config(get_settings()))
