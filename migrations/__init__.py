"""Troupe's Alembic migrations (``env.py``, ``versions/``).

This top-level directory is where they are written. ``orchestration/migrations`` is a
symbolic link to it, so the same files are the package ``orchestration.migrations``:
the wheel carries them, and ``orchestration.store.database`` finds them beside the
installed code instead of relative to a checkout.
"""
