"""Benchmarks of Troupe against raw Celery with the same delivery guarantees.

Not tests: they print figures (one JSON line each) and are run by hand
(`python -m bench`, `python -m bench --quick`) or by a make target. See bench/README.md.
"""
