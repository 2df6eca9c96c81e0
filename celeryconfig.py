"""Troupe's Celery settings as a module, for tools that expect a ``celeryconfig``.

Troupe itself never imports this file: its app is configured by
``workers.app.configure_app`` from a ``Settings`` object (by default one read from
``TROUPE_*`` environment variables), so a ``celeryconfig.py`` of the user's own project is
never picked up instead. The values here are ``workers.celery_config.celery_config``'s
for the settings in this environment, read when this module is imported: ``celery -A
workers.app`` needs nothing from this file.
"""

from __future__ import annotations

from orchestration.settings import Settings
from workers.celery_config import celery_config

globals().update(celery_config(Settings()))
