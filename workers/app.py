"""The Celery application. Configuration comes from celeryconfig.py."""

from __future__ import annotations

from celery import Celery

app = Celery("troupe", include=["workers.tasks"])
app.config_from_object("celeryconfig")
