"""The Celery side of Troupe: the app, its tasks, and the embedded in-process worker."""
