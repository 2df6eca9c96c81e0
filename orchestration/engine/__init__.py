"""The delegation engine's decisions, free of Celery and I/O."""
